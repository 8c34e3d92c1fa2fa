"""Kafka plumbing shared by the processes: the durable producer and explicit topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import ProducerClosed, TopicAlreadyExistsError

from forwarder.aiokafka_compat import abandon_producer
from forwarder.config import Config

log = logging.getLogger("forwarder.kafka")

LIMITS_REFRESH_SECONDS = 300.0


def broker_urls(bootstrap: str) -> list[str]:
    """Faust broker URLs for a Kafka bootstrap list."""
    return [f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()]


def admin_client(config: Config, role: str) -> AIOKafkaAdminClient:
    """An admin client of the configured cluster, named for what it is used for."""
    return AIOKafkaAdminClient(
        bootstrap_servers=config.kafka.bootstrap_servers,
        client_id=f"{config.kafka.client_id}-{role}",
        request_timeout_ms=int(config.kafka.request_timeout_seconds * 1000),
    )


def project_topics(config: Config) -> list[str]:
    """Every topic the project itself creates (Faust creates its own internal ones)."""
    topics = config.topics
    names = [topics.raw, topics.invalid, topics.events]
    names += [f"{topics.dlq_prefix}{sink.name}" for sink in config.sinks]
    if config.dedupe.mode != "off":
        names.append(ticks_topic_name(config))
    if config.detections.enabled:
        names += [config.detections.alerts_topic, matches_topic_name(config)]
    return names


def matches_topic_name(config: Config) -> str:
    """The detections' internal topic: events a correlation counts, keyed by rule and group."""
    return f"{config.worker.app_id}-detections-matches"


def ticks_topic_name(config: Config) -> str:
    """The worker's internal topic of ticks (window flushes, state expiry), co-partitioned with raw."""
    return f"{config.worker.app_id}-ticks"


async def ensure_topics(
    config: Config, timeout: float = 60.0, extra: Mapping[str, Mapping[str, str]] | None = None
) -> list[str]:
    """Create missing project topics with the configured partitions and replication factor.

    `extra` adds topics by name with their topic configs (the worker's changelog topics).
    Returns the names that were created, once every wanted topic has a leader for each
    partition. Retries while the cluster is still coming up.
    """
    # The project's topics take records as large as its producers send (bodies up to
    # ingest.max_body_bytes with their key and headers, events cut to fit).
    sized = {"max.message.bytes": str(config.kafka.max_request_bytes)}
    extra = {**{name: sized for name in project_topics(config)}, **(extra or {})}
    wanted = list(dict.fromkeys([*project_topics(config), *extra]))
    deadline = time.monotonic() + timeout
    while True:
        admin = admin_client(config, "admin")
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            if missing:
                new = [
                    NewTopic(
                        name,
                        num_partitions=config.topics.partitions,
                        replication_factor=config.topics.replication_factor,
                        topic_configs=dict(extra.get(name, {})),
                    )
                    for name in missing
                ]
                # Another process may create them between list and create.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(new)
                log.info("created topics", extra={"topics": missing})
            await _wait_for_leaders(admin, wanted, deadline)
            return missing
        except Exception as error:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for Kafka to create topics", extra={"error": repr(error)})
            await asyncio.sleep(1.0)
        finally:
            await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str], deadline: float) -> None:
    """Wait until the metadata lists every topic with a leader for each partition.

    A topic just created can be missing from the metadata for a few seconds; a consumer group
    that rebalances in that gap leaves the topic unassigned until its next metadata refresh.
    """
    while True:
        described = await admin.describe_topics(topics)
        pending = sorted(
            topic["topic"]
            for topic in described
            if topic["error_code"] != 0
            or not topic["partitions"]
            or any(part["leader"] < 0 for part in topic["partitions"])
        )
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader in the metadata: {', '.join(pending)}")
        await asyncio.sleep(0.2)


async def max_message_bytes(config: Config, topics: list[str]) -> dict[str, int]:
    """Each topic's max.message.bytes as the cluster reports it (topics it cannot tell: absent)."""
    admin = admin_client(config, "admin")
    try:
        await admin.start()
        wanted = {"max.message.bytes": None}
        answers = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, wanted) for topic in topics]
        )
    finally:
        await admin.close()
    limits: dict[str, int] = {}
    for answer in answers:
        for resource in answer.to_object()["resources"]:
            if resource["error_code"] != 0:
                continue
            for entry in resource["config_entries"]:
                if entry["config_names"] == "max.message.bytes" and entry["config_value"]:
                    limits[resource["resource_name"]] = int(entry["config_value"])
    return limits


class KafkaBodyProducer:
    """Idempotent, acks=all producer: `send` returns once the brokers have the record."""

    def __init__(self, config: Config, role: str) -> None:
        self._config = config
        self._role = role
        self._producer: AIOKafkaProducer | None = None
        self._ready_cache: tuple[float, bool] = (0.0, False)
        self._limits: dict[str, int] = {}
        self._limits_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect; creates the project's topics first if they are missing. Raises when unreachable."""
        config = self._config
        await ensure_topics(config, timeout=config.kafka.request_timeout_seconds)
        await self._learn_limits()
        if self._limits_task is None:
            self._limits_task = asyncio.create_task(self._keep_limits(), name="topic-limits")
        self._producer = AIOKafkaProducer(
            bootstrap_servers=config.kafka.bootstrap_servers,
            client_id=f"{config.kafka.client_id}-{self._role}",
            enable_idempotence=config.kafka.idempotent_producer,
            acks="all",
            linger_ms=2,
            max_request_size=config.kafka.max_request_bytes,
            request_timeout_ms=int(config.kafka.request_timeout_seconds * 1000),
        )
        try:
            await self._producer.start()
        except Exception:
            await self._producer.stop()
            self._producer = None
            raise

    def max_record_bytes(self, topic: str) -> int:
        """The largest record (as `records.record_bytes` counts it) `topic` takes from us."""
        limit = self._config.kafka.max_request_bytes
        return min(limit, self._limits.get(topic, limit))

    async def _learn_limits(self) -> bool:
        """Read the topics' max.message.bytes; whether every topic's limit is known.

        A topic created a moment ago can be unknown to the broker that answers (its metadata
        not yet propagated): that topic is asked again a moment later, as is a cluster that did
        not answer. Until then the producer's own limit applies, and a record the topic refuses
        after all is quarantined by the drain, never retried for ever.
        """
        topics = [self._config.topics.raw, self._config.topics.invalid]
        try:
            self._limits.update(await max_message_bytes(self._config, topics))
        except Exception as error:
            log.warning("topic limits unknown", extra={"error": type(error).__name__})
            return False
        return all(topic in self._limits for topic in topics)

    async def _keep_limits(self) -> None:
        """Ask again every second until each limit is known, then every five minutes.

        A limit changed on the cluster (`kafka-configs --alter`) is seen within five minutes.
        """
        known = all(
            t in self._limits for t in (self._config.topics.raw, self._config.topics.invalid)
        )
        while True:
            await asyncio.sleep(LIMITS_REFRESH_SECONDS if known else 1.0)
            known = await self._learn_limits()

    async def stop(self) -> None:
        """Flush what is in flight and disconnect."""
        if self._limits_task is not None:
            self._limits_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._limits_task
            self._limits_task = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def recreate(self) -> None:
        """Drop this client (its idempotence state: producer id, epoch, sequences) and connect anew.

        What the old client still holds fails instead of being flushed: the caller sends it
        again (the spool keeps its records until they are acknowledged).
        """
        old, self._producer = self._producer, None
        self._ready_cache = (0.0, False)
        if old is not None:
            try:
                await abandon_producer(old)
            except Exception as error:
                log.warning("old producer did not close cleanly", extra={"error": repr(error)})
        await self.start()

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        """Produce one record and wait for its acknowledgement."""
        if self._producer is None:
            # Not started, or being replaced: the drain replaces it again (client broken).
            raise ProducerClosed()
        await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)

    async def ready(self) -> bool:
        """Whether the cluster answered a metadata request in the last second."""
        checked_at, ready = self._ready_cache
        if time.monotonic() - checked_at < 1.0:
            return ready
        ready = False
        if self._producer is not None:
            try:
                ready = bool(
                    await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 2.0)
                )
            except Exception:
                ready = False
        self._ready_cache = (time.monotonic(), ready)
        return ready
