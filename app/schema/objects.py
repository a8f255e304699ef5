"""Shapes of JSON objects: named fields, rules that relate them, tagged variants."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.schema.values import NOT_NULL, Invalid, Json, Refs, Shape, or_null


@dataclass(frozen=True, slots=True)
class Field:
    """One member of an object. ``required``: it must be present; ``nullable``: null is taken,
    and means the same as absent. An absent (or null) field checks as ``default``."""

    shape: Shape
    required: bool = False
    nullable: bool = True
    description: str | None = None
    default: Any = None


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule relating an object's fields. ``holds`` gets the checked values (None where a field
    is absent or null). ``schema`` says the same in JSON Schema; when JSON Schema can't say it,
    ``schema`` is None and the rule is listed in the document's ``x-rules`` under ``name``.
    A rule without ``holds`` is checked elsewhere, because it needs the clock or the settings;
    it is here to be documented beside the fields it concerns.

    ``message`` is a sentence at the top level and a predicate in a nested object
    ("is zero: ..." reads as "expires_in is zero: ...")."""

    message: str
    holds: Callable[[Mapping[str, Any]], bool] | None
    schema: Json | None = None
    name: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.schema is None and not (self.name and self.description):
            raise ValueError("a rule JSON Schema can't state needs a name and a description")


def at_least_one(names: Sequence[str], message: str, present: Json = NOT_NULL) -> Rule:
    """At least one of ``names`` is given; ``present`` is what a given value looks like."""

    def holds(values: Mapping[str, Any]) -> bool:
        for n in names:  # not any(...): this runs on every submission
            if values[n] is not None:
                return True
        return False

    return Rule(message, holds, {"anyOf": [{"required": [n], "properties": {n: present}} for n in names]})


def not_both(a: str, b: str, message: str) -> Rule:
    return Rule(
        message,
        lambda v: v[a] is None or v[b] is None,
        {"not": {"required": [a, b], "properties": {a: NOT_NULL, b: NOT_NULL}}},
    )


def only_when(name: str, other: str, value: str, message: str) -> Rule:
    """``name`` may be given only when ``other`` is ``value``."""
    return Rule(
        message,
        lambda v: v[name] is None or v[other] == value,
        {"anyOf": [{"properties": {name: {"type": "null"}}},
                   {"required": [other], "properties": {other: {"const": value}}}]},
    )


def never_when(name: str, other: str, value: str, message: str) -> Rule:
    """``name`` may not be given when ``other`` is ``value``."""
    return Rule(
        message,
        lambda v: v[name] is None or v[other] != value,
        {"not": {"required": [name, other], "properties": {name: NOT_NULL, other: {"const": value}}}},
    )


class Object(Shape):
    """A JSON object of named fields. ``closed``: other names are refused (else ignored);
    ``refused``: names refused anyway, with the reason; ``blank_is_absent``: an empty string
    counts as absent (query strings and forms, where a field can't be null)."""

    types = (dict,)

    def __init__(
        self,
        fields: Mapping[str, Field],
        *,
        rules: Sequence[Rule] = (),
        closed: bool = True,
        refused: Mapping[str, str] | None = None,
        blank_is_absent: bool = False,
        max_properties: int | None = None,
        what: str = "an object",
        description: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(description, name=name)
        self.fields = dict(fields)
        self.rules = tuple(rules)
        self.closed = closed
        self.refused = dict(refused or {})
        self.blank_is_absent = blank_is_absent
        self.max_properties = max_properties
        self.what = what
        self._names = frozenset(self.fields)
        # (name, check, default, whether absence needs a closer look): the check's hot loop
        self._plan = tuple((n, f.shape.check, f.default, f.required or not f.nullable) for n, f in self.fields.items())
        self._checks = tuple(r for r in self.rules if r.holds is not None)

    def check(self, value: Any) -> dict[str, Any]:
        """The checked fields by name (their defaults where absent). Wrong types anywhere come
        first, then limits of single fields, then the rules."""
        if type(value) is not dict:
            raise Invalid(f"must be {self.what}", wrong_type=True)
        if self.closed and not self._names.issuperset(value):
            raise Invalid(f"has unknown field(s): {', '.join(sorted(value.keys() - self._names))}")
        if self.max_properties is not None and len(value) > self.max_properties:
            raise Invalid(f"has more than {self.max_properties} fields", wrong_type=True)
        if self.refused:
            for name, reason in self.refused.items():
                if name in value:
                    raise Invalid(reason).within(name)
        out: dict[str, Any] = {}
        deferred: Invalid | None = None
        blank = self.blank_is_absent
        for name, check, default, strict in self._plan:
            raw = value.get(name)
            if raw is None or (blank and raw == ""):
                if strict:
                    self._absent(name, value)
                out[name] = default
                continue
            try:
                out[name] = check(raw)
            except Invalid as err:
                err.within(name)
                if err.wrong_type:
                    raise
                deferred = deferred or err
        if deferred is not None:
            raise deferred
        for rule in self._checks:
            if not rule.holds(out):  # type: ignore[misc]
                raise Invalid(rule.message, complete=True)
        return out

    def _absent(self, name: str, value: dict[str, Any]) -> None:
        """A field that is absent, null or blank, and is required or not nullable."""
        item = self.fields[name]
        raw = value.get(name)
        if item.required and (raw is None or not item.nullable):
            raise Invalid("is required").within(name)
        if raw is None and name in value and not item.nullable:
            raise Invalid("may not be null", wrong_type=True).within(name)

    def keywords(self, refs: Refs) -> Json:
        properties: Json = {}
        for name, item in self.fields.items():
            schema = item.shape.schema(refs)
            if item.description:
                note = schema.pop("description", None)
                schema = {"description": f"{item.description} {note}" if note else item.description, **schema}
            if item.default is not None:
                schema["default"] = item.default
            properties[name] = or_null(schema) if item.nullable else schema
        for name, reason in self.refused.items():
            properties[name] = {"not": {}, "description": f"Refused: {name} {reason}."}
        out: Json = {"type": "object", "properties": properties}
        required = [n for n, f in self.fields.items() if f.required]
        if required:
            out["required"] = required
        if self.closed:
            out["additionalProperties"] = False
        if self.max_properties is not None:
            out["maxProperties"] = self.max_properties
        stated = [r.schema for r in self.rules if r.schema is not None]
        if len(stated) == 1 and not stated[0].keys() & out.keys():
            out.update(stated[0])
        elif stated:
            out["allOf"] = stated
        unstated = {r.name: r.description for r in self.rules if r.schema is None}
        if unstated:
            out["description"] = " ".join(d for d in unstated.values() if d)
            out["x-rules"] = unstated
        return out


class Tagged(Shape):
    """Objects of a few kinds, told apart by the value of one member (``tag``)."""

    types = (dict,)

    def __init__(self, tag: str, variants: Mapping[str, Object], *, description: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(description, name=name)
        self.tag, self.variants = tag, dict(variants)

    def check(self, value: Any) -> Any:
        if type(value) is not dict:
            raise Invalid("must be an object", wrong_type=True)
        tag = value.get(self.tag)
        variant = self.variants.get(tag) if type(tag) is str else None
        if variant is None:
            kinds = ", ".join(repr(k) for k in self.variants)
            raise Invalid(f"must be one of {kinds}").within(self.tag)
        return variant.check(value)

    def keywords(self, refs: Refs) -> Json:
        return {"oneOf": [v.schema(refs) for v in self.variants.values()]}


class Extends(Shape):
    """An answer shape: ``base`` (a named object) plus more fields. Answers are described, never
    checked: the service builds them."""

    types = (dict,)

    def __init__(self, base: Shape, more: Object, *, description: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(description, name=name)
        self.base, self.more = base, more

    def check(self, value: Any) -> Any:
        raise NotImplementedError("answer shapes are described, not checked")

    def keywords(self, refs: Refs) -> Json:
        return {"allOf": [self.base.schema(refs), self.more.definition(refs)]}
