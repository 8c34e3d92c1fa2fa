"""The Elasticsearch / OpenSearch sink against a real OpenSearch node.

What a cluster really answers to the sink's `_bulk` `create` actions: documents created under
the event key, a resend answered 409 per item (delivered, nothing doubled), a mapping conflict
rejecting exactly the event that breaks it, and a data stream, which takes only `create`.
Faults a real node cannot be made to produce on cue (a 429 on one item, a 413 from a proxy,
credentials) stay with the fake in tests/unit/sinks/test_elasticsearch.py.

Needs no Kafka; the node comes from the `opensearch_url` fixture (skipped only without a JDK).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from forwarder.formats import encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import Outcome, deliver
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig
from forwarder.sinks.elasticsearch.sink import ElasticsearchSink
from forwarder.sinks.ids import event_key
from tests.helpers import SAMPLES, normalized_sample, sample_paths

pytestmark = pytest.mark.integration

# Bounded, so that a sink which keeps retrying fails the test instead of hanging it.
RETRY = RetryConfig(initial_backoff_seconds=0.05, max_backoff_seconds=0.2, max_attempts=3)


def all_samples() -> list[dict[str, Any]]:
    """Every sample body normalized: 14 distinct events, two revisions of one audit among them."""
    return [normalized_sample(path) for path in sample_paths()]


def sample(name: str) -> dict[str, Any]:
    return normalized_sample(SAMPLES / f"{name}.json")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sink_for(url: str, index: str, **options: Any) -> ElasticsearchSink:
    config = ElasticsearchSinkConfig.model_validate(
        {"type": "elasticsearch", "name": "opensearch", "url": url, "index": index} | options
    )
    return ElasticsearchSink(config)


def prepared(sink: ElasticsearchSink, docs: list[dict[str, Any]], fmt: str = "ecs") -> list[bytes]:
    encode = encoder_for(fmt)
    return [sink.prepare(doc, encode(doc)) for doc in docs]


async def send(sink: ElasticsearchSink, events: list[bytes]) -> Outcome:
    """The batch through the framework's `deliver`, as the sink app sends it."""
    return await deliver(sink, events, SinkMetrics(CollectorRegistry()), RETRY)


@pytest.fixture
async def cluster(opensearch_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client for looking at the node (refresh, count, search, templates)."""
    async with httpx.AsyncClient(base_url=opensearch_url, timeout=30) as client:
        yield client


async def stored(cluster: httpx.AsyncClient, index: str) -> dict[str, dict[str, Any]]:
    """Every document of `index` (data stream or index) by `_id`, after a refresh."""
    (await cluster.post(f"/{index}/_refresh")).raise_for_status()
    answer = await cluster.post(
        f"/{index}/_search", json={"size": 1000, "query": {"match_all": {}}}
    )
    answer.raise_for_status()
    hits = answer.json()["hits"]["hits"]
    found = {hit["_id"]: hit["_source"] for hit in hits}
    assert len(found) == len(hits), "two documents with one _id"
    return found


async def count(cluster: httpx.AsyncClient, index: str) -> int:
    (await cluster.post(f"/{index}/_refresh")).raise_for_status()
    answer = await cluster.get(f"/{index}/_count")
    answer.raise_for_status()
    return int(answer.json()["count"])


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
async def test_a_batch_is_created_under_the_event_keys_and_searchable(
    opensearch_url: str, cluster: httpx.AsyncClient, gzip: bool
) -> None:
    index = unique_name("aha-audit")
    docs = all_samples()
    sink = sink_for(opensearch_url, index, gzip=gzip)
    events = prepared(sink, docs)
    await sink.start()
    try:
        await sink.healthcheck()
        outcome = await send(sink, events)
    finally:
        await sink.close()

    assert outcome.rejected == {}
    assert sorted(outcome.delivered) == list(range(len(docs)))
    assert outcome.attempts == 1
    documents = await stored(cluster, index)
    assert set(documents) == {event_key(doc) for doc in docs}
    for doc in docs:
        # The source is the ECS event exactly as the encoder wrote it.
        assert documents[event_key(doc)] == orjson.loads(encoder_for("ecs")(doc))
    # Searchable by its fields, not only fetchable by id.
    feature = sample("feature_update_status")
    answer = await cluster.post(
        f"/{index}/_search",
        json={"query": {"term": {"event.id": feature["event"]["id"]}}},
    )
    answer.raise_for_status()
    assert [hit["_id"] for hit in answer.json()["hits"]["hits"]] == [event_key(feature)]
    answer = await cluster.post(
        f"/{index}/_search", json={"query": {"match": {"message": feature["message"]}}}
    )
    answer.raise_for_status()
    assert answer.json()["hits"]["hits"][0]["_id"] == event_key(feature)


async def test_a_resent_batch_is_answered_409_per_item_and_counts_as_delivered(
    opensearch_url: str, cluster: httpx.AsyncClient
) -> None:
    index = unique_name("aha-audit")
    docs = all_samples()
    sink = sink_for(opensearch_url, index)
    events = prepared(sink, docs)
    await sink.start()
    try:
        first = await send(sink, events)
        assert first.rejected == {}
        before = await count(cluster, index)
        assert before == len(docs)

        # What the node answers to the same actions again: every item a 409.
        raw = await cluster.post(
            "/_bulk",
            content=b"".join(events),
            headers={"Content-Type": "application/x-ndjson"},
        )
        raw.raise_for_status()
        answer = raw.json()
        assert answer["errors"] is True
        items = [item["create"] for item in answer["items"]]
        assert [item["status"] for item in items] == [409] * len(docs)
        assert {item["error"]["type"] for item in items} == {"version_conflict_engine_exception"}

        # The sink takes those 409s as delivered: nothing rejected, nothing sent twice.
        assert (await sink.send_batch(events)).delivered
        again = await send(sink, events)
    finally:
        await sink.close()

    assert again.rejected == {}
    assert sorted(again.delivered) == list(range(len(docs)))
    assert again.attempts == 1
    assert await count(cluster, index) == before
    # Not overwritten either: each document is still its first version.
    for doc in docs:
        got = await cluster.get(f"/{index}/_doc/{event_key(doc)}")
        got.raise_for_status()
        assert got.json()["_version"] == 1


async def test_a_mapping_conflict_rejects_exactly_the_event_that_breaks_it(
    opensearch_url: str, cluster: httpx.AsyncClient
) -> None:
    index = unique_name("aha-audit-strict")
    # The values of changed fields mapped as numbers: an event whose changes are text breaks it.
    mapping = {
        "mappings": {
            "properties": {
                "aha": {
                    "properties": {
                        "audit": {
                            "properties": {"changes": {"properties": {"value": {"type": "long"}}}}
                        }
                    }
                }
            }
        }
    }
    (await cluster.put(f"/{index}", json=mapping)).raise_for_status()
    docs = [
        sample("idea_endorsement_create"),  # no changes
        sample("feature_create"),  # changes with text values: rejected
        sample("release_destroy"),  # no changes
        sample("security_event_unknown_type"),  # no changes
    ]
    changes = [((doc.get("aha") or {}).get("audit") or {}).get("changes") for doc in docs]
    assert [bool(value) for value in changes] == [False, True, False, False]
    sink = sink_for(opensearch_url, index)
    events = prepared(sink, docs)
    await sink.start()
    try:
        outcome = await send(sink, events)
    finally:
        await sink.close()

    assert list(outcome.rejected) == [1]
    assert outcome.exhausted == set()
    reason = outcome.rejected[1]
    assert reason.startswith("HTTP 400 mapper_parsing_exception")
    assert "aha.audit.changes.value" in reason
    assert sorted(outcome.delivered) == [0, 2, 3]
    assert outcome.attempts == 1  # a rejection is not retried
    assert set(await stored(cluster, index)) == {event_key(docs[i]) for i in (0, 2, 3)}


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
async def test_events_land_in_a_data_stream(
    opensearch_url: str, cluster: httpx.AsyncClient, fmt: str
) -> None:
    stream = unique_name("logs-aha.audit")
    template = {"index_patterns": [f"{stream}*"], "data_stream": {}, "priority": 500}
    (await cluster.put(f"/_index_template/{stream}", json=template)).raise_for_status()
    docs = all_samples()
    sink = sink_for(opensearch_url, stream, format=fmt)
    events = prepared(sink, docs, fmt)
    await sink.start()
    try:
        outcome = await send(sink, events)
        again = await send(sink, events)  # 409s from the backing index, too
    finally:
        await sink.close()

    assert outcome.rejected == {} and again.rejected == {}
    assert sorted(outcome.delivered) == list(range(len(docs)))
    info = await cluster.get(f"/_data_stream/{stream}")
    info.raise_for_status()
    (data_stream,) = info.json()["data_streams"]
    assert data_stream["name"] == stream
    assert data_stream["indices"][0]["index_name"].startswith(f".ds-{stream}-")
    documents = await stored(cluster, stream)
    assert set(documents) == {event_key(doc) for doc in docs}
    for doc in docs:
        # OCSF has no @timestamp of its own: the sink puts the event's time in front.
        assert documents[event_key(doc)]["@timestamp"] == doc["@timestamp"]

    # Why the sink only ever sends `create`: a data stream refuses `index` actions.
    refused = await cluster.post(
        "/_bulk",
        content=b'{"index":{"_index":"' + stream.encode() + b'"}}\n'
        b'{"@timestamp":"2026-11-27T14:06:32.417Z"}\n',
        headers={"Content-Type": "application/x-ndjson"},
    )
    refused.raise_for_status()
    (item,) = refused.json()["items"]
    assert item["index"]["status"] == 400
    assert "op_type of create" in item["index"]["error"]["reason"]
