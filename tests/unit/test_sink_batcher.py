"""A sink's batch: limits, and acks kept in offset order."""

from __future__ import annotations

from typing import Any

from forwarder.sinks.loop import Batcher, Item


def item(size: int, ack: Any = None) -> Item:
    return Item(None, b"{}", b"x" * size, ack=ack)


def test_events_with_nothing_to_send_are_acked_after_the_batch_before_them() -> None:
    batch = Batcher(max_events=10, max_bytes=10_000, max_seconds=1.0)
    events: list[Any] = ["offset-5", "offset-6 (filtered)", "offset-7", "offset-8 (dlq)"]
    batch.add(item(10, events[0]))
    assert batch.waiting()
    batch.carry(events[1])
    batch.add(item(10, events[2]))
    batch.carry(events[3])
    items, acks = batch.take()
    assert len(items) == 2
    assert acks == events  # offset order: never 6 before 5
    assert not batch.waiting()


def test_count_bytes_and_a_lone_oversized_item() -> None:
    batch = Batcher(max_events=3, max_bytes=100, max_seconds=1.0)
    assert batch.fits(item(500))  # alone, anything fits: it is sent by itself
    batch.add(item(60, "a"))
    assert not batch.fits(item(50)) and batch.fits(item(40))
    batch.add(item(40, "b"))
    assert batch.full()  # 100 bytes
    batch.take()
    for name in "cde":
        batch.add(item(1, name))
    assert batch.full()  # 3 events


def test_events_with_nothing_to_send_alone_are_acked_when_the_batch_is_due() -> None:
    batch = Batcher(max_events=10, max_bytes=10_000, max_seconds=0.0)
    batch.carry("offset-9 (filtered)")
    assert batch.waiting() and batch.due()
    items, acks = batch.take()
    assert items == [] and acks == ["offset-9 (filtered)"]
