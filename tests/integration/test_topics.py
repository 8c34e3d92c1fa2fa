"""The project's topics on the real broker: created with their settings, usable on return."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import CollectorRegistry

from forwarder.config import parse
from forwarder.kafka_client import admin_client, ensure_topics, project_topics
from forwarder.pipeline.app import changelog_topics, create_app
from tests.integration.conftest import stack_config

pytestmark = pytest.mark.integration


async def test_topics_have_a_leader_for_every_partition_when_ensure_topics_returns(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tree = stack_config(tmp_path, kafka_bootstrap, "token")
    tree["topics"]["partitions"] = 6
    tree["dedupe"] = {"mode": "window"}
    config = parse(tree)
    changelogs = changelog_topics(create_app(config, CollectorRegistry()))
    app_id = config.worker.app_id
    # The worker's tables' changelogs, compacted as Faust would create them.
    assert changelogs == {
        f"{app_id}-dedupe-changelog": {"cleanup.policy": "compact"},
        f"{app_id}-held-changelog": {"cleanup.policy": "compact"},
    }

    created = await ensure_topics(config, extra=changelogs)

    assert sorted(created) == sorted([*project_topics(config), *changelogs])
    # A consumer group that rebalances right now must see every partition, and a table write
    # must find its changelog's partitions: a topic missing from the metadata at that moment
    # is left unassigned, or fails the write with PartitionsMismatch.
    admin = admin_client(config, "test")
    await admin.start()
    try:
        described = {topic["topic"]: topic for topic in await admin.describe_topics(created)}
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in changelogs]
        answers = await admin.describe_configs(resources)
    finally:
        await admin.close()
    for name in created:
        topic = described[name]
        assert topic["error_code"] == 0, name
        assert sorted(part["partition"] for part in topic["partitions"]) == list(range(6)), name
        assert all(part["leader"] >= 0 for part in topic["partitions"]), name
    policies = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}["cleanup.policy"]
        for answer in answers
        for resource in answer.resources
    }
    assert policies == dict.fromkeys(changelogs, "compact")
    # A second call finds them and creates nothing.
    assert await ensure_topics(config, extra=changelogs) == []


def test_the_worker_refreshes_metadata_as_configured(tmp_path: Path) -> None:
    tree = stack_config(tmp_path, "127.0.0.1:9", "token")
    tree["kafka"]["metadata_max_age_seconds"] = 7
    app = create_app(parse(tree), CollectorRegistry())
    assert app.conf.consumer_metadata_max_age_ms == 7000


def test_topics_create_makes_the_worker_changelogs_too(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tree = stack_config(tmp_path, kafka_bootstrap, "token")
    config = parse(tree)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
    command = [sys.executable, "-m", "forwarder", "topics", "create", "--config", str(path)]

    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    assert first.returncode == 0, first.stderr
    changelog = f"{config.worker.app_id}-dedupe-changelog"
    assert f"{changelog}: created" in first.stdout.splitlines()
    assert f"{config.topics.raw}: created" in first.stdout.splitlines()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert f"{changelog}: exists" in again.stdout.splitlines()


def test_the_apps_need_no_leader_topic(tmp_path: Path) -> None:
    # Every topic a worker uses exists before Faust starts; a leader topic would not.
    config = parse(stack_config(tmp_path, "127.0.0.1:9", "token"))
    assert create_app(config, CollectorRegistry()).conf.topic_disable_leader
