"""Shapes of values written as text: instants (ISO 8601), and numbers in query strings and forms."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.schema.values import DBL_MAX, INT_MAX, WHOLE, Invalid, Json, Refs, Shape


class Instant(Shape):
    """An ISO 8601 date and time, as ``datetime.fromisoformat`` reads it (a trailing ``Z`` too);
    without an offset it means UTC. Checks to seconds since the epoch.

    The document says ``format: date-time`` (RFC 3339), which wants an offset: stricter."""

    types = (str,)

    def __init__(self, max_length: int = 64, *, description: str | None = None) -> None:
        super().__init__(description)
        self.max_length = max_length

    def check(self, value: Any) -> Any:
        if type(value) is not str or len(value) > self.max_length:
            raise Invalid("must be an ISO 8601 datetime", wrong_type=type(value) is not str)
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise Invalid("must be an ISO 8601 datetime") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()

    def keywords(self, refs: Refs) -> Json:
        return {"type": "string", "format": "date-time", "maxLength": self.max_length, "x-stricter": ["format"]}


class QueryInteger(Shape):
    """A whole number written as text, as ``int()`` reads it."""

    types = (str,)

    def __init__(self, minimum: int, maximum: int, *, description: str | None = None) -> None:
        super().__init__(description)
        self.minimum, self.maximum = minimum, maximum

    def check(self, value: Any) -> Any:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise Invalid("must be a whole number", wrong_type=True) from None
        if not self.minimum <= number <= self.maximum:
            raise Invalid(f"must be between {self.minimum} and {self.maximum}")
        return number

    def keywords(self, refs: Refs) -> Json:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum, "x-rules": WHOLE}


class QueryNumber(Shape):
    """A finite number written as text (``true`` and ``false`` count as 1 and 0), as ``int()``
    or else ``float()`` reads it once stripped and lower-cased.

    Python reads more than a pattern can say (Unicode digits, ``1_000``, surrounding spaces), so
    the document's pattern is a stricter bound: up to 15 digits either side of the point and a
    two-digit exponent, which also keeps every number it allows finite."""

    types = (str,)
    PATTERN = (
        "^([+-]?([0-9]{1,15}([.][0-9]{0,15})?|[.][0-9]{1,15})([eE][+-]?[0-9]{1,2})?"
        "|[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])?$"
    )

    def check(self, value: Any) -> Any:
        low = value.strip().lower()
        if low in ("true", "false"):
            return int(low == "true")
        try:
            number = int(low) if low.lstrip("+-").isdigit() else float(low)
        except ValueError:
            raise Invalid("must be a number, true or false", wrong_type=True) from None
        bound = INT_MAX if type(number) is int else DBL_MAX
        if not -bound <= number <= bound:  # NaN fails this too
            raise Invalid("must be a finite number")
        return number

    def keywords(self, refs: Refs) -> Json:
        return {"type": "string", "pattern": self.PATTERN, "x-stricter": ["pattern"],
                "description": "A number, or true or false (1 or 0)."}
