"""The published contract of aha.audit.events, for validating produced events in tests."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

import forwarder

SCHEMA_PATH = Path(forwarder.__file__).parent / "schemas" / "aha-audit-event.v2.json"


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def assert_valid_event(event: Any) -> None:
    """Fail with every violation of the published event schema."""
    errors = sorted(_validator().iter_errors(event), key=lambda error: list(error.path))
    if errors:
        lines = [
            f"{'/'.join(map(str, error.path)) or '(root)'}: {error.message}" for error in errors
        ]
        raise AssertionError("event violates the schema:\n" + "\n".join(lines))
