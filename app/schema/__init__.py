"""Shapes of JSON values, each rule written once: ``check`` validates a parsed value as the service
does, ``schema`` describes the same rule in JSON Schema (2020-12, the dialect of OpenAPI 3.1), and
``app/http/openapi.py`` builds the document from them.

A failed check raises ``Invalid``, whose ``wrong_type`` tells a value of the wrong JSON type from
a value of the right type that breaks a limit (the submit path answers 400 for the first, 422 for
the second). Values arrive parsed by ``app.domain.feedback.loads``, which already refused what
JSON Schema has no words for: duplicate keys, NaN and infinities, lone surrogates, deep nesting.

Where JSON Schema can't say a rule exactly, the document must still not accept what the service
refuses:

- a bound it can only approximate (UTF-8 bytes, the encoded size of an object) is stated as a
  stricter bound; its keywords are listed in ``x-stricter``, the exact rule is in the
  description (and ``x-max-bytes``);
- a rule it can't state at all (it relates fields in ways JSON Schema has no keyword for, or
  depends on the clock or the settings) is named in ``x-rules`` with its description.

``tests/test_schema_drift.py`` holds the document and the service to each other.
"""

from app.schema.encoded import Instant, QueryInteger, QueryNumber
from app.schema.objects import Extends, Field, Object, Rule, Tagged, at_least_one, never_when, not_both, only_when
from app.schema.values import (
    DBL_MAX,
    INT_MAX,
    NOT_NULL,
    AnyOf,
    AnyValue,
    Array,
    Boolean,
    Choice,
    Integer,
    Invalid,
    Json,
    JsonObject,
    Number,
    Refs,
    Shape,
    Text,
    Uuid,
    canonical,
    or_null,
)

__all__ = [
    "DBL_MAX", "INT_MAX", "NOT_NULL", "AnyOf", "AnyValue", "Array", "Boolean", "Choice", "Extends", "Field",
    "Instant", "Integer", "Invalid", "Json", "JsonObject", "Number", "Object", "QueryInteger", "QueryNumber", "Refs",
    "Rule", "Shape", "Tagged", "Text", "Uuid", "at_least_one", "canonical", "never_when", "not_both", "only_when",
    "or_null",
]
