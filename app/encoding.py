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


# orjson reads an integer at or past this (in magnitude) as a float once it no longer fits 64 bits.
BEYOND_64_BITS = float(2**63)


def beyond_64_bits(data: Any) -> bool:
    """Whether ``data`` (as orjson read it) holds a float at or past ±2**63: what orjson makes of
    an integer it can't hold (it reads integers below 2**64 as integers, larger ones as floats).
    A float written that large reads the same either way; only it and such integers are here."""
    stack = [data]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is float:
            if node >= BEYOND_64_BITS or node <= -BEYOND_64_BITS:
                return True
        elif kind is list:
            stack.extend(node)
        elif kind is dict:
            stack.extend(node.values())
    return False
