"""The Lucene queries of the Sigma rules on a real OpenSearch, in a data stream of the project's
index template, fed by the real Elasticsearch sink with the rules' example events: each rule finds
its positive examples and none of its negative ones, as the SIEM would run it.

Needs no Kafka; the node comes from the `opensearch_url` fixture (skipped only without a JDK).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

pytest.importorskip("sigma", reason="pySigma comes with the dev extra")

from forwarder.detections.export import convert_one
from forwarder.formats import encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import deliver
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig
from forwarder.sinks.elasticsearch.sink import ElasticsearchSink
from forwarder.sinks.ids import event_key
from tests.event_bodies import INDEX_TEMPLATE
from tests.unit.test_detections import CORRELATIONS, RULES, _bodies, _examples, _normalize

pytestmark = pytest.mark.integration

RETRY = RetryConfig(initial_backoff_seconds=0.05, max_backoff_seconds=0.2, max_attempts=3)
TEMPLATE_NAME = "aha-audit-detections-test"
PLAIN_RULES = sorted(name for name in RULES if name not in CORRELATIONS)


def _examples_by_kind() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Rule name -> positive/negative -> normalized events."""
    return {
        name: {
            kind: [_normalize(body) for path in _examples(name, kind) for body in _bodies(path)]
            for kind in ("positive", "negative")
        }
        for name in PLAIN_RULES
    }


@pytest.fixture(scope="module")
async def stream(opensearch_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A fresh data stream of the template holding every example event of every plain rule."""
    async with httpx.AsyncClient(base_url=opensearch_url, timeout=60) as cluster:
        body = json.loads(INDEX_TEMPLATE.read_text())
        # Its own pattern, above the shipped template's priority: another module's copy of the
        # shipped template (same patterns, same priority) may still be installed on the node,
        # held there by its data streams, and two of them would be refused.
        body["index_patterns"] = ["logs-aha.audit-detections*"]
        body["priority"] = body.get("priority", 200) + 50
        answer = await cluster.put(f"/_index_template/{TEMPLATE_NAME}", json=body)
        assert answer.status_code == 200, answer.text
        name = f"logs-aha.audit-detections{uuid.uuid4().hex[:10]}"
        docs = [
            event
            for kinds in _examples_by_kind().values()
            for events in kinds.values()
            for event in events
        ]
        config = ElasticsearchSinkConfig.model_validate(
            {"type": "elasticsearch", "name": "opensearch", "url": opensearch_url, "index": name}
        )
        sink = ElasticsearchSink(config)
        encode = encoder_for("ecs")
        await sink.start()
        try:
            outcome = await deliver(
                sink,
                [sink.prepare(doc, encode(doc)) for doc in docs],
                SinkMetrics(CollectorRegistry()),
                RETRY,
            )
        finally:
            await sink.close()
        assert outcome.rejected == {}
        (await cluster.post(f"/{name}/_refresh")).raise_for_status()
        try:
            yield cluster, name
        finally:
            await cluster.delete(f"/_data_stream/{name}")
            await cluster.delete(f"/_index_template/{TEMPLATE_NAME}")


@pytest.mark.parametrize("name", PLAIN_RULES)
async def test_lucene_query_finds_the_positive_examples_only(
    stream: tuple[httpx.AsyncClient, str], name: str
) -> None:
    cluster, index = stream
    (query,) = convert_one(RULES[name], "elasticsearch-lucene").queries
    answer = await cluster.post(
        f"/{index}/_search",
        json={"size": 1000, "query": {"query_string": {"query": query}}},
    )
    answer.raise_for_status()
    found = {hit["_id"] for hit in answer.json()["hits"]["hits"]}
    examples = _examples_by_kind()[name]
    assert found >= {event_key(event) for event in examples["positive"]}, query
    assert not found & {event_key(event) for event in examples["negative"]}, query
