"""What a token allows (its ``feedback_config``) and what a submission carries.

Parsing is separate from validation: ``parse_json`` / ``parse_query`` / ``parse_form`` check input
against the request shapes of ``app/domain/shapes.py`` (a value of the wrong type is 400
``invalid_body``; an unknown field, a size cap or another broken rule is 422 ``invalid_feedback``),
``Submission.check`` checks the values against a token's config (422 ``invalid_feedback``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson

from app.domain import shapes
from app.domain.shapes import BODY_CAP, MAX_DEPTH
from app.encoding import BEYOND_64_BITS, beyond_64_bits
from app.errors import InvalidBody, InvalidFeedback
from app.schema import Invalid, Object, canonical

__all__ = ["BODY_CAP", "FIELDS", "Category", "FeedbackConfig", "Submission", "form_fields", "loads", "parse_form",
           "parse_json", "parse_query"]

FIELDS = ("score", "value", "comment", "correction", "metadata")

ConfigType = Literal["continuous", "categorical", "freeform"]
Number = int | float


@dataclass(frozen=True, slots=True)
class Category:
    value: Number
    label: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    type: ConfigType
    min: Number | None = None
    max: Number | None = None
    categories: tuple[Category, ...] = ()

    @classmethod
    def parse(cls, raw: object) -> FeedbackConfig:
        """Parse an issuance request's config (``shapes.FEEDBACK_CONFIG``); ``Invalid`` (a
        ValueError) says what is wrong."""
        return cls.from_checked(shapes.FEEDBACK_CONFIG.check(raw))

    @classmethod
    def from_checked(cls, checked: dict[str, Any]) -> FeedbackConfig:
        """From what ``shapes.FEEDBACK_CONFIG`` checked."""
        kind = checked["type"]
        if kind == "continuous":
            return cls("continuous", min=checked["min"], max=checked["max"])
        if kind == "categorical":
            return cls("categorical", categories=tuple(Category(c["value"], c["label"]) for c in checked["categories"]))
        return cls("freeform")

    def to_json(self) -> dict[str, Any]:
        if self.type == "continuous":
            return {"type": "continuous", "min": self.min, "max": self.max}
        if self.type == "categorical":
            return {
                "type": "categorical",
                "categories": [
                    {"value": c.value} if c.label is None else {"value": c.value, "label": c.label}
                    for c in self.categories
                ],
            }
        return {"type": "freeform"}

    def to_claim(self) -> list[Any]:
        """Compact form carried inside tokens."""
        if self.type == "continuous":
            return ["c", self.min, self.max]
        if self.type == "categorical":
            return ["k", [[c.value] if c.label is None else [c.value, c.label] for c in self.categories]]
        return ["f"]

    @classmethod
    def from_claim(cls, claim: object) -> FeedbackConfig:
        """A token's config claim. A continuous or freeform one (most tokens share a few) is
        kept in a small cache, keyed by its text: 1, 1.0 and True, or 0.0 and -0.0, are equal
        keys in a dict but answer differently."""
        if type(claim) is list and claim and claim[0] != "k":
            key = repr(claim)
            config = _CLAIMS.get(key)
            if config is not None:
                return config
            config = cls._from_claim(claim)
            if len(_CLAIMS) >= _CLAIMS_KEPT:
                _CLAIMS.clear()
            _CLAIMS[key] = config
            return config
        return cls._from_claim(claim)

    @classmethod
    def _from_claim(cls, claim: object) -> FeedbackConfig:
        if not isinstance(claim, list) or not claim:
            raise ValueError("malformed config claim")
        if claim[0] == "c" and len(claim) == 3:
            return cls("continuous", min=claim[1], max=claim[2])
        if claim[0] == "k" and len(claim) == 2:
            return cls("categorical", categories=tuple(Category(*c) for c in claim[1]))
        if claim[0] == "f":
            return cls("freeform")
        raise ValueError("malformed config claim")


_CLAIMS: dict[str, FeedbackConfig] = {}
_CLAIMS_KEPT = 256


@dataclass(frozen=True, slots=True)
class Submission:
    score: Number | None = None
    value: Any = None
    comment: str | None = None
    correction: Any = None
    metadata: dict[str, Any] | None = None

    def digest(self) -> bytes:
        """Identical submissions (a client's retry) have identical digests: 16 bytes of the
        SHA-256 of their canonical JSON. The store keeps them (a token's ``fp``)."""
        score = None if self.score is None else float(self.score)
        if self.value is None and self.comment is None and self.correction is None and self.metadata is None:
            # A score alone (most submissions): the text canonical() writes for it, without its
            # encoder (json writes a float with float.__repr__); tests/test_fast_equivalents.py
            # holds the two to the same text.
            text = f"[{'null' if score is None else float.__repr__(score)},null,null,null,null]"
        else:
            text = canonical([score, self.value, self.comment, self.correction, self.metadata])
        return hashlib.sha256(text.encode()).digest()[:16]

    def fingerprint(self) -> str:
        """``digest`` in hex, as records written before sharding hold it."""
        return self.digest().hex()

    def check(self, config: FeedbackConfig | None) -> None:
        """Validate the values against the token's config (422 ``invalid_feedback``). The parsers
        already made sure of everything that needs no token (``shapes.SUBMISSION``)."""
        if config is None:
            return
        if config.type == "continuous":
            if self.score is None:
                raise InvalidFeedback("this token takes a score")
            if config.min is not None and self.score < config.min:
                raise InvalidFeedback(f"score must be at least {config.min}")
            if config.max is not None and self.score > config.max:
                raise InvalidFeedback(f"score must be at most {config.max}")
        elif config.type == "categorical":
            values = [c.value for c in config.categories]
            labels = [c.label for c in config.categories if c.label is not None]
            if self.score is None and self.value is None:
                raise InvalidFeedback(f"choose one of {values} (score) or {labels} (value)")
            if self.score is not None and self.score not in values:
                raise InvalidFeedback(f"score must be one of {values}")
            if self.value is not None:
                if not isinstance(self.value, str) or self.value not in labels:
                    raise InvalidFeedback(f"value must be one of {labels}")
                if self.score is not None and not any(
                    c.value == self.score and c.label == self.value for c in config.categories
                ):
                    raise InvalidFeedback("score and value name different categories")
        elif self.value is not None and not isinstance(self.value, str):
            raise InvalidFeedback("this token takes a string value")

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "value": self.value,
            "comment": self.comment,
            "correction": self.correction,
        }


# -- parsing -----------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise InvalidBody(f"{name} is not valid JSON (NaN and infinities are never accepted)")


def _finite_float(text: str) -> float:
    # 1e999 parses to infinity: refused here, or it would be stored and then fail to render.
    value = float(text)
    if not math.isfinite(value):
        raise InvalidBody(f"number {text[:24]} is out of range (infinities are never accepted)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidBody("duplicate key in JSON object")
    return obj


def loads(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no duplicate keys, no NaN or infinities, no lone surrogates,
    bounded nesting.

    orjson reads the body first (a fraction of the standard library's time on the submit path);
    it already refuses invalid UTF-8, lone surrogates, NaN and infinities (1e999 included). What
    it takes that the rules don't, or reads differently, sends the body to the standard
    library's strict parser, which then decides and says what is wrong: a duplicate key (orjson
    keeps the last; found by counting an object's members against the colons outside strings),
    an integer beyond 64 bits (orjson reads it as a float: ``app.encoding.beyond_64_bits``),
    nesting past the cap. Any body orjson refuses goes there too, so each error's message is the
    strict parser's."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _strict_loads(raw)
    flat = _flat(data)
    if flat is None:
        depth, members = _shape_of(data)
        if depth > MAX_DEPTH or beyond_64_bits(data):
            return _strict_loads(raw)
    elif flat:
        return _strict_loads(raw)
    else:
        members = len(data)
    if (members or b'"' in raw) and _STRINGS.sub(b"", raw).count(b":") != members:
        return _strict_loads(raw)
    return data


# A JSON string (orjson has checked the body is valid JSON, so every quote outside a string
# opens one).
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _flat(data: Any) -> bool | None:
    """For one flat object (the usual body): whether it holds a number orjson reads otherwise
    (``beyond_64_bits``, in one pass); None for anything else."""
    if type(data) is not dict:
        return None
    for value in data.values():
        kind = type(value)
        if kind is float:
            if value >= BEYOND_64_BITS or value <= -BEYOND_64_BITS:
                return True
        elif kind is dict or kind is list:
            return None
    return False


def _shape_of(data: Any) -> tuple[int, int]:
    """How deeply ``data`` nests, and how many members its objects have in all."""
    deepest, members, stack = 0, 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            members += len(node)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node)
    return deepest, members


def _strict_loads(raw: bytes) -> Any:
    """The standard library's parser with every rule spelled out (the slow, exact path)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidBody("body is not UTF-8") from err
    try:
        data = json.loads(
            text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError) as err:
        if isinstance(err, InvalidBody):
            raise
        raise InvalidBody(f"body is not valid JSON: {_short(err)}") from err
    if _depth(data) > MAX_DEPTH:
        raise InvalidBody(f"JSON nested deeper than {MAX_DEPTH} levels")
    return data


def _short(err: Exception) -> str:
    return str(err).split("\n", 1)[0][:120]


def _text(value: str) -> None:
    # "\ud800" is valid JSON but no UTF-8 text: it could be neither stored nor answered.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InvalidBody("body holds a lone surrogate (\\ud800-\\udfff), which is not text") from err


def _depth(data: Any) -> int:
    """How deeply ``data`` nests; also refuses strings that are not text."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            for key, value in node.items():
                _text(key)
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str):
            _text(node)
    return deepest


def _checked(shape: Object, data: Any, whole: str) -> dict[str, Any]:
    """``shape.check``: a value of the wrong type is 400 ``invalid_body``, any other broken rule
    422 ``invalid_feedback``."""
    try:
        return shape.check(data)
    except Invalid as err:
        raise (InvalidBody if err.wrong_type else InvalidFeedback)(err.describe(whole)) from None


def parse_json(raw: bytes) -> Submission:
    """A JSON body, checked against ``shapes.SUBMISSION``."""
    v = _checked(shapes.SUBMISSION, loads(raw), "body")
    return Submission(v["score"], v["value"], v["comment"], v["correction"], v["metadata"])


def _first(params: Iterable[tuple[str, str]]) -> dict[str, str]:
    first: dict[str, str] = {}
    for name, raw in params:
        first.setdefault(name, raw)
    return first


def parse_query(params: Iterable[tuple[str, str]]) -> Submission:
    """A GET link's query (``shapes.LINK``). Unknown parameters (mail trackers add them) are
    ignored; of a repeated one, the first counts."""
    v = _checked(shapes.LINK, _first(params), "link")
    return Submission(v["score"], v["value"], v["comment"], v["correction"], None)


def form_fields(raw: bytes) -> list[tuple[str, str]]:
    """The fields of a form body (the service's own pages post one), at most
    ``shapes.FORM.max_properties`` of them (400 ``invalid_body``)."""
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=shapes.FORM.max_properties)
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidBody("the form is not valid UTF-8 form data") from err


def parse_form(fields: Iterable[tuple[str, str]]) -> Submission:
    """A form's fields (``shapes.FORM``): as in a link, plus the answer page's language."""
    v = _checked(shapes.FORM, _first(fields), "form")
    return Submission(v["score"], v["value"], v["comment"], v["correction"], None)
