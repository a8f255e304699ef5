"""Shapes of single JSON values: strings, numbers, UUIDs, lists, size-capped objects, choices."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

Json = dict[str, Any]
Refs = dict[str, "Shape"]
DBL_MAX = 1.7976931348623157e308  # the largest finite double: "a finite number" as JSON Schema says it
# The same bound for integers, which Python keeps exact: the decimal the document states, a hair
# below DBL_MAX's exact value (validators that read numbers as decimals compare with this one).
INT_MAX = 17976931348623157 * 10**292
# Numbers inside size-capped objects, in the stricter bound: short enough to count (at most 24
# characters as JSON, like -2.2250738585072014e-308), while JSON integers can be any length.
_SMALL_NUMBER = 10**15
NOT_NULL: Json = {"not": {"type": "null"}}


class Invalid(ValueError):
    """A value that breaks its shape. ``path`` locates it (keys and indexes, outermost first);
    ``message`` is a predicate ("must be a UUID") unless ``complete`` (a sentence of its own)."""

    def __init__(self, message: str, *, wrong_type: bool = False, complete: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.wrong_type = wrong_type
        self.complete = complete
        self.path: list[str | int] = []

    def within(self, key: str | int) -> Invalid:
        self.path.insert(0, key)
        return self

    def describe(self, whole: str) -> str:
        """The message, naming the value by its path, or as ``whole`` at the top level."""
        where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in self.path).lstrip(".")
        if not where and self.complete:
            return self.message
        return f"{where or whole} {self.message}"

    def __str__(self) -> str:
        return self.describe("value")


def canonical(value: Any) -> str:
    """Compact JSON with sorted keys: what size caps count and what fingerprints hash (stored:
    it must never change for a given value). ``json.dumps(value, sort_keys=True, separators=(",",
    ":"), ensure_ascii=False)``, with its encoder made once instead of on every call."""
    return _CANONICAL(value)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def or_null(schema: Json) -> Json:
    """``schema``, or null."""
    kind = schema.get("type")
    if isinstance(kind, str) and not {"anyOf", "oneOf", "allOf", "$ref", "const", "enum"} & set(schema):
        return {**schema, "type": [kind, "null"]}
    if "enum" in schema and set(schema) <= {"enum", "type", "description", "default"}:
        kinds = schema.get("type")
        kinds = [kinds, "null"] if isinstance(kinds, str) else kinds
        return {**schema, "enum": [*schema["enum"], None], **({"type": kinds} if kinds else {})}
    outer: Json = {k: schema[k] for k in ("description", "default") if k in schema}
    inner = {k: v for k, v in schema.items() if k not in outer}
    return {"anyOf": [inner, {"type": "null"}], **outer}


class Shape:
    """One kind of JSON value. ``types``: the Python types it takes (``AnyOf`` picks by them)."""

    types: tuple[type, ...] = ()

    def __init__(self, description: str | None = None, *, name: str | None = None) -> None:
        self.description = description
        self.name = name  # a named shape is a component of the document, referred to by $ref

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def keywords(self, refs: Refs) -> Json:
        raise NotImplementedError

    def definition(self, refs: Refs) -> Json:
        schema = self.keywords(refs)
        notes = [n for n in (self.description, schema.pop("description", None)) if n]
        return {"description": " ".join(notes), **schema} if notes else schema

    def schema(self, refs: Refs) -> Json:
        """This shape's JSON Schema; a named shape is registered in ``refs`` and referred to."""
        if self.name is None:
            return self.definition(refs)
        refs.setdefault(self.name, self)
        return {"$ref": f"#/components/schemas/{self.name}"}


def _type_error(what: str) -> Invalid:
    return Invalid(f"must be {what}", wrong_type=True)


class Text(Shape):
    """A string: lengths in characters (code points, as JSON Schema counts them), ``max_bytes``
    in UTF-8 bytes; ``controls=False`` refuses C0 and C1 control characters and DEL."""

    types = (str,)
    _CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
    # The same rule for the document (ECMA-262 regex, JSON-escaped).
    _NO_CONTROL = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"

    def __init__(self, min_length: int = 0, max_length: int | None = None, *, max_bytes: int | None = None,
                 controls: bool = True, format: str | None = None, description: str | None = None) -> None:
        super().__init__(description)
        self.min_length, self.max_length, self.max_bytes = min_length, max_length, max_bytes
        self.controls = controls
        self.format = format  # an annotation for answers (uuid, date-time); never checked
        # The longest string of any characters that surely fits max_bytes (4 bytes at most each).
        self._fits = 0 if max_bytes is None else min(max_bytes // 4, max_length or max_bytes)

    def check(self, value: Any) -> Any:
        if type(value) is not str:
            raise _type_error("a string")
        n = len(value)
        if n < self.min_length or (self.max_length is not None and n > self.max_length):
            raise Invalid(self._length_text())
        if self.max_bytes is not None and n > self._fits and len(value.encode()) > self.max_bytes:
            raise Invalid(f"is larger than {self.max_bytes} bytes")
        if not self.controls and self._CONTROL.search(value):
            raise Invalid("may not contain control characters")
        return value

    def _length_text(self) -> str:
        if self.max_length is None:
            return f"must be at least {self.min_length} characters long"
        return f"must be a string of {self.min_length} to {self.max_length} characters"

    def keywords(self, refs: Refs) -> Json:
        schema: Json = {"type": "string"}
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.max_bytes is not None:
            schema["maxLength"] = self._fits
            schema["x-max-bytes"] = self.max_bytes
            if self.max_length is None or self._fits < self.max_length:
                schema["x-stricter"] = ["maxLength"]
                schema["description"] = (f"At most {self.max_bytes} bytes of UTF-8 ({self._fits} characters "
                                         "always fit, so that is the schema's maxLength).")
        elif self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.format:
            schema["format"] = self.format
        if not self.controls:
            schema["pattern"] = self._NO_CONTROL
        return schema


WHOLE = {"integer-literal": "A whole number is written without a fraction or exponent (2, not 2.0 or 2e0), "
         "which JSON Schema can't tell apart."}


class Integer(Shape):
    """A whole number, written as one: 2, not 2.0 (which JSON Schema counts as an integer too)."""

    types = (int,)

    def __init__(self, minimum: int | None = None, maximum: int | None = None, *,
                 description: str | None = None, what: str = "a whole number") -> None:
        super().__init__(description)
        self.minimum, self.maximum, self.what = minimum, maximum, what

    def check(self, value: Any) -> Any:
        if type(value) is not int:
            raise _type_error(self.what)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            low = "" if self.minimum is None else f" from {self.minimum}"
            high = "" if self.maximum is None else f" to {self.maximum}"
            raise Invalid(f"must be {self.what}{low}{high}")
        return value

    def keywords(self, refs: Refs) -> Json:
        schema: Json = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        schema["x-rules"] = WHOLE
        return schema


class Number(Shape):
    """A finite number; with ``booleans``, true and false count as 1 and 0."""

    types: tuple[type, ...] = (int, float)

    def __init__(self, *, booleans: bool = False, description: str | None = None) -> None:
        super().__init__(description)
        self.booleans = booleans
        if booleans:
            self.types = (int, float, bool)

    def check(self, value: Any) -> Any:
        kind = type(value)
        if kind is bool and self.booleans:
            return int(value)
        if kind is float:
            if not -DBL_MAX <= value <= DBL_MAX:  # NaN fails this too
                raise Invalid("must be a finite number")
        elif kind is not int:
            raise _type_error("a number or a boolean" if self.booleans else "a finite number")
        elif not -INT_MAX <= value <= INT_MAX:
            raise Invalid("must be a finite number")
        return value

    def keywords(self, refs: Refs) -> Json:
        return {"type": ["number", "boolean"] if self.booleans else "number", "minimum": -DBL_MAX,
                "maximum": DBL_MAX}


class Boolean(Shape):
    types = (bool,)

    def check(self, value: Any) -> Any:
        if type(value) is not bool:
            raise _type_error("true or false")
        return value

    def keywords(self, refs: Refs) -> Json:
        return {"type": "boolean"}


class Uuid(Shape):
    """A UUID, parsed. Python also reads 32 hex digits, braces and a ``urn:uuid:`` prefix."""

    types = (str,)

    def check(self, value: Any) -> Any:
        if type(value) is str:
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
        raise Invalid("must be a UUID", wrong_type=type(value) is not str)

    def keywords(self, refs: Refs) -> Json:
        return {"type": "string", "format": "uuid", "x-stricter": ["format"]}


class Choice(Shape):
    """One of a few JSON scalars (one alone is a constant)."""

    def __init__(self, *values: str | bool, description: str | None = None) -> None:
        super().__init__(description)
        self.values = values
        self.types = tuple({type(v): None for v in values})

    def check(self, value: Any) -> Any:
        if type(value) not in self.types or value not in self.values:
            raise Invalid("must be " + " or ".join(json.dumps(v) for v in self.values),
                          wrong_type=type(value) not in self.types)
        return value

    def keywords(self, refs: Refs) -> Json:
        if len(self.values) == 1:
            return {"const": self.values[0]}
        return {"type": "string", "enum": list(self.values)} if self.types == (str,) else {"enum": list(self.values)}


class AnyValue(Shape):
    """Any JSON value, taken as it is."""

    types = (str, int, float, bool, dict, list)

    def check(self, value: Any) -> Any:
        return value

    def keywords(self, refs: Refs) -> Json:
        return {}


class JsonObject(Shape):
    """A JSON object whose compact encoding (``canonical``) is at most ``max_bytes`` bytes.

    JSON Schema can't measure an object's encoded size, so the schema states a flat object of
    short scalars that surely fits: at most 16 properties, names of at most 16 characters, and
    values null, booleans, numbers of magnitude at most 1e15 or strings of a length computed from
    the budget (6 bytes a character: a control character is written ``\\u00XX``)."""

    types = (dict,)
    _PROPERTIES = _NAME = 16

    def __init__(self, max_bytes: int, description: str | None = None) -> None:
        super().__init__(description)
        self.max_bytes = max_bytes
        per_property = (max_bytes - 2) // self._PROPERTIES - 1  # braces, commas
        per_value = per_property - (6 * self._NAME + 2) - 1  # the quoted name and its colon
        self._chars = (per_value - 2) // 6
        if self._chars < 1 or per_value < 24:
            raise ValueError(f"max_bytes {max_bytes} is too small for the stated bound")

    def check(self, value: Any) -> Any:
        if type(value) is not dict:
            raise _type_error("an object")
        if len(canonical(value).encode()) > self.max_bytes:
            raise Invalid(f"is larger than {self.max_bytes} bytes")
        return value

    def keywords(self, refs: Refs) -> Json:
        return {
            "type": "object",
            "description": f"Exactly: any JSON object of at most {self.max_bytes} bytes as compact JSON "
            "(UTF-8, no spaces); the schema states a simpler bound that always fits.",
            "maxProperties": self._PROPERTIES,
            "propertyNames": {"maxLength": self._NAME},
            "additionalProperties": {"type": ["null", "boolean", "number", "string"], "minimum": -_SMALL_NUMBER,
                                     "maximum": _SMALL_NUMBER, "maxLength": self._chars},
            "x-max-bytes": self.max_bytes,
            "x-stricter": ["maxProperties", "propertyNames", "additionalProperties"],
        }


class Array(Shape):
    types = (list,)

    def __init__(self, items: Shape, min_items: int = 0, max_items: int | None = None, *,
                 description: str | None = None) -> None:
        super().__init__(description)
        self.items, self.min_items, self.max_items = items, min_items, max_items

    def check(self, value: Any) -> Any:
        if type(value) is not list:
            raise _type_error("a list")
        if len(value) < self.min_items or (self.max_items is not None and len(value) > self.max_items):
            raise Invalid(f"must hold {self.min_items} to {self.max_items} items")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(self.items.check(item))
            except Invalid as err:
                raise err.within(i) from None
        return out

    def keywords(self, refs: Refs) -> Json:
        schema: Json = {"type": "array", "items": self.items.schema(refs)}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.max_items is not None:
            schema["maxItems"] = self.max_items
        return schema


class AnyOf(Shape):
    """One of several shapes, told apart by the value's JSON type (so they must not share one)."""

    def __init__(self, *options: Shape, what: str, description: str | None = None) -> None:
        super().__init__(description)
        self.options, self.what = options, what
        self._by_type = {t: o for o in options for t in o.types}
        if len(self._by_type) != sum(len(o.types) for o in options):
            raise ValueError("the options of AnyOf must take distinct JSON types")
        self.types = tuple(self._by_type)

    def check(self, value: Any) -> Any:
        option = self._by_type.get(type(value))
        if option is None:
            raise _type_error(self.what)
        return option.check(value)

    def keywords(self, refs: Refs) -> Json:
        return {"anyOf": [o.schema(refs) for o in self.options]}
