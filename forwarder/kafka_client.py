"""Kafka plumbing shared by the processes: the durable producer and explicit topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from forwarder.config import Config

log = logging.getLogger("forwarder.kafka")


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
    return names


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
    extra = extra or {}
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


class KafkaBodyProducer:
    """Idempotent, acks=all producer: `send` returns once the brokers have the record."""

    def __init__(self, config: Config, role: str) -> None:
        self._config = config
        self._role = role
        self._producer: AIOKafkaProducer | None = None
        self._ready_cache: tuple[float, bool] = (0.0, False)

    async def start(self) -> None:
        """Connect; creates the project's topics first if they are missing. Raises when unreachable."""
        await ensure_topics(self._config, timeout=self._config.kafka.request_timeout_seconds)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._config.kafka.bootstrap_servers,
            client_id=f"{self._config.kafka.client_id}-{self._role}",
            enable_idempotence=self._config.kafka.idempotent_producer,
            acks="all",
            linger_ms=2,
            request_timeout_ms=int(self._config.kafka.request_timeout_seconds * 1000),
        )
        try:
            await self._producer.start()
        except Exception:
            await self._producer.stop()
            self._producer = None
            raise

    async def stop(self) -> None:
        """Flush what is in flight and disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        """Produce one record and wait for its acknowledgement."""
        if self._producer is None:
            raise RuntimeError("producer not started")
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
