"""Fails when faust changes under the private names forwarder/faust_compat.py relies on; and what its consumer fixes do."""

from __future__ import annotations

import contextvars
import inspect
import weakref

import faust
import faust.streams
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import Message

from forwarder.faust_compat import AgentErrorApp, HoleWatch, refuse_stale_acks, use_partition_of

TOPIC = "aha.audit.raw"


def message(offset: int, generation: int) -> Message:
    return Message(
        TOPIC,
        0,
        offset,
        0.0,
        0,
        None,
        None,
        b"v",
        None,
        tp=TP(TOPIC, 0),
        generation_id=generation,
    )


async def test_a_message_of_an_earlier_generation_is_not_acked_so_it_is_not_committed() -> None:
    refuse_stale_acks()
    refuse_stale_acks()  # idempotent
    app = faust.App("faust-fixes-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer = app.consumer
    # As for a topic an agent consumes with acks on.
    app.topics._acking_topics.add(TOPIC)
    app.consumer_generation_id = 7
    tp = TP(TOPIC, 0)
    # Fetched before the rebalance (generation 6), skipped by the stream after it: not acked.
    assert consumer.ack(message(5, 6)) is False
    assert 5 not in consumer._acked[tp]
    # Fetched in the current generation: acked as before.
    assert consumer.ack(message(5, 7)) is True
    assert consumer._acked[tp] == [5]
    assert consumer._new_offset(tp) == 6


def test_a_partition_is_never_committed_past_an_offset_that_was_not_acked() -> None:
    refuse_stale_acks()
    app = faust.App("faust-fixes-holes", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer = app.consumer
    app.topics._acking_topics.add(TOPIC)
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 6  # offsets up to 5 are done; 6 is next
    # 7 is acked, 6 is not (dropped on its way to the streams): Faust alone would commit 8.
    assert consumer.ack(message(7, 0)) is True
    assert consumer._new_offset(tp) is None
    assert consumer.ack(message(6, 0)) is True
    assert consumer._new_offset(tp) == 8


async def test_offsets_skipped_by_the_fetcher_are_not_taken_as_processed() -> None:
    refuse_stale_acks()
    app = faust.App("faust-fixes-gaps", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer = app.consumer
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = 6
    await consumer._add_gap(tp, 6, 7)
    consumer._acked[tp].append(8)
    assert consumer._new_offset(tp) is None


class HeldBack:
    """A consumer whose partition 0 waits for offset 6 while 7 and 8 are acked."""

    def __init__(self) -> None:
        self.tp = TP(TOPIC, 0)
        self.other = TP(TOPIC, 1)
        self._acked = {self.tp: [7, 8], self.other: [3, 4]}
        self._committed_offset = {self.tp: 6, self.other: 3}
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return {self.tp, self.other}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


async def test_a_lasting_hole_is_read_again_from_the_committed_offset() -> None:
    consumer = HeldBack()
    watch = HoleWatch(patience=20.0)
    assert await watch.check(consumer, now=100.0) == []
    assert await watch.check(consumer, now=110.0) == []  # may still be on its way
    assert await watch.check(consumer, now=121.0) == [consumer.tp]
    assert consumer.seeks == [(consumer.tp, 6)]  # partition 1 has no hole: left alone
    # Once the offset is processed, nothing more happens.
    consumer._acked[consumer.tp] = [6, 7, 8]
    assert await watch.check(consumer, now=200.0) == []


class NewGroup:
    """What perform_seek needs of a consumer whose group never committed partition 0."""

    def __init__(self) -> None:
        from collections import defaultdict

        self.tp = TP(TOPIC, 0)
        self.changelog = TP("aha-siem-dedupe-changelog", 0)
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self.app = self
        self.topics = self

    def acks_enabled_for(self, topic: str) -> bool:
        return topic == TOPIC

    def assignment(self) -> set[TP]:
        return {self.tp, self.changelog}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return {self.tp: None, self.changelog: None}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 40)


async def test_a_partition_never_committed_is_checked_from_its_earliest_offset() -> None:
    refuse_stale_acks()
    consumer = NewGroup()
    await faust.transport.consumer.Consumer.perform_seek(consumer)  # type: ignore[arg-type]
    assert consumer._committed_offset[consumer.tp] == 40
    assert consumer._committed_offset[consumer.changelog] is None  # no acks on changelogs


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_private_consumer_names_patched_keep_their_signatures() -> None:
    # The originals are kept by the patches and called with these arguments.
    assert _parameters(Consumer.ack) == ["self", "message"]
    assert _parameters(Consumer._new_offset) == ["self", "tp"]
    assert _parameters(Consumer._add_gap) == ["self", "tp", "offset_from", "offset_to"]
    assert _parameters(Consumer.perform_seek) == ["self"]
    app = faust.App("faust-compat-names", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer = app.consumer
    assert hasattr(consumer, "_acked")
    assert hasattr(consumer, "_committed_offset")
    assert hasattr(consumer, "_gap")
    assert hasattr(app.topics, "acks_enabled_for")


def test_the_agent_error_callback_is_the_app_s_private_method() -> None:
    assert _parameters(faust.App._on_agent_error) == ["self", "agent", "exc"]
    assert AgentErrorApp._on_agent_error is not faust.App._on_agent_error


async def test_a_crashed_agent_is_reported_to_the_monitor() -> None:
    app = AgentErrorApp("faust-compat-agent-error", broker="kafka://127.0.0.1:1", web_enabled=False)
    seen: list[BaseException] = []

    class Monitor(faust.Sensor):
        async def on_agent_error(self, agent: object, exc: BaseException) -> None:
            seen.append(exc)

    app.monitor = Monitor()  # type: ignore[assignment]
    error = RuntimeError("boom")
    await app._on_agent_error(object(), error)
    assert seen == [error]


def test_tables_pick_their_partition_from_the_private_current_event_variable() -> None:
    assert isinstance(faust.streams._current_event, contextvars.ContextVar)

    class Event:
        pass

    event = Event()
    use_partition_of(event)  # type: ignore[arg-type]
    ref = faust.streams._current_event.get(None)
    assert isinstance(ref, weakref.ref) and ref() is event
    # What Faust's tables call to find the current event reads that same variable.
    assert faust.streams.current_event() is event
