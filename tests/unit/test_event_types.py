"""Every field of the ECS event has one JSON type whatever Aha! sends, and the index template
maps each of them.

A search engine maps a field by the first value it sees and refuses a document whose value has
another type (`aha.audit.changes.value` a date, then a number: `mapper_parsing_exception`), so
the events topic's contract (forwarder/schemas/aha-audit-event.v2.json) gives each field one
type. Two places keep Aha!'s own types on purpose and are left out here: a change's
`value_raw` and the payload of an event type other than audit (`aha.<event>`); the template
stores both without indexing them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from tests.event_bodies import INDEX_TEMPLATE, annotated_events, normalized_events
from tests.schema import assert_valid_event

# Subtrees that carry Aha!'s own types: not indexed by the template (`enabled: false`, or
# under the `dynamic: false` object `aha`).
TYPED_ORIGINALS = ("aha.audit.changes[].value_raw",)

# The template's field types that take each JSON type.
ACCEPTS = {
    "string": {"keyword", "text", "date"},
    "boolean": {"boolean"},
    "number": {"long", "double", "float", "scaled_float"},
}


def _events() -> dict[str, dict[str, Any]]:
    return normalized_events() | annotated_events()


def _json_type(value: Any) -> str | None:
    if value is None:
        return None  # null is no value in every mapping: it fits any type
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _walk(node: Any, path: str, found: dict[str, set[str]], skip: tuple[str, ...]) -> None:
    if path in skip:
        return
    kind = _json_type(node)
    if kind is not None:
        found[path].add(kind)
    if isinstance(node, dict):
        for key, value in node.items():
            _walk(value, f"{path}.{key}" if path else key, found, skip)
    elif isinstance(node, list):
        for item in node:
            _walk(item, f"{path}[]", found, skip)


def _types(event: dict[str, Any]) -> dict[str, set[str]]:
    skip: tuple[str, ...] = TYPED_ORIGINALS
    aha = event.get("aha") or {}
    if aha.get("event") != "audit":
        skip = (*skip, f"aha.{aha.get('event')}")
    found: dict[str, set[str]] = defaultdict(set)
    _walk(event, "", found, skip)
    found.pop("", None)
    return found


def _types_by_path() -> dict[str, dict[str, list[str]]]:
    """Per field path: per JSON type, the bodies that gave it."""
    seen: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, event in _events().items():
        for path, kinds in _types(event).items():
            for kind in kinds:
                seen[path][kind].append(name)
    return seen


def test_the_corpus_has_what_it_is_meant_to_have() -> None:
    events = _events()
    values = [
        change.get("value_raw", change["value"])
        for event in events.values()
        for change in (event["aha"].get("audit") or {}).get("changes") or []
    ]
    kinds = {type(value).__name__ for value in values}
    assert {"str", "int", "float", "bool", "NoneType", "dict", "list"} <= kinds
    assert any(name.startswith("tests/data/hostile/types/") for name in events)
    assert "generated/long_texts" in events
    assert {"audit", "security", "ingest_received_at", "collation_event"} <= {
        event["aha"]["event"] for event in events.values()
    }


def test_every_field_has_one_json_type_across_every_body() -> None:
    mixed = {
        path: {kind: names[:3] for kind, names in kinds.items()}
        for path, kinds in _types_by_path().items()
        if len(kinds) > 1
    }
    assert mixed == {}, f"fields whose type depends on the body: {json.dumps(mixed, indent=2)}"


@pytest.mark.parametrize("name", sorted(_events()))
def test_every_event_validates_against_the_published_schema(name: str) -> None:
    assert_valid_event(_events()[name])


def _template_fields() -> dict[str, dict[str, Any]]:
    """The template's mapped fields by dotted path (objects included)."""
    mappings = json.loads(INDEX_TEMPLATE.read_text())["template"]["mappings"]
    fields: dict[str, dict[str, Any]] = {}

    def visit(properties: dict[str, Any], prefix: str) -> None:
        for name, mapping in properties.items():
            path = f"{prefix}{name}"
            fields[path] = mapping
            visit(mapping.get("properties") or {}, f"{path}.")

    visit(mappings["properties"], "")
    return fields


def test_the_template_maps_every_field_with_a_type_that_takes_its_values() -> None:
    fields = _template_fields()
    problems = []
    for path, kinds in sorted(_types_by_path().items()):
        field = path.replace("[]", "")
        kind = next(iter(kinds))
        if kind == "array":
            continue  # an array is its items to Elasticsearch: the items are checked
        mapping = fields.get(field)
        if mapping is None:
            problems.append(f"{field}: not in the template ({kind})")
        elif kind == "object":
            if "properties" not in mapping:
                problems.append(f"{field}: an object, mapped as {mapping.get('type')}")
        elif mapping.get("type") not in ACCEPTS[kind]:
            problems.append(f"{field}: a {kind}, mapped as {mapping.get('type', 'an object')}")
    assert problems == []


def test_the_template_keeps_the_typed_originals_unindexed() -> None:
    fields = _template_fields()
    assert fields["aha.audit.changes.value_raw"] == {"type": "object", "enabled": False}
    # Any other event type's payload lands under `aha` and is kept in _source only.
    mappings = json.loads(INDEX_TEMPLATE.read_text())["template"]["mappings"]
    assert mappings["dynamic"] is False
    assert fields["aha"]["dynamic"] is False


def test_every_keyword_has_a_length_limit() -> None:
    # A keyword longer than 32,766 bytes is refused by Lucene unless `ignore_above` skips it.
    unlimited = []
    for path, mapping in _template_fields().items():
        for name, field in [(path, mapping)] + [
            (f"{path}.{sub}", each) for sub, each in (mapping.get("fields") or {}).items()
        ]:
            indexed = field.get("type") == "keyword" and field.get("index", True)
            if indexed and not 0 < field.get("ignore_above", 0) <= 8191:
                unlimited.append(name)
    assert unlimited == []


def test_the_template_is_for_the_sinks_default_data_stream() -> None:
    from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig

    template = json.loads(INDEX_TEMPLATE.read_text())
    default = ElasticsearchSinkConfig.model_fields["index"].default
    assert any(default.startswith(pattern.rstrip("*")) for pattern in template["index_patterns"])
    assert template["data_stream"] == {}
    # Above Elasticsearch's built-in `logs` template (priority 100), which would win otherwise.
    assert template["priority"] > 100


def test_the_template_follows_the_event_schemas_major_version() -> None:
    from tests.schema import SCHEMA_PATH

    template = json.loads(INDEX_TEMPLATE.read_text())
    schema_id = json.loads(SCHEMA_PATH.read_text())["$id"]
    assert template["version"] == int(schema_id.rsplit("/", 1)[1].split(".")[0])
    assert template["_meta"]["event_schema"] == f"forwarder/schemas/{SCHEMA_PATH.name}"
