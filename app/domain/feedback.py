"""What a token allows (its ``feedback_config``) and what a submission carries.

Parsing is separate from validation: ``parse_json`` / ``parse_query`` check shapes and types
(400 ``invalid_body``, 422 for unknown fields), ``Submission.check`` checks the values against a
token's config (422 ``invalid_feedback``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.errors import InvalidBody, InvalidFeedback

COMMENT_CAP = 4 * 1024
CORRECTION_CAP = 16 * 1024
METADATA_CAP = 8 * 1024
BODY_CAP = 64 * 1024
MAX_DEPTH = 32
MAX_CATEGORIES = 100
LABEL_CAP = 256

FIELDS = ("score", "value", "comment", "correction", "metadata")
# Fields that LangSmith's API defines for this call: accepted, and without effect here.
LANGSMITH_FIELDS = frozenset({"do_not_extend_trace_retention"})

ConfigType = Literal["continuous", "categorical", "freeform"]
Number = int | float


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite(value: Number) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


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
        """Parse an issuance request's config; ValueError says what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError("must be an object")
        kind = raw.get("type")
        if kind == "continuous":
            _only(raw, {"type", "min", "max"})
            lo, hi = raw.get("min"), raw.get("max")
            for name, bound in (("min", lo), ("max", hi)):
                if bound is not None and not (is_number(bound) and finite(bound)):
                    raise ValueError(f"{name} must be a finite number or null")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError("min is greater than max")
            return cls("continuous", min=lo, max=hi)
        if kind == "categorical":
            _only(raw, {"type", "categories", "allows_multiple_categories"})
            if raw.get("allows_multiple_categories") not in (None, False):
                raise ValueError("allows_multiple_categories is not supported (one choice each)")
            cats = raw.get("categories")
            if not isinstance(cats, list) or not 1 <= len(cats) <= MAX_CATEGORIES:
                raise ValueError(f"categories must be a list of 1 to {MAX_CATEGORIES} objects")
            parsed: list[Category] = []
            for i, cat in enumerate(cats):
                if not isinstance(cat, dict) or not set(cat) <= {"value", "label"}:
                    raise ValueError(f"categories[{i}] must be {{'value': number, 'label': str}}")
                value, label = cat.get("value"), cat.get("label")
                if not isinstance(value, int | float) or isinstance(value, bool) or not finite(value):
                    raise ValueError(f"categories[{i}].value must be a finite number")
                if label is not None and not (isinstance(label, str) and 0 < len(label) <= LABEL_CAP):
                    raise ValueError(f"categories[{i}].label must be a string of 1..{LABEL_CAP}")
                parsed.append(Category(value, label))
            if len({c.value for c in parsed}) != len(parsed):
                raise ValueError("category values must be distinct")
            labels = [c.label for c in parsed if c.label is not None]
            if len(set(labels)) != len(labels):
                raise ValueError("category labels must be distinct")
            return cls("categorical", categories=tuple(parsed))
        if kind == "freeform":
            _only(raw, {"type"})
            return cls("freeform")
        raise ValueError("type must be 'continuous', 'categorical' or 'freeform'")

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
        if not isinstance(claim, list) or not claim:
            raise ValueError("malformed config claim")
        if claim[0] == "c" and len(claim) == 3:
            return cls("continuous", min=claim[1], max=claim[2])
        if claim[0] == "k" and len(claim) == 2:
            return cls("categorical", categories=tuple(Category(*c) for c in claim[1]))
        if claim[0] == "f":
            return cls("freeform")
        raise ValueError("malformed config claim")


def _only(raw: Mapping[str, object], allowed: set[str]) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(extra)}")


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Submission:
    score: Number | None = None
    value: Any = None
    comment: str | None = None
    correction: Any = None
    metadata: dict[str, Any] | None = None

    def fingerprint(self) -> str:
        """Identical submissions (a client's retry) have identical fingerprints."""
        score = None if self.score is None else float(self.score)
        body = [score, self.value, self.comment, self.correction, self.metadata]
        return hashlib.sha256(_canonical(body).encode()).hexdigest()[:32]

    def check(self, config: FeedbackConfig | None) -> None:
        """Validate the values against the token's config (422 ``invalid_feedback``)."""
        if self.score is not None and not finite(self.score):
            raise InvalidFeedback("score must be a finite number")
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
    bounded nesting."""
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


def _size(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else len(_canonical(value).encode())


def _build(score: Any, value: Any, comment: Any, correction: Any, metadata: Any) -> Submission:
    if isinstance(score, bool):
        score = int(score)
    if score is not None and not is_number(score):
        raise InvalidBody("score must be a number or a boolean")
    if value is not None and not isinstance(value, int | float | str | dict):
        raise InvalidBody("value must be a number, boolean, string or object")
    if isinstance(value, float) and not finite(value):
        raise InvalidFeedback("value must be finite")
    if comment is not None and not isinstance(comment, str):
        raise InvalidBody("comment must be a string")
    if correction is not None and not isinstance(correction, dict | str):
        raise InvalidBody("correction must be an object or a string")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidBody("metadata must be an object")
    if score is None and value is None and comment is None and correction is None:
        raise InvalidFeedback("give at least one of score, value, comment, correction")
    for name, item, cap in (
        ("comment", comment, COMMENT_CAP),
        ("correction", correction, CORRECTION_CAP),
        ("metadata", metadata, METADATA_CAP),
    ):
        if item is not None and _size(item) > cap:
            raise InvalidFeedback(f"{name} is larger than {cap} bytes")
    if value is not None and _size(value) > CORRECTION_CAP:
        raise InvalidFeedback(f"value is larger than {CORRECTION_CAP} bytes")
    return Submission(score, value, comment, correction, metadata)


def parse_json(raw: bytes) -> Submission:
    data = loads(raw)
    if not isinstance(data, dict):
        raise InvalidBody("body must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS) - LANGSMITH_FIELDS)
    if unknown:
        raise InvalidFeedback(f"unknown field(s): {', '.join(unknown)}")
    return _build(*(data.get(name) for name in FIELDS))


def _query_number(raw: str) -> Number | bool:
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low) if low.lstrip("+-").isdigit() else float(low)
    except ValueError as err:
        raise InvalidBody("score must be a number, true or false") from err


def parse_query(params: Iterable[tuple[str, str]]) -> Submission:
    """A GET link's query. Unknown parameters (mail trackers add them) are ignored."""
    first: dict[str, str] = {}
    for name, raw in params:
        first.setdefault(name, raw)
    if "metadata" in first:
        raise InvalidFeedback("metadata can't be sent in a link; use POST")
    score: Any = None
    if first.get("score", "") != "":
        score = _query_number(first["score"])
    text = {n: first[n] if first.get(n, "") != "" else None for n in ("value", "comment", "correction")}
    return _build(score, text["value"], text["comment"], text["correction"], None)
