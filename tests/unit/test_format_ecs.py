"""ECS JSON: a golden file for every sample and hostile body (the whole normalized event, with a
fixed clock and provenance), and the text of every field kept exactly as it came."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from forwarder.formats import encoder_for
from forwarder.formats.controls import json_escape
from tests.golden import assert_golden
from tests.helpers import HOSTILE, body_id, hostile_paths, normalized_sample, sample_paths

BODIES = [*sample_paths(), *hostile_paths()]


def golden_text(document: object) -> str:
    """A document as its golden file holds it: indented JSON, non-ASCII text as it is, but line
    separators and bidi controls as JSON escapes, so no golden file hides or reorders text."""
    pretty = json.dumps(document, indent=2, ensure_ascii=False)
    return json_escape(pretty.encode("utf-8")).decode("utf-8") + "\n"


@pytest.mark.parametrize("path", BODIES, ids=body_id)
def test_every_body_normalizes_to_its_golden_event(path: Path) -> None:
    event = normalized_sample(path)
    assert_golden(f"ecs/{body_id(path)}.json", golden_text(event))
    # The encoder writes that very document.
    assert orjson.loads(encoder_for("ecs")(event)) == event


def test_golden_files_read_back_as_the_events() -> None:
    for path in BODIES:
        golden = Path(__file__).parents[1] / "golden" / "ecs" / f"{body_id(path)}.json"
        assert json.loads(golden.read_text(encoding="utf-8")) == normalized_sample(path)


@pytest.mark.parametrize(
    ("body", "name", "email"),
    [
        ("bidi_name.json", "Zo\u00eb \u202eevil\u202c", "zoe@example.com"),
        (
            "separators_in_every_field.json",
            "Line\u2028Separator\u2029Para\u0085Nel",
            "line\u2028sep@example.com",
        ),
        (
            "line_breaks_in_names.json",
            "Carl\r\nCEF:0|Evil|Corp|1|x|forged|10|",
            "carl\n@example.com",
        ),
    ],
)
def test_json_formats_keep_the_users_text_as_it_is(body: str, name: str, email: str) -> None:
    # ECS and OCSF are JSON: the text is escaped by JSON's rules and decodes to what Aha! sent.
    event = normalized_sample(HOSTILE / body)
    assert (event["user"]["name"], event["user"]["email"]) == (name, email)
    assert orjson.loads(encoder_for("ecs")(event))["user"] == event["user"]
    actor = orjson.loads(encoder_for("ocsf")(event))["actor"]["user"]
    assert (actor["name"], actor.get("email_addr", email)) == (name, email)
