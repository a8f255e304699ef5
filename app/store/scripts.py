"""The store's Lua scripts. Each touches the keys of one shard only (one hash tag, one slot).

A run record is a hash ``{tag}:r:<run hash>`` holding, per token ``L`` (the token's local id: the
11 base64url characters of the last 8 bytes of its id)::

    L           the token record (app/domain/records.py; bytes 0-28: version, created µs, exp, run)
    L:s         its signature
    L:u         use state: STATE below (absent until the first use or a revocation)
    L:v         'update' tokens: the latest submission's values (JSON), for /info
    L:a:<n>     'update' and 'many' tokens: the attempt ``n`` that was recorded (uses, created ms),
                so that a retry of the same attempt is answered as it was, never counted again
    L:i:<k>     the submission made under Idempotency-Key hash ``k`` (fingerprint, uses, created
                ms, attempt)
    #           the local ids of the record's tokens in creation order (11 characters each)

Time is Redis's (``TIME``), so that whether a record is still needed never depends on the clock
of the node that asks. A token's *deadline* is its ``exp`` plus the verification leeway plus the
largest clock difference between nodes and Redis that the fleet promises to tolerate
(``FEEDBACK_MAX_CLOCK_SKEW``): until then some node may still accept it, so its record lives at
least that long, and no script writes a record whose deadline has passed.
"""

from __future__ import annotations

import struct

# Use state ``L:u``: flags (bit 0 revoked, bit 1 exhausted: it takes no new submission), uses,
# fingerprint of the latest submission, its created time (unix ms), the attempt that recorded it.
STATE = struct.Struct(">BI16sQ11s")
# Idempotency record ``L:i:<k>``: fingerprint, uses after it, created ms, attempt.
IDEMPOTENT = struct.Struct(">16sIQ11s")
REVOKED = 0x01
EXHAUSTED = 0x02
# The fixed start of a token record (app/domain/records.py) that these scripts read: version and
# flags, created (unix µs), exp (unix s), run id.
RECORD_HEAD = struct.Struct(">BQI16s")
LOCAL_ID_LENGTH = 11

# Shared by SUBMIT and PEEK: the use policy is decided here and nowhere else (Python only names
# the policies, app/domain/policy.py).
#
# read_state(rec, L, legacy): the token's use state, seeded from the layout before sharding when
#   ``legacy`` names the token's record there (read, never written).
# decide(policy, cap, uses, last_fp, fp): what a submission with fingerprint ``fp`` ('' for none
#   in particular) would be: 'dup' (it repeats the latest one), 'used' (no new one is taken) or
#   'new'. A token is *exhausted* when decide(..., '') says 'used': flag bit 1 of its state.
_POLICY = """
local function read_state(rec, L, legacy)
  local flags, uses, last_fp, created, last_attempt = 0, 0, '', 0, ''
  local state = redis.call('HGET', rec, L .. ':u')
  if state then flags, uses, last_fp, created, last_attempt = struct.unpack('>BI4c16I8c11', state) end
  local legacy_created = false
  if legacy then
    local old = redis.call('HMGET', legacy, 'rev', 'fp', 'n', 'ans')
    if old[1] and flags % 2 == 0 then flags = flags + 1 end
    if not state and old[2] then
      uses = tonumber(old[3]) or 1
      last_fp = string.gsub(old[2], '..', function(h) return string.char(tonumber(h, 16)) end)
      if old[4] then legacy_created = cjson.decode(old[4]).created_at end
    end
  end
  return flags, uses, last_fp, created, last_attempt, legacy_created
end
local function decide(policy, cap, uses, last_fp, fp)
  if policy ~= 'many' and uses > 0 and fp ~= '' and last_fp == fp then return 'dup' end
  if policy == 'once' and uses > 0 then return 'used' end
  if cap > 0 and uses >= cap then return 'used' end
  return 'new'
end
"""

# KEYS[1] run record, KEYS[2] the shard's feedback stream, KEYS[3] (tokens issued before
# sharding only) the token's record of that layout (see read_state)
# ARGV[1] local id L, ARGV[2] attempt (11 characters, new for every request)
# ARGV[3] fingerprint (16 bytes), ARGV[4] use policy 'once' | 'update' | 'many' (app/domain/policy.py)
# ARGV[5] cap on uses (0: none), ARGV[6] deadline (unix s), ARGV[7] created (unix ms)
# ARGV[8] idempotency key hash ('' when the request had none), ARGV[9] latest values JSON ('update')
# ARGV[10..] stream entry field/value pairs
# Returns {'ok', uses, created ms} (recorded now, or earlier by this same attempt)
#       | {'dup', uses, created ms, attempt[, created_at of an answer recorded before sharding]}
#       | {'used'} | {'revoked'} | {'expired'} | {'conflict'} (the idempotency key names another body)
SUBMIT = _POLICY + """
local rec, L, attempt, fp, policy = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cap, deadline = tonumber(ARGV[5]), tonumber(ARGV[6])
local flags, uses, last_fp, created, last_attempt, legacy_created = read_state(rec, L, KEYS[3])
if last_attempt == attempt then return {'ok', uses, created} end
if policy ~= 'once' then
  local done = redis.call('HGET', rec, L .. ':a:' .. attempt)
  if done then
    local u, c = struct.unpack('>I4I8', done)
    return {'ok', u, c}
  end
end
if flags % 2 == 1 then return {'revoked'} end
if tonumber(redis.call('TIME')[1]) >= deadline then return {'expired'} end
local ikey = ARGV[8]
if ikey ~= '' then
  local earlier = redis.call('HGET', rec, L .. ':i:' .. ikey)
  if earlier then
    local e_fp, e_uses, e_created, e_attempt = struct.unpack('>c16I4I8c11', earlier)
    if e_fp == fp then return {'dup', e_uses, e_created, e_attempt} end
    return {'conflict'}
  end
end
local verdict = decide(policy, cap, uses, last_fp, fp)
if verdict == 'dup' then return {'dup', uses, created, last_attempt, legacy_created} end
if verdict == 'used' then return {'used'} end
uses = uses + 1
local fields = {unpack(ARGV, 10)}
if policy == 'update' then
  fields[#fields + 1] = 'revision'
  fields[#fields + 1] = tostring(uses)
end
redis.call('XADD', KEYS[2], '*', unpack(fields))
if decide(policy, cap, uses, fp, '') == 'used' then flags = flags - flags % 4 + 2 + flags % 2 end
local now_created = tonumber(ARGV[7])
redis.call('HSET', rec, L .. ':u', struct.pack('>BI4c16I8c11', flags, uses, fp, now_created, attempt))
if policy ~= 'once' then
  redis.call('HSET', rec, L .. ':a:' .. attempt, struct.pack('>I4I8', uses, now_created))
end
if policy == 'update' then redis.call('HSET', rec, L .. ':v', ARGV[9]) end
if ikey ~= '' then
  redis.call('HSET', rec, L .. ':i:' .. ikey, struct.pack('>c16I4I8c11', fp, uses, now_created, attempt))
end
local expires = redis.call('EXPIRETIME', rec)
if expires == -1 or expires < deadline then redis.call('EXPIREAT', rec, deadline) end
return {'ok', uses, now_created}
"""

# What SUBMIT would decide now, writing nothing (a confirmation page, HEAD, a picker).
# KEYS[1] run record, KEYS[2] (tokens issued before sharding only) their record of that layout
# ARGV[1] local id L, ARGV[2] fingerprint ('' for none), ARGV[3] use policy, ARGV[4] cap (0: none)
# Returns {verdict: 'revoked' | 'dup' | 'used' | 'new', uses, created ms, latest attempt,
#          created_at of an answer recorded before sharding or false}
PEEK = _POLICY + """
local flags, uses, last_fp, created, last_attempt, legacy_created = read_state(KEYS[1], ARGV[1], KEYS[2])
if flags % 2 == 1 then return {'revoked', uses, created, last_attempt, legacy_created} end
return {decide(ARGV[3], tonumber(ARGV[4]), uses, last_fp, ARGV[2]), uses, created, last_attempt, legacy_created}
"""

# KEYS[1..k] run records of one request (all in one shard)
# ARGV[1] most live tokens a run record may hold, ARGV[2] grace: leeway + max clock skew (s)
# ARGV[3..] four values per token: index of its run record in KEYS (1-based), local id,
#           token record, signature
# Prunes every record of tokens past their deadline, then refuses the whole request if a record
# would hold more than the cap, else writes every token and extends each record's expiry to its
# latest deadline. Running it twice with the same arguments changes nothing more.
# Returns {'ok'} | {'full', index of the run record in KEYS, live tokens it holds}
ISSUE = """
local now = tonumber(redis.call('TIME')[1])
local cap, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local function deadline(record)
  local _, _, exp = struct.unpack('>BI8I4', record)
  return exp + grace
end
local live, adding, latest = {}, {}, {}
for k = 1, #KEYS do
  local ids = redis.call('HGET', KEYS[k], '#') or ''
  local keep = {}
  for at = 1, #ids, 11 do
    local L = string.sub(ids, at, at + 10)
    local record = redis.call('HGET', KEYS[k], L)
    if record and deadline(record) > now then
      keep[#keep + 1] = L
    else
      redis.call('HDEL', KEYS[k], L, L .. ':s', L .. ':u', L .. ':v')
      local cursor = '0'
      repeat
        local page = redis.call('HSCAN', KEYS[k], cursor, 'MATCH', L .. ':[ai]:*', 'COUNT', 100)
        cursor = page[1]
        for i = 1, #page[2], 2 do redis.call('HDEL', KEYS[k], page[2][i]) end
      until cursor == '0'
    end
  end
  live[k], adding[k], latest[k] = keep, 0, 0
end
for i = 3, #ARGV, 4 do
  local k = tonumber(ARGV[i])
  if redis.call('HEXISTS', KEYS[k], ARGV[i + 1]) == 0 then adding[k] = adding[k] + 1 end
end
for k = 1, #KEYS do
  if #live[k] + adding[k] > cap then return {'full', k, #live[k]} end
end
for i = 3, #ARGV, 4 do
  local k, L = tonumber(ARGV[i]), ARGV[i + 1]
  -- HSETNX: the same request run twice (a retry after a lost reply) adds nothing twice.
  if redis.call('HSETNX', KEYS[k], L, ARGV[i + 2]) == 1 then
    redis.call('HSET', KEYS[k], L .. ':s', ARGV[i + 3])
    live[k][#live[k] + 1] = L
  end
  local d = deadline(ARGV[i + 2])
  if d > latest[k] then latest[k] = d end
end
for k = 1, #KEYS do
  redis.call('HSET', KEYS[k], '#', table.concat(live[k]))
  local expires = redis.call('EXPIRETIME', KEYS[k])
  if expires == -1 or expires < latest[k] then redis.call('EXPIREAT', KEYS[k], latest[k]) end
end
return {'ok'}
"""

# KEYS[1] run record
# ARGV[1] run id (16 bytes), ARGV[2] grace (s), ARGV[3] how many of the oldest to return
# Returns {live tokens of this run in the record, then for each of the oldest ARGV[3]:
#          local id, token record, signature, use state (false when unused)}
LIST = """
local now = tonumber(redis.call('TIME')[1])
local grace, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('HGET', KEYS[1], '#') or ''
local out, count = {0}, 0
for at = 1, #ids, 11 do
  local L = string.sub(ids, at, at + 10)
  local record = redis.call('HGET', KEYS[1], L)
  if record then
    local _, _, exp, run = struct.unpack('>BI8I4c16', record)
    if run == ARGV[1] and exp + grace > now then
      count = count + 1
      if count <= window then
        local fields = redis.call('HMGET', KEYS[1], L .. ':s', L .. ':u')
        out[#out + 1] = L
        out[#out + 1] = record
        out[#out + 1] = fields[1]
        out[#out + 1] = fields[2]
      end
    end
  end
end
out[1] = count
return out
"""

# KEYS[1] run record, ARGV[1] local id
# Returns 1 when revoked (or already revoked), 0 when the record holds no such token
REVOKE = """
local L = ARGV[1]
if redis.call('HEXISTS', KEYS[1], L) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], L .. ':u')
local flags, uses, fp, created, attempt = 0, 0, string.rep('\\0', 16), 0, string.rep('.', 11)
if state then flags, uses, fp, created, attempt = struct.unpack('>BI4c16I8c11', state) end
if flags % 2 == 0 then flags = flags + 1 end  -- bit 0 set, bit 1 (exhausted) kept
redis.call('HSET', KEYS[1], L .. ':u', struct.pack('>BI4c16I8c11', flags, uses, fp, created, attempt))
return 1
"""
