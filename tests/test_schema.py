"""The shapes (app/schema, app/domain/shapes.py): the stricter bounds the document states in place of
byte caps really do fit those caps, errors say where and what, and the document refers only to
shapes it defines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.domain import shapes
from app.http.openapi import DOCUMENT
from app.schema import Invalid, JsonObject, Rule, Shape, Text, canonical

NUMBER_24 = -2.2250738585072014e-308  # one of the longest numbers JSON writes (24 characters)


def every_shape(shape: Shape) -> list[Shape]:
    found, stack = [], [shape]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(getattr(node, "options", ()))
        stack.extend(f.shape for f in getattr(node, "fields", {}).values())
        stack.extend(getattr(node, "variants", {}).values())
        if hasattr(node, "items"):
            stack.append(node.items)
    return found


REQUESTS = [shapes.ISSUANCE, shapes.SUBMISSION, shapes.LINK, shapes.FORM, shapes.LIST_QUERY]
CAPPED_TEXT = [s for r in REQUESTS for s in every_shape(r) if isinstance(s, Text) and s.max_bytes]
CAPPED_OBJECTS = [s for r in REQUESTS for s in every_shape(r) if isinstance(s, JsonObject)]


def test_the_caps_are_all_found():
    assert {s.max_bytes for s in CAPPED_TEXT} == {shapes.COMMENT_CAP, shapes.CORRECTION_CAP}
    assert {s.max_bytes for s in CAPPED_OBJECTS} == {shapes.METADATA_CAP, shapes.CORRECTION_CAP}


@pytest.mark.parametrize("shape", CAPPED_TEXT, ids=lambda s: str(s.max_bytes))
def test_stated_text_bound_fits_its_byte_cap(shape: Text):
    schema = shape.schema({})
    widest = "\U0010ffff" * schema["maxLength"]  # 4 bytes each in UTF-8, the most a character takes
    assert shape.check(widest) == widest
    assert schema["x-max-bytes"] == shape.max_bytes and schema["x-stricter"] == ["maxLength"]
    over = "x" * (shape.max_bytes + 1)
    with pytest.raises(Invalid, match=f"larger than {shape.max_bytes} bytes"):
        shape.check(over)


@pytest.mark.parametrize("shape", CAPPED_OBJECTS, ids=lambda s: str(s.max_bytes))
def test_stated_object_bound_fits_its_byte_cap(shape: JsonObject):
    schema = shape.schema({})
    properties, name_length = schema["maxProperties"], schema["propertyNames"]["maxLength"]
    value_length = schema["additionalProperties"]["maxLength"]
    # Control characters: 6 bytes each as JSON (\u00XX); names made distinct by their last one.
    names = ["\x01" * (name_length - 1) + chr(i) for i in range(properties)]
    as_strings = {n: "\x01" * value_length for n in names}
    as_numbers = {n: NUMBER_24 for n in names}
    for widest in (as_strings, as_numbers):
        assert len(canonical(widest).encode()) <= shape.max_bytes
        assert shape.check(widest) is widest
    with pytest.raises(Invalid, match=f"larger than {shape.max_bytes} bytes"):
        shape.check({"k": "v" * shape.max_bytes})


def test_errors_name_the_value_and_its_kind():
    with pytest.raises(Invalid) as wrong:
        shapes.ISSUANCE.check([{"run_id": "6f1c0b0e-2b9c-4c1e-9a57-3f1f2d9d8e11", "feedback_key": "k"},
                               {"run_id": "6f1c0b0e-2b9c-4c1e-9a57-3f1f2d9d8e11", "feedback_key": "k",
                                "feedback_config": {"type": "categorical", "categories": [{"value": "1"}]}}])
    assert wrong.value.describe("body") == "[1].feedback_config.categories[0].value must be a finite number"
    assert wrong.value.wrong_type
    with pytest.raises(Invalid) as broken:
        shapes.SUBMISSION.check({"score": True, "comment": "é" * 2049})
    assert broken.value.describe("body") == "comment is larger than 4096 bytes" and not broken.value.wrong_type
    with pytest.raises(Invalid) as rule:
        shapes.SUBMISSION.check({"metadata": {}})
    assert rule.value.describe("body") == "give at least one of score, value, comment, correction"


def test_type_errors_come_before_other_errors():
    # 400 before 422 on the submit path, wherever the fields stand.
    with pytest.raises(Invalid) as err:
        shapes.SUBMISSION.check({"value": "v" * 20000, "comment": 5})
    assert err.value.wrong_type and err.value.path == ["comment"]


def test_checked_values_are_normalised():
    checked = shapes.SUBMISSION.check({"score": True})
    assert checked["score"] == 1 and type(checked["score"]) is int
    request = shapes.TOKEN_REQUEST.check({"run_id": "6F1C0B0E2B9C4C1E9A573F1F2D9D8E11", "feedback_key": "k"})
    assert str(request["run_id"]) == "6f1c0b0e-2b9c-4c1e-9a57-3f1f2d9d8e11"
    assert (request["use"], request["confirm"]) == ("once", False)  # the documented defaults


def test_the_document_refers_only_to_shapes_it_defines():
    text = json.dumps(DOCUMENT)
    defined = set(DOCUMENT["components"]["schemas"])
    referred = {ref.rsplit("/", 1)[1] for ref in _refs(DOCUMENT)}
    assert referred == defined, (referred ^ defined)
    assert '"x-stricter"' in text and '"x-rules"' in text


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_a_rule_json_schema_cannot_state_must_be_described():
    with pytest.raises(ValueError, match="name and a description"):
        Rule("breaks", lambda v: True)
    described = DOCUMENT["components"]["schemas"]["TokenRequest"]
    assert set(described["x-rules"]) == {"expiry-window", "redirect-origin", "token-length"}
    assert all(described["x-rules"].values())


def test_the_documented_token_length_is_the_enforced_one():
    from app.domain.tokens import MAX_TOKEN_LENGTH

    assert shapes.TOKEN_LENGTH_CAP == MAX_TOKEN_LENGTH
    assert str(MAX_TOKEN_LENGTH) in DOCUMENT["components"]["schemas"]["TokenRequest"]["x-rules"]["token-length"]
