"""Compact JSON for the submit path's answers and records: orjson, with the standard library as
the fallback for what orjson refuses (integers beyond 64 bits), so nothing that encoded before
fails now. Output is compact UTF-8 either way (``ensure_ascii=False``, no spaces)."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError: big integers, lone surrogates, unknown types
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
