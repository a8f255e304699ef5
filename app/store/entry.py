"""A feedback stream entry: its fields as Redis holds them (all strings), and the same entry
typed back for the places feedback is delivered to.

Fields::

    id            feedback id (a UUID; under 'many' a fresh one per submission)
    token_id      the token it came through
    run_id        the run it is about
    feedback_key  the key it scores
    score         a JSON number, or '' when absent
    value         a plain string as it is; a number, boolean or object as JSON; '' when absent
    comment       the text; '' when absent
    correction    a plain string as it is; an object as JSON; '' when absent
    metadata      a JSON object, or '' when absent
    created_at    ISO 8601 in UTC
    revision      only for 'update' tokens: 1, 2, ... in the order the stream holds them
    strings       only when needed: the names (comma-separated) of value, comment and correction
                  whose text is a plain string although it is empty or reads as JSON

``strings`` makes the typing exact: a value that is the string "5" (or "", or "true") is not
the number 5 (nor absent, nor a boolean). Entries written before it existed are read as JSON
where their text parses as JSON, which only misreads such look-alike strings.

Entries are delivered with ``revision`` 1 where the stream has none, so that (``id``,
``revision``) names every delivered feedback: delivering one twice (at least once) never makes
two of it where the target deduplicates on that pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

STRINGS = "strings"
_AMBIGUOUS = ("value", "comment", "correction")


def _reads_as_json(text: str) -> bool:
    """Whether a reader could take ``text`` for JSON. Text nested past the parser's limit (a
    comment of a thousand ``[``) reads as JSON too: its first character says so."""
    try:
        json.loads(text)
    except RecursionError:
        return True
    except ValueError:
        return False
    return True


def literal_strings(value: Any, comment: Any, correction: Any) -> str:
    """The ``strings`` field for a submission: '' (leave the field out) unless one of these is a
    string that its stream text would not tell from JSON or from absence."""
    if value is None and comment is None and correction is None:
        return ""  # a score alone: the usual submission
    names = [
        name
        for name, item in zip(_AMBIGUOUS, (value, comment, correction), strict=True)
        if isinstance(item, str) and (item == "" or _reads_as_json(item))
    ]
    return ",".join(names)


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # what orjson refuses and the writer may write: integers beyond 64 bits


def _number(text: str) -> int | float | None:
    """A score as json.dumps wrote it: an integer or a float."""
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"score is not a number: {text[:40]!r}")
    return number


def _json_or_text(text: str, literal: bool) -> Any:
    if literal:
        return text
    if text == "":
        return None
    try:
        return _loads(text)
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    """One stream entry, typed back. ``stream`` and ``stream_id`` say where it was read (stream
    ids are unique within one stream only); (``id``, ``revision``) is the feedback's identity."""

    stream: str
    stream_id: str
    id: str
    revision: int
    token_id: str
    run_id: str
    feedback_key: str
    score: int | float | None
    value: Any
    comment: str | None
    correction: Any
    metadata: dict[str, Any] | None
    created_at: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.revision)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "revision": self.revision,
            "token_id": self.token_id,
            "run_id": self.run_id,
            "feedback_key": self.feedback_key,
            "score": self.score,
            "value": self.value,
            "comment": self.comment,
            "correction": self.correction,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "stream": self.stream,
            "stream_id": self.stream_id,
        }


def decode(stream: str, stream_id: str, fields: dict[Any, Any]) -> FeedbackEntry:
    """Type an entry back; ValueError (or KeyError for a missing field) if it is malformed."""
    raw = {
        (k.decode() if type(k) is bytes else k): (v.decode() if type(v) is bytes else v) for k, v in fields.items()
    }
    strings = raw.get(STRINGS)
    literal = set(strings.split(",")) if strings else ()
    metadata_text = raw.get("metadata", "")
    metadata = _loads(metadata_text) if metadata_text else None
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError("metadata is not a JSON object")
    comment = raw.get("comment", "")
    return FeedbackEntry(
        stream=stream,
        stream_id=stream_id,
        id=raw["id"],
        revision=int(raw.get("revision") or 1),
        token_id=raw["token_id"],
        run_id=raw["run_id"],
        feedback_key=raw["feedback_key"],
        score=_number(raw.get("score", "")),
        value=_json_or_text(raw.get("value", ""), "value" in literal),
        comment=comment if comment or "comment" in literal else None,
        correction=_json_or_text(raw.get("correction", ""), "correction" in literal),
        metadata=metadata,
        created_at=raw["created_at"],
    )
