"""Commands encoded by hiredis, not by redis-py's Python loop.

redis-py's asyncio connection encodes each command argument by argument in Python; a submission's
EVALSHA has about 36 arguments, which made encoding the largest single cost of the Redis step
(``make bench``, measurement ``throughput``; bench/README.md). hiredis, which redis-py already
uses to parse replies here (the ``redis[hiredis]`` extra), encodes a whole command in C with
``hiredis.pack_command``, byte for byte what redis-py would send.

``fast_packing(client)`` gives a client's pool connections of the same class with that encoder.
A command it does not take is encoded by redis-py as before, so its errors stay redis-py's: a
command name holding a space (``"CONFIG GET"``, which redis-py splits), or an argument other than
str, bytes, int or float (redis-py refuses a bool or None with ``DataError``; hiredis raises
TypeError for them, and this hands them on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # hiredis without pack_command (before 2.1), or none: redis-py's encoder
    _pack = None


class HiredisPacking(AbstractConnection):
    """Mixed in before a redis-py connection class (``packing_class``)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0] if args else None
        if _pack is not None and isinstance(first, str) and " " not in first:
            try:
                return [_pack(args)]
            except TypeError:
                pass
        return super().pack_command(*args)

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join(chunk for command in commands for chunk in self.pack_command(*command))]


_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def packing_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` with hiredis encoding (one class per base)."""
    if issubclass(base, HiredisPacking):
        return base
    made = _classes.get(base)
    if made is None:
        made = _classes[base] = type(f"Hiredis{base.__name__}", (HiredisPacking, base), {"__module__": __name__})
    return made


def fast_packing(client: aioredis.Redis) -> aioredis.Redis:
    """Let ``client``'s pool make connections that encode with hiredis; returns the client. Only
    new connections: call it before the client is used. A client told to encode text otherwise
    than hiredis does (UTF-8, strict: say ``?encoding=latin-1`` in the URL) keeps redis-py's."""
    pool = client.connection_pool
    encoding = pool.connection_kwargs.get("encoding", "utf-8").lower().replace("_", "-")
    strict = pool.connection_kwargs.get("encoding_errors", "strict") == "strict"
    if encoding in ("utf-8", "utf8") and strict:
        pool.connection_class = packing_class(pool.connection_class)
    return client
