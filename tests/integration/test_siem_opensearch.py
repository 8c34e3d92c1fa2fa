"""`aha-siem siem setup elasticsearch` against a real OpenSearch node: the shipped pipeline and
template are taken (twice), the sink's events go through the pipeline by the template's
`index.default_pipeline` and gain `event.ingested`, and an event the pipeline fails on is kept
with `error.message` instead of being refused.

Needs no Kafka; the node comes from the `opensearch_url` fixture (skipped only without a JDK).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from forwarder.cli import main
from forwarder.formats import encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.siem.elasticsearch import INDEX_TEMPLATE, INGEST_PIPELINE
from forwarder.sinks.base import Outcome, deliver
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig
from forwarder.sinks.elasticsearch.sink import ElasticsearchSink
from forwarder.sinks.ids import event_key
from tests.event_bodies import normalized_events

pytestmark = pytest.mark.integration

NAME = "aha-audit-siem-test"
# The shipped template under a pattern of its own: other tests of the session leave templates
# for logs-aha.audit-* (one in use by a data stream cannot be deleted), and two templates of the
# same priority may not share a pattern.
PATTERN = "logs-aha.siemtest-*"
RETRY = RetryConfig(initial_backoff_seconds=0.05, max_backoff_seconds=0.2, max_attempts=3)


@pytest.fixture
def cluster(opensearch_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=opensearch_url, timeout=60) as client:
        yield client
        client.delete(f"/_data_stream/{PATTERN}")
        client.delete(f"/_index_template/{NAME}")
        client.delete(f"/_ingest/pipeline/{NAME}")


@pytest.fixture
def template(tmp_path: Path) -> Path:
    body = json.loads(INDEX_TEMPLATE.read_text()) | {"index_patterns": [PATTERN]}
    path = tmp_path / "index-template.json"
    path.write_text(json.dumps(body))
    return path


def _setup(url: str, template: Path, capsys: pytest.CaptureFixture[str]) -> str:
    names = ["--template-name", NAME, "--pipeline-name", NAME, "--template", str(template)]
    code = main(["siem", "setup", "elasticsearch", "--url", url, *names])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    return out


def _send(url: str, index: str, docs: list[dict[str, Any]]) -> Outcome:
    config = ElasticsearchSinkConfig.model_validate(
        {"type": "elasticsearch", "name": "opensearch", "url": url, "index": index}
    )
    sink = ElasticsearchSink(config)
    encode = encoder_for("ecs")
    events = [sink.prepare(doc, encode(doc)) for doc in docs]

    async def run() -> Outcome:
        await sink.start()
        try:
            return await deliver(sink, events, SinkMetrics(CollectorRegistry()), RETRY)
        finally:
            await sink.close()

    return asyncio.run(run())


def _sources(cluster: httpx.Client, stream: str) -> dict[str, dict[str, Any]]:
    cluster.post(f"/{stream}/_refresh").raise_for_status()
    found = cluster.post(f"/{stream}/_search", json={"size": 200})
    found.raise_for_status()
    return {hit["_id"]: hit["_source"] for hit in found.json()["hits"]["hits"]}


def test_the_setup_lands_and_the_sinks_events_go_through_the_pipeline(
    opensearch_url: str,
    cluster: httpx.Client,
    template: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _setup(opensearch_url, template, capsys)
    assert f"PUT /_ingest/pipeline/{NAME}: 200" in out
    assert f"PUT /_index_template/{NAME}: 200" in out
    # Again: the same resources, replaced.
    _setup(opensearch_url, template, capsys)
    stored = cluster.get(f"/_ingest/pipeline/{NAME}").json()[NAME]
    assert stored["processors"] == json.loads(INGEST_PIPELINE.read_text())["processors"]

    stream = f"logs-aha.siemtest-{uuid.uuid4().hex[:8]}"
    events = normalized_events()
    docs = [events[name] for name in sorted(events) if name.startswith("forwarder/samples/")]
    outcome = _send(opensearch_url, stream, docs)

    assert outcome.rejected == {}
    info = cluster.get(f"/_data_stream/{stream}").json()
    assert info["data_streams"][0]["template"] == NAME
    sources = _sources(cluster, stream)
    assert set(sources) == {event_key(doc) for doc in docs}
    for doc in docs:
        source = sources[event_key(doc)]
        assert datetime.fromisoformat(source["event"]["ingested"])
        # The audit's own time is kept, in the same ISO-8601 UTC form.
        assert source["@timestamp"] == doc["@timestamp"]
        assert "error" not in source
    # event.ingested is mapped as a date: a range query finds every event.
    ranged = cluster.post(
        f"/{stream}/_count", json={"query": {"range": {"event.ingested": {"gte": "now-1h"}}}}
    )
    assert ranged.json()["count"] == len(sources)


def test_an_event_the_pipeline_fails_on_is_kept_with_the_reason(
    opensearch_url: str,
    cluster: httpx.Client,
    template: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _setup(opensearch_url, template, capsys)
    stream = f"logs-aha.siemtest-{uuid.uuid4().hex[:8]}"
    events = normalized_events()
    good = events["forwarder/samples/feature_create.json"]
    broken = json.loads(json.dumps(good)) | {"@timestamp": "yesterday at noon"}
    broken["event"]["id"] = "broken-timestamp"

    outcome = _send(opensearch_url, stream, [broken, good])

    assert outcome.rejected == {}
    assert sorted(outcome.delivered) == [0, 1]
    sources = _sources(cluster, stream)
    kept = sources[event_key(broken)]
    assert kept["event"]["kind"] == "pipeline_error"
    assert kept["error"]["message"].startswith("aha_timestamp: ")
    assert "yesterday at noon" in kept["error"]["message"]
    assert datetime.fromisoformat(kept["@timestamp"].replace("Z", "+00:00"))
    assert kept["message"] == good["message"]
    assert sources[event_key(good)]["event"]["kind"] == "event"
    # Searchable by the reason.
    found = cluster.post(
        f"/{stream}/_count", json={"query": {"match": {"error.message": "yesterday"}}}
    )
    assert found.json()["count"] == 1
