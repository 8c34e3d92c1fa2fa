"""`aha-siem siem setup elasticsearch` against the fake cluster over real HTTP: the pipeline and
the template land as siem/elasticsearch/ has them, twice without harm, with the credentials of
the environment or of a configured sink; a refusal names the resource and the cluster's reason,
and no secret is printed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli import main
from forwarder.siem.elasticsearch import INDEX_TEMPLATE, INGEST_PIPELINE
from tests.fakes.elasticsearch import PROCESSORS, FakeElasticsearch
from tests.fakes.server import AsgiServer

API_KEY = "key-id:key-secret-do-not-print"
PASSWORD = "s3cret-pass-do-not-print"
PIPELINE = json.loads(INGEST_PIPELINE.read_text())
TEMPLATE = json.loads(INDEX_TEMPLATE.read_text())


@pytest.fixture
def fake() -> FakeElasticsearch:
    return FakeElasticsearch(api_keys={API_KEY}, users={"admin": PASSWORD})


@pytest.fixture
def server(fake: FakeElasticsearch) -> Iterator[AsgiServer]:
    with AsgiServer(fake) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ELASTICSEARCH_API_KEY", "ELASTICSEARCH_USERNAME", "ELASTICSEARCH_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AHA_SIEM_CONFIG", raising=False)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["siem", "setup", "elasticsearch", *argv])
    out, err = capsys.readouterr()
    assert API_KEY.split(":")[1] not in out + err
    assert PASSWORD not in out + err
    return code, out, err


def _template_with_pipeline(name: str = "aha-audit") -> dict[str, Any]:
    expected = json.loads(INDEX_TEMPLATE.read_text())
    expected["template"].setdefault("settings", {})["index"] = {"default_pipeline": name}
    return expected


def test_the_pipeline_and_template_land_as_shipped_and_a_second_run_changes_nothing(
    fake: FakeElasticsearch,
    server: AsgiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ELASTICSEARCH_API_KEY", API_KEY)

    code, out, err = _run(capsys, "--url", server.url)

    assert (code, err) == (0, "")
    assert fake.pipelines == {"aha-audit": PIPELINE}
    assert fake.index_templates == {"aha-audit": _template_with_pipeline()}
    assert "PUT /_ingest/pipeline/aha-audit: 200" in out
    assert "PUT /_index_template/aha-audit: 200" in out
    # The pipeline first: the template names it.
    puts = [r.path for r in fake.requests if r.method == "PUT"]
    assert puts == ["/_ingest/pipeline/aha-audit", "/_index_template/aha-audit"]

    code, _, _ = _run(capsys, "--url", server.url)

    assert code == 0
    assert fake.pipelines == {"aha-audit": PIPELINE}
    assert fake.index_templates == {"aha-audit": _template_with_pipeline()}
    assert all(r.headers["authorization"].startswith("ApiKey ") for r in fake.requests)


def test_basic_credentials_from_the_environment(
    fake: FakeElasticsearch,
    server: AsgiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", "admin")
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", PASSWORD)

    code, _, err = _run(capsys, "--url", server.url, "--no-default-pipeline")

    assert (code, err) == (0, "")
    assert fake.index_templates["aha-audit"] == TEMPLATE
    assert all(r.headers["authorization"].startswith("Basic ") for r in fake.requests)


def test_the_sinks_connection_and_pipeline_name_are_used(
    fake: FakeElasticsearch,
    server: AsgiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "sinks:\n"
        "  - type: file\n    name: archive\n    path: " + str(tmp_path / "events") + "\n"
        "  - type: elasticsearch\n    name: elastic\n"
        f"    url: {server.url}\n    pipeline: aha-audit-custom\n"
        "  - type: elasticsearch\n    name: plain\n"
        f"    url: {server.url}\n    index: aha-plain\n"
    )
    monkeypatch.setenv("AHA_SIEM_SINKS__1__API_KEY", API_KEY)
    monkeypatch.setenv("AHA_SIEM_SINKS__2__API_KEY", API_KEY)

    code, _, err = _run(capsys, "--sink", "elastic", "-c", str(config))

    assert (code, err) == (0, "")
    assert set(fake.pipelines) == {"aha-audit-custom"}
    assert fake.index_templates["aha-audit"] == _template_with_pipeline("aha-audit-custom")

    code, _, err = _run(capsys, "--sink", "archive", "-c", str(config))
    assert code == 2
    assert (
        "--sink: no elasticsearch sink named 'archive' (elasticsearch sinks: elastic, plain)" in err
    )

    # A sink whose index the template does not cover is told so.
    code, _, err = _run(capsys, "--sink", "plain", "-c", str(config))
    assert code == 0
    assert "the sink's index 'aha-plain' matches none of the template's index_patterns" in err


def test_a_refused_credential_names_the_resource_and_the_clusters_reason(
    fake: FakeElasticsearch,
    server: AsgiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", "admin")
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", "wrong-" + PASSWORD)

    code, out, err = _run(capsys, "--url", server.url)

    assert code == 2
    assert out == ""
    assert "PUT /_ingest/pipeline/aha-audit (ingest pipeline)" in err
    assert "HTTP 401 security_exception: unable to authenticate" in err
    assert fake.pipelines == {} and fake.index_templates == {}


def test_missing_privileges_stop_at_the_first_resource(
    fake: FakeElasticsearch,
    server: AsgiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.manage_forbidden = True
    monkeypatch.setenv("ELASTICSEARCH_API_KEY", API_KEY)

    code, _, err = _run(capsys, "--url", server.url)

    assert code == 2
    assert "HTTP 403 security_exception: action [cluster:admin/ingest/pipeline/put]" in err
    assert [r.path for r in fake.requests] == ["/_ingest/pipeline/aha-audit"]


def test_a_template_the_cluster_refuses_is_named_with_its_reason(
    fake: FakeElasticsearch,
    server: AsgiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = tmp_path / "template.json"
    broken.write_text(json.dumps({"template": {}}))
    monkeypatch.setenv("ELASTICSEARCH_API_KEY", API_KEY)

    code, _, err = _run(capsys, "--url", server.url, "--template", str(broken))

    assert code == 2
    assert "PUT /_index_template/aha-audit (index template)" in err
    assert "index patterns are missing" in err
    assert set(fake.pipelines) == {"aha-audit"}


def test_an_unreachable_cluster_is_named_without_its_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        capsys, "--url", f"http://admin:{PASSWORD}@127.0.0.1:9/prefix", "--template", "/nope"
    )
    assert code == 2
    assert "/nope: no such file (give the file from a checkout's siem/elasticsearch/" in err

    code, _, err = _run(capsys, "--url", f"http://admin:{PASSWORD}@127.0.0.1:9")
    assert code == 2
    assert "PUT /_ingest/pipeline/aha-audit (ingest pipeline) on http://127.0.0.1:9: Connect" in err


def test_dry_run_prints_the_requests_and_sends_nothing(
    fake: FakeElasticsearch, server: AsgiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "--url", server.url, "--dry-run")

    assert code == 0
    assert fake.requests == []
    assert "PUT /_ingest/pipeline/aha-audit  # ingest pipeline" in out
    assert '"default_pipeline": "aha-audit"' in out


def test_the_pipeline_follows_the_templates_version() -> None:
    assert PIPELINE["version"] == TEMPLATE["version"]


def test_the_pipeline_uses_only_processors_both_products_have() -> None:
    steps = [*PIPELINE["processors"], *PIPELINE["on_failure"]]
    assert all(len(step) == 1 and next(iter(step)) in PROCESSORS for step in steps)
    # A failing event is kept, and says why.
    failure = {next(iter(s.values()))["field"] for s in PIPELINE["on_failure"]}
    assert {"error.message", "@timestamp"} <= failure
    # Every field the pipeline writes is mapped by the template.
    mapped = TEMPLATE["template"]["mappings"]["properties"]
    assert mapped["event"]["properties"]["ingested"] == {"type": "date"}
    assert mapped["error"]["properties"]["message"]["type"] == "text"


def test_bad_connection_settings_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "--url", "es.example.com:9200")
    assert code == 2
    assert "--url and ELASTICSEARCH_API_KEY" in err and "url: " in err

    monkeypatch.setenv("ELASTICSEARCH_API_KEY", API_KEY)
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", "admin")
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", PASSWORD)
    code, _, err = _run(capsys, "--url", "https://es.example.com:9200")
    assert code == 2
    assert "set either api_key or username/password, not both" in err

    code, _, err = _run(capsys)
    assert code == 2
    assert "give --url URL or --sink NAME (or --dry-run)" in err
