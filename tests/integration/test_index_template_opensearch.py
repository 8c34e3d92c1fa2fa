"""The repository's index template (siem/elasticsearch/index-template.json) on a real OpenSearch.

Every sample and hostile body, normalized and sent through the real Elasticsearch sink into a
fresh data stream the template makes, lands: no rejection. The same events shaped as before
(`aha.audit.changes[].value` with Aha!'s own types) are refused, with the template and without
it; and without the template even text values are refused once one looks like a date (dynamic
mapping's date detection): both the one-type contract and the template are needed.

Needs no Kafka; the node comes from the `opensearch_url` fixture (skipped only without a JDK).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from forwarder.formats import encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import Outcome, deliver
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig
from forwarder.sinks.elasticsearch.sink import ElasticsearchSink
from forwarder.sinks.ids import event_key
from tests.event_bodies import INDEX_TEMPLATE, annotated_events, normalized_events

pytestmark = pytest.mark.integration

RETRY = RetryConfig(initial_backoff_seconds=0.05, max_backoff_seconds=0.2, max_attempts=3)
TEMPLATE_NAME = "aha-audit-test"


def _events() -> dict[str, dict[str, Any]]:
    return normalized_events() | annotated_events()


def _as_before(event: dict[str, Any]) -> dict[str, Any]:
    """The event as schema version 1 had it: each change's value with Aha!'s own type."""
    old = copy.deepcopy(event)
    for change in ((old.get("aha") or {}).get("audit") or {}).get("changes") or []:
        if "value_raw" in change:
            change["value"] = change.pop("value_raw")
    return old


@pytest.fixture
async def cluster(opensearch_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=opensearch_url, timeout=60) as client:
        yield client


@pytest.fixture
async def template(cluster: httpx.AsyncClient) -> AsyncIterator[dict[str, Any]]:
    """The template installed as docs/sinks/elasticsearch.md says (`PUT _index_template/...`)."""
    body = json.loads(INDEX_TEMPLATE.read_text())
    answer = await cluster.put(f"/_index_template/{TEMPLATE_NAME}", json=body)
    assert answer.status_code == 200, answer.text
    yield body
    await cluster.delete(f"/_index_template/{TEMPLATE_NAME}")


def _stream() -> str:
    # Matches the template's `logs-aha.audit-*`, fresh for each test.
    return f"logs-aha.audit-test{uuid.uuid4().hex[:10]}"


async def _send(url: str, index: str, docs: list[dict[str, Any]]) -> Outcome:
    config = ElasticsearchSinkConfig.model_validate(
        {"type": "elasticsearch", "name": "opensearch", "url": url, "index": index}
    )
    sink = ElasticsearchSink(config)
    encode = encoder_for("ecs")
    events = [sink.prepare(doc, encode(doc)) for doc in docs]
    await sink.start()
    try:
        return await deliver(sink, events, SinkMetrics(CollectorRegistry()), RETRY)
    finally:
        await sink.close()


async def _search(cluster: httpx.AsyncClient, index: str, query: dict[str, Any]) -> set[str]:
    answer = await cluster.post(f"/{index}/_search", json={"size": 100, "query": query})
    answer.raise_for_status()
    return {hit["_id"] for hit in answer.json()["hits"]["hits"]}


async def test_every_sample_and_hostile_body_lands_in_a_data_stream_of_the_template(
    opensearch_url: str, cluster: httpx.AsyncClient, template: dict[str, Any]
) -> None:
    events = _events()
    names = sorted(events)
    # The body whose values once decided the field's type goes first.
    names.sort(key=lambda name: "requirement_estimate_integer" not in name)
    docs = [events[name] for name in names]
    stream = _stream()

    outcome = await _send(opensearch_url, stream, docs)

    rejected = {names[index]: reason for index, reason in outcome.rejected.items()}
    assert rejected == {}
    assert sorted(outcome.delivered) == list(range(len(docs)))
    info = await cluster.get(f"/_data_stream/{stream}")
    info.raise_for_status()
    (data_stream,) = info.json()["data_streams"]
    assert data_stream["template"] == TEMPLATE_NAME
    (await cluster.post(f"/{stream}/_refresh")).raise_for_status()
    counted = await cluster.get(f"/{stream}/_count")
    assert counted.json()["count"] == len({event_key(doc) for doc in docs})

    # The mapping is the template's, not one guessed from the first event.
    mapping = (await cluster.get(f"/{stream}/_mapping/field/aha.audit.changes.value")).json()
    (backing,) = mapping.values()
    field = backing["mappings"]["aha.audit.changes.value"]["mapping"]["value"]
    assert field["type"] == "text"

    # Searchable by a change's value as text, whatever type Aha! gave it.
    by_name = {name: event_key(events[name]) for name in names}
    every_type = by_name["tests/data/hostile/types/change_values_of_every_type.json"]
    estimate = by_name["forwarder/samples/requirement_estimate_integer.json"]
    match = {"match": {"aha.audit.changes.value": "5"}}
    assert {estimate, every_type} <= await _search(cluster, stream, match)
    match = {"match": {"aha.audit.changes.value": "EMEA"}}  # inside an object value
    assert await _search(cluster, stream, match) == {every_type}
    term = {"term": {"aha.audit.changes.value.keyword": "2027-01-15"}}
    assert {estimate, every_type} <= await _search(cluster, stream, term)
    # An id Aha! sent as a number is found as the keyword it became.
    numeric = by_name["tests/data/hostile/types/ids_as_numbers.json"]
    term = {"term": {"aha.audit.auditable.id": "7712852070702501002"}}
    assert await _search(cluster, stream, term) == {numeric}
    # The typed original is kept in _source, not indexed.
    found = await cluster.post(
        f"/{stream}/_search", json={"query": {"ids": {"values": [every_type]}}}
    )
    source = found.json()["hits"]["hits"][0]["_source"]
    raws = [c.get("value_raw") for c in source["aha"]["audit"]["changes"]]
    assert {"Region": "EMEA", "Seats": 40, "Tags": ["a", "b"], "Owner": None} in raws


async def test_the_old_typed_value_is_refused_and_so_is_any_value_without_the_template(
    opensearch_url: str, cluster: httpx.AsyncClient, template: dict[str, Any]
) -> None:
    events = _events()
    estimate = events["forwarder/samples/requirement_estimate_integer.json"]

    # Without the template (a plain index, dynamically mapped): the sample alone is refused,
    # its first value deciding the field's type for the second.
    plain = f"aha-audit-plain-{uuid.uuid4().hex[:10]}"
    alone = await _send(opensearch_url, plain, [_as_before(estimate)])
    assert list(alone.rejected) == [0]
    # "mapper [aha.audit.changes.value] cannot be changed from type [date] to [long]"
    assert alone.rejected[0].startswith("HTTP 400 ")
    assert "[aha.audit.changes.value]" in alone.rejected[0]
    # Shaped as now it is refused there too: dynamic mapping's date detection makes
    # "2027-01-15" a date beside the text "5". Only an explicit mapping settles the type.
    plain = f"aha-audit-plain-{uuid.uuid4().hex[:10]}"
    now = await _send(opensearch_url, plain, [estimate])
    assert list(now.rejected) == [0]
    assert "[aha.audit.changes.value]" in now.rejected[0]
    # Through the template, both land.
    stream = _stream()
    assert (await _send(opensearch_url, stream, [estimate])).rejected == {}

    # With the template: a value that is an object cannot go into a text field.
    every_type = events["tests/data/hostile/types/change_values_of_every_type.json"]
    outcome = await _send(opensearch_url, _stream(), [_as_before(every_type), every_type])
    assert list(outcome.rejected) == [0]
    assert "mapper_parsing_exception" in outcome.rejected[0]
    assert sorted(outcome.delivered) == [1]
