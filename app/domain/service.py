"""The domain: issue, list, revoke, look at and submit tokens. Endpoints call one method each."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Literal

from app.clock import Clock, iso_ms, isoformat
from app.config import Settings
from app.domain import issuance, policy, records, tokens
from app.domain.feedback import Submission
from app.domain.outcomes import (
    LinkMode,
    LinkStep,
    Outcome,
    TokenRef,
    encode_field,
    idempotency_hash,
    many_feedback_id,
)
from app.domain.tokens import TokenClaims
from app.errors import (
    InvalidRequest,
    KeysStale,
    SigningDisabled,
    TokenExpired,
    TokenInvalid,
    TokenNotFound,
    TokenRevoked,
    TokenUsed,
)
from app.keys.source import KeySource
from app.ops.context import note_token
from app.store.entry import STRINGS, literal_strings
from app.store.keyspace import new_token_id
from app.store.results import RunFull, StoredToken, UseState
from app.store.store import Store

TOKEN_PATH = "/api/v1/feedback/tokens/"


class FeedbackService:
    def __init__(self, settings: Settings, store: Store, keys: KeySource, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.clock = clock
        self.redirect_origins = policy.allowed_origins(settings.redirect_origins)
        self._last_created_us = 0

    def url(self, jwt: str, token_id: uuid.UUID) -> str:
        """The token's URL: the JWT, so that it verifies with no lookup, then the token id as the
        last segment, which is what the LangSmith SDK takes from a URL (it submits by id)."""
        return f"{self.settings.public_url}{TOKEN_PATH}{jwt}/{token_id}"

    def describe(self, claims: TokenClaims, jwt: str) -> dict[str, Any]:
        return {
            "id": str(claims.token_id),
            "url": self.url(jwt, claims.token_id),
            "expires_at": isoformat(claims.expires_at),
            "run_id": str(claims.run_id),
            "feedback_key": claims.feedback_key,
            "feedback_config": claims.config.to_json() if claims.config else None,
            **self.policy_fields(claims),
        }

    @staticmethod
    def policy_fields(claims: TokenClaims) -> dict[str, Any]:
        """Only what differs from the defaults, so default answers keep LangSmith's exact shape."""
        fields: dict[str, Any] = {}
        if claims.use != "once":
            fields["use"] = claims.use
        if claims.max_uses is not None:
            fields["max_uses"] = claims.max_uses
        if claims.confirm:
            fields["confirm"] = True
        if claims.redirect_url is not None:
            fields["redirect_url"] = claims.redirect_url
        return fields

    def status(self, claims: TokenClaims, revoked: bool, exhausted: bool) -> str:
        """As a submission would find it now (the store's scripts decide whether a token takes
        another submission): ``expired`` only once verification refuses it too (past ``exp`` plus
        the leeway)."""
        if revoked:
            return "revoked"
        if exhausted:
            return "used"
        if self.clock.now() >= claims.expires_at + self.settings.leeway:
            return "expired"
        return "active"

    @property
    def grace(self) -> int:
        """Seconds past ``exp`` during which some node may still accept a token."""
        return self.settings.leeway + self.settings.max_clock_skew

    # -- issuance ---------------------------------------------------------------------------

    async def issue(self, body: Any) -> list[dict[str, Any]] | dict[str, Any]:
        signer = self.keys.keyring.signer
        if signer is None:
            raise SigningDisabled(
                "this node holds no active private key (verify-only); issue tokens elsewhere"
            )
        s = self.settings
        now = self.clock.now()
        requests, batch = issuance.parse(body, now, s.default_ttl, s.max_ttl, self.redirect_origins)
        shard = self.store.next_shard()
        # Strictly increasing within this process (a batch takes one µs per token), so that
        # listings, which merge a run's shards by creation time, keep the order of issuance.
        created_us = self._last_created_us = max(int(now * 1_000_000), self._last_created_us + 1)
        self._last_created_us += len(requests) - 1
        answers, stored, runs = [], [], {}
        for i, req in enumerate(requests):
            token_id = new_token_id(shard, req.run_id)
            claims = TokenClaims(
                token_id=token_id,
                run_id=req.run_id,
                feedback_key=req.feedback_key,
                feedback_id=req.feedback_id or token_id,
                issued_at=(created_us + i) // 1_000_000,
                expires_at=req.expires_at,
                config=req.config,
                use=req.use,
                max_uses=req.max_uses,
                confirm=req.confirm,
                redirect_url=req.redirect_url,
            )
            jwt = tokens.sign(claims, signer, s.issuer)
            if len(jwt) > tokens.MAX_TOKEN_LENGTH:
                where = f"[{i}]: " if batch else ""
                raise InvalidRequest(
                    f"{where}this feedback_config makes the token {len(jwt)} characters long; "
                    f"the limit is {tokens.MAX_TOKEN_LENGTH} (use fewer or shorter categories"
                    + (", or a shorter redirect_url)" if req.redirect_url else ")")
                )
            answers.append(self.describe(claims, jwt))
            record = records.encode(claims, signer.alg, signer.kid, created_us + i)
            stored.append((token_id, record, tokens.b64decode(jwt.rsplit(".", 1)[1])))
            runs[token_id] = req.run_id
        try:
            await self.store.issue(shard, stored)
        except RunFull as full:
            raise InvalidRequest(
                f"too many live tokens for one run: this run holds {full.live} in the shard this request "
                f"went to, and a run may hold at most {self.store.run_cap} per shard (FEEDBACK_MAX_RUN_TOKENS); "
                "let some expire or use another run"
            ) from None
        return answers if batch else answers[0]

    # -- listing and revocation -------------------------------------------------------------

    def _rebuild(self, row: StoredToken) -> tuple[TokenClaims, str, str]:
        """A stored token's claims, JWT and kid (rebuilt from its record; or, issued before
        sharding, parsed from the stored JWT, which is ours)."""
        if row.jwt is not None:
            parsed = tokens.parse(row.jwt)
            payload = json.loads(tokens.b64decode(parsed.payload_segment))
            return TokenClaims.from_payload(payload), row.jwt, parsed.kid
        try:
            record = records.decode(row.record, row.token_id)
        except records.RecordError as err:
            raise TokenInvalid(f"token record is unreadable: {err}") from err
        return record.claims, record.jwt(self.settings.issuer, row.signature), record.kid

    async def list_run(self, run_id: uuid.UUID, limit: int, offset: int) -> list[dict[str, Any]]:
        _, rows = await self.store.list_run(run_id, offset + limit)
        keyring = self.keys.keyring
        out = []
        for created_us, row in rows[offset : offset + limit]:
            claims, jwt, kid = self._rebuild(row)
            state = row.state
            if row.jwt is not None:  # issued before sharding: its record there says less
                peek = await self.store.peek(claims.token_id, claims.run_id, use=claims.use, cap=claims.max_uses)
                state = UseState(uses=peek.uses, revoked=peek.verdict == "revoked", exhausted=peek.verdict == "used")
            # A retired key revokes every token it signed.
            revoked = state.revoked or keyring.verifier(kid) is None
            item = self.describe(claims, jwt)
            item["created_at"] = isoformat(created_us / 1_000_000)
            item["status"] = self.status(claims, revoked, state.exhausted)
            item["uses"] = state.uses
            out.append(item)
        return out

    async def revoke(self, token_id: uuid.UUID) -> None:
        if not await self.store.revoke(token_id):
            raise TokenNotFound("no live token has this id")
        note_token(token_id)

    # -- submission -------------------------------------------------------------------------

    async def verify(self, jwt: str, expired_ok: bool = False) -> TokenClaims:
        parsed = tokens.parse(jwt)
        stale = self.keys.stale()
        if stale is not None:
            raise KeysStale(f"{stale}; this node accepts no token until it has current keys",
                            retry_after=self.settings.retry_after)
        keyring = self.keys.keyring
        if keyring.verifier(parsed.kid) is None and await self.keys.on_unknown_kid(parsed.kid):
            keyring = self.keys.keyring
        payload = tokens.check_signature(parsed, keyring)
        s = self.settings
        try:
            return tokens.check_claims(payload, s.issuer, self.clock.now(), s.leeway, s.max_clock_skew)
        except TokenExpired:
            if not expired_ok:
                raise
            # Signature, issuer and claims all checked out before the expiry did: only time ran out.
            return TokenClaims.from_payload(payload)

    async def resolve(self, ref: TokenRef, expired_ok: bool = False) -> TokenClaims:
        """The token a URL names: a JWT is verified with no lookup (its id, when the URL ends in
        one, must be the token's own); an id alone is looked up and the stored token verified."""
        if ref.jwt is not None:
            claims = await self.verify(ref.jwt, expired_ok)
            if ref.token_id is not None and claims.token_id != ref.token_id:
                raise TokenInvalid("the token id in the URL is not this token's")
            note_token(claims.token_id)
            return claims
        assert ref.token_id is not None
        stored = await self.store.lookup(ref.token_id)
        if stored is None:
            raise TokenNotFound("no live token has this id")
        _, jwt, _ = self._rebuild(stored)
        claims = await self.verify(jwt, expired_ok)
        if claims.token_id != ref.token_id:  # the record must name the token stored under it
            raise TokenInvalid("token record does not match its id")
        note_token(claims.token_id)
        return claims

    # -- read-only looks -------------------------------------------------------------------------

    async def info(self, ref: TokenRef) -> dict[str, Any]:
        """What a page needs to render the right control; consumes nothing. An expired token
        still answers (status ``expired``) as long as it verifies otherwise."""
        claims = await self.resolve(ref, expired_ok=True)
        peek = await self.store.peek(claims.token_id, claims.run_id, use=claims.use, cap=claims.max_uses)
        latest = None
        if claims.use == "update" and peek.uses and (values := await self.store.latest(claims.token_id, claims.run_id)):
            latest = {**json.loads(values), "revision": peek.uses}
        return {
            "id": str(claims.token_id),
            "run_id": str(claims.run_id),
            "feedback_key": claims.feedback_key,
            "feedback_config": claims.config.to_json() if claims.config else None,
            "expires_at": isoformat(claims.expires_at),
            "use": claims.use,
            "max_uses": claims.max_uses,
            "confirm": claims.confirm,
            "status": self.status(claims, peek.verdict == "revoked", peek.verdict == "used"),
            "uses": peek.uses,
            "latest": latest,
        }

    @staticmethod
    def _answer(
        claims: TokenClaims, submission: Submission, feedback_id: str, run_id: str, created_at: str, uses: int
    ) -> dict[str, Any]:
        answer = {
            "id": feedback_id,
            "run_id": run_id,
            "feedback_key": claims.feedback_key,
            **submission.to_json(),
            "created_at": created_at,
        }
        if claims.use == "update":
            answer["revision"] = uses
        return answer

    async def preview(self, claims: TokenClaims, submission: Submission | None) -> Outcome | None:
        """Before a confirmation page: would this submission be taken? Raises what ``record``
        would raise now; returns the stored outcome when it would be a duplicate, else None. The
        store's scripts decide (the same rule as recording), writing nothing; the answer may still
        change before the person confirms: ``record`` decides then."""
        fingerprint = submission.digest() if submission is not None else b""
        peek = await self.store.peek(
            claims.token_id, claims.run_id, use=claims.use, cap=claims.max_uses, fingerprint=fingerprint
        )
        if peek.verdict == "revoked":
            raise TokenRevoked("this token was revoked")
        if peek.verdict == "dup" and submission is not None:
            answer = self._answer(
                claims, submission, str(claims.feedback_id), str(claims.run_id), iso_ms(peek.created_ms),
                peek.uses,
            )
            return Outcome(answer, duplicate=True, uses=peek.uses)
        if peek.verdict == "used":
            raise TokenUsed("this token was already used")
        return None

    # -- recording -------------------------------------------------------------------------------

    async def submit(self, ref: TokenRef, submission: Submission, idempotency_key: str | None = None) -> Outcome:
        claims = await self.resolve(ref)
        return await self.record(claims, submission, idempotency_key)

    def allowed_redirect(self, claims: TokenClaims) -> str | None:
        """The token's redirect_url, if the operator still allows its origin."""
        return claims.redirect_url if policy.redirect_allowed(claims.redirect_url, self.redirect_origins) else None

    async def follow_link(self, ref: TokenRef, submission: Submission | None, mode: LinkMode) -> LinkStep:
        """A link followed: ``get`` (a click: records, unless the token asks for a confirmation or
        there is no answer to record), ``head`` (says what ``get`` would, records nothing) or
        ``post`` (the form of a confirmation page or of the choices: records). ``submission``
        None: a browser's visit without an answer."""
        claims = await self.resolve(ref)
        redirect = self.allowed_redirect(claims)
        if submission is None:
            await self.preview(claims, None)  # raises what a submission would meet (revoked, used)
            return LinkStep("choose", claims, redirect_url=redirect)
        if mode == "post" or (mode == "get" and not claims.confirm):
            return LinkStep("recorded", claims, await self.record(claims, submission), redirect_url=redirect)
        submission.check(claims.config)
        outcome = await self.preview(claims, submission)
        if outcome is not None:
            return LinkStep("recorded", claims, outcome, redirect_url=redirect)
        kind: Literal["confirm", "would_record"] = "confirm" if claims.confirm else "would_record"
        return LinkStep(kind, claims, submission=submission, redirect_url=redirect)

    async def record(
        self, claims: TokenClaims, submission: Submission, idempotency_key: str | None = None
    ) -> Outcome:
        """Record one submission. Every request is one attempt with an id of its own, so a
        retry of the store call is never counted twice; an Idempotency-Key names the logical
        submission across requests (the only way a resend is recognised under 'many')."""
        submission.check(claims.config)
        created_ms = int(self.clock.now() * 1000)
        attempt = tokens.b64encode(os.urandom(8))
        token_id = str(claims.token_id)
        if claims.use == "many":
            feedback_id = str(many_feedback_id(claims.token_id, attempt))
        else:
            feedback_id = token_id if claims.feedback_id == claims.token_id else str(claims.feedback_id)
        run_id = str(claims.run_id)
        created_at = iso_ms(created_ms)
        entry: tuple[tuple[str, str], ...] = (
            ("id", feedback_id),
            ("token_id", token_id),
            ("run_id", run_id),
            ("feedback_key", claims.feedback_key),
            ("score", encode_field(submission.score)),
            ("value", encode_field(submission.value)),
            ("comment", encode_field(submission.comment)),
            ("correction", encode_field(submission.correction)),
            ("metadata", encode_field(submission.metadata)),
            ("created_at", created_at),
        )
        if strings := literal_strings(submission.value, submission.comment, submission.correction):
            entry += ((STRINGS, strings),)  # "5" the string, not 5 the number (app/store/entry.py)
        reply = await self.store.submit(
            claims.token_id,
            claims.run_id,
            attempt=attempt,
            fingerprint=submission.digest(),
            use=claims.use,
            cap=claims.max_uses,
            deadline=claims.expires_at + self.grace,
            created_ms=created_ms,
            idempotency=idempotency_hash(idempotency_key) if idempotency_key is not None else None,
            latest=json.dumps(submission.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
            if claims.use == "update"
            else b"",
            entry=entry,
        )
        if reply.status in ("ok", "dup"):
            if reply.status == "dup" and claims.use == "many" and reply.attempt is not None:
                feedback_id = str(many_feedback_id(claims.token_id, reply.attempt))
            if reply.created_ms != created_ms:  # a duplicate: the first submission's time
                created_at = iso_ms(reply.created_ms)
            answer = self._answer(claims, submission, feedback_id, run_id, created_at, reply.uses)
            return Outcome(answer, duplicate=reply.status == "dup", uses=reply.uses)
        if reply.status == "revoked":
            raise TokenRevoked("this token was revoked")
        if reply.status == "expired":
            raise TokenExpired(tokens.expired_detail(claims.expires_at))
        if reply.status == "conflict":
            raise InvalidRequest("this Idempotency-Key was already used for a different submission on this token")
        raise TokenUsed("this token was already used for a different submission")
