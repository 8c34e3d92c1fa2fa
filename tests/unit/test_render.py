from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from forwarder import cli
from forwarder.formats import format_names
from forwarder.render import render
from tests.helpers import SAMPLES, sample_paths
from tests.schema import assert_valid_event


def test_every_sample_renders_in_every_format() -> None:
    for name in format_names():
        out = io.BytesIO()
        assert render(sample_paths(), name, out=out) == len(sample_paths())
        lines = out.getvalue().splitlines()
        assert len(lines) == len(sample_paths()), name
        assert all(lines), name


def test_ndjson_on_stdin_renders_one_ecs_event_per_body() -> None:
    bodies = [
        (SAMPLES / "feature_create.json").read_bytes(),
        (SAMPLES / "release_destroy.json").read_bytes(),
    ]
    ndjson = b"\n".join(orjson.dumps(orjson.loads(body)) for body in bodies) + b"\n"
    out = io.BytesIO()
    assert (
        render([], "ecs", token_id="acme-prod", account="acme", out=out, stdin=io.BytesIO(ndjson))
        == 2
    )
    events = [orjson.loads(line) for line in out.getvalue().splitlines()]
    for event in events:
        assert_valid_event(event)
    assert [event["event"]["action"] for event in events] == ["feature-create", "release-destroy"]
    assert events[0]["organization"] == {"id": "acme-prod", "name": "acme"}


def test_render_command_prints_to_stdout_and_rejects_unknown_formats(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sample = SAMPLES / "feature_update_status.json"
    assert cli.main(["render", "-f", "cef", str(sample)]) == 0
    assert capsys.readouterr().out.startswith("CEF:0|Aha!|Aha! Roadmaps|")
    with pytest.raises(SystemExit):
        cli.main(["render", "-f", "xml", str(sample)])
