"""The project's topics on the real broker: created with their settings, usable on return."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from forwarder.config import parse
from forwarder.kafka_client import admin_client, ensure_topics, project_topics
from forwarder.pipeline.app import create_app
from tests.integration.conftest import stack_config

pytestmark = pytest.mark.integration


async def test_topics_have_a_leader_for_every_partition_when_ensure_topics_returns(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tree = stack_config(tmp_path, kafka_bootstrap, "token")
    tree["topics"]["partitions"] = 6
    config = parse(tree)

    created = await ensure_topics(config)

    assert sorted(created) == sorted(project_topics(config))
    # A consumer group that rebalances right now must see every partition: a topic missing
    # from the metadata at that moment would stay unassigned until the next refresh.
    admin = admin_client(config, "test")
    await admin.start()
    try:
        described = {topic["topic"]: topic for topic in await admin.describe_topics(created)}
    finally:
        await admin.close()
    for name in created:
        topic = described[name]
        assert topic["error_code"] == 0, name
        assert sorted(part["partition"] for part in topic["partitions"]) == list(range(6)), name
        assert all(part["leader"] >= 0 for part in topic["partitions"]), name
    # A second call finds them and creates nothing.
    assert await ensure_topics(config) == []


def test_the_worker_refreshes_metadata_as_configured(tmp_path: Path) -> None:
    tree = stack_config(tmp_path, "127.0.0.1:9", "token")
    tree["kafka"]["metadata_max_age_seconds"] = 7
    app = create_app(parse(tree), CollectorRegistry())
    assert app.conf.consumer_metadata_max_age_ms == 7000
