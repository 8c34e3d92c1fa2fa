"""The normalize worker's timers: they find idle records and passed windows and send ticks.

Faust timers cannot write tables (a write needs an event to pick the changelog partition), so
they send a tick to the ticks topic, co-partitioned with the raw topic, and the agent hands it
to the processor in order with the record's audits (forwarder/core/processor.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from forwarder.core.dedupe import decode_state
from forwarder.core.processor import (
    TICK_EXPIRE,
    TICK_FLUSH,
    TICK_FLUSH_NOW,
    IndexEntry,
    Processor,
    flush_ticks,
)
from forwarder.metrics import WorkerMetrics

log = logging.getLogger("forwarder.worker")


class Ticker:
    """The sweep of idle state, the check of held windows, and the flush at a graceful stop."""

    def __init__(
        self,
        processor: Processor,
        table: Any,
        held: Any | None,
        ticks_topic: faust.TopicT,
        metrics: WorkerMetrics,
        *,
        sweep_every: float,
        check_every: float,
    ) -> None:
        self.processor = processor
        self.table = table
        self.held = held
        self.topic = ticks_topic
        self.metrics = metrics
        self.sweep_every = sweep_every
        self.check_every = check_every
        self._sent: dict[bytes, float] = {}  # key + kind -> when it was ticked

    def _recently(self, key: bytes, kind: bytes, now: float, every: float) -> bool:
        # One tick per key and purpose until the agent had time to act on it.
        if self._sent.get(key + kind, 0.0) >= now - max(5 * every, 5.0):
            return True
        self._sent[key + kind] = now
        return False

    async def sweep(self) -> None:
        """Tick every record whose state has been idle past the retention (it is then dropped)."""
        now = time.time()
        count = 0
        for key, raw in list(self.table.items()):
            count += 1
            state = decode_state(raw)
            if state is None or not self.processor.expired(state, now):
                continue
            if not self._recently(key, TICK_EXPIRE, now, self.sweep_every):
                await self.topic.send(key=key, value=TICK_EXPIRE)
        self.metrics.dedupe_records.set(count)
        for sent in [k for k, at in self._sent.items() if at < now - 3600]:
            del self._sent[sent]

    async def flush_due(self) -> None:
        """Tick, per partition, the records whose window has passed."""
        assert self.held is not None
        now = time.time()
        groups = audits = 0
        due: dict[int, list[bytes]] = {}
        for key, raw in list(self.held.items()):
            entry = IndexEntry.decode(raw)
            groups += 1
            audits += entry.audits
            if not self.processor.due(entry, now):
                continue
            if self._recently(key, TICK_FLUSH, now, self.check_every):
                continue  # ticked a moment ago; the agent has not got to it yet
            due.setdefault(entry.partition, []).append(key)
        await self._send(due, TICK_FLUSH)
        self.metrics.dedupe_held_groups.set(groups)
        self.metrics.dedupe_held_audits.set(audits)

    async def flush_all(self, timeout: float) -> int:
        """Ship every held group of this worker now (a graceful stop); how many are left.

        The groups go through the agent as ticks, so shipping and clearing the table happen
        together as for a passed window. Whatever is not shipped before `timeout` stays in the
        changelog table for the partitions' next owner.
        """
        assert self.held is not None
        deadline = time.monotonic() + timeout
        due: dict[int, list[bytes]] = {}
        for key, raw in list(self.held.items()):
            due.setdefault(IndexEntry.decode(raw).partition, []).append(key)
        waiting = {key for keys in due.values() for key in keys}
        if not waiting:
            return 0
        log.info("shipping held windows before stopping", extra={"groups": len(waiting)})
        await self._send(due, TICK_FLUSH_NOW)
        while waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            waiting = {key for key in waiting if key in self.held}
        if waiting:
            log.warning(
                "held windows left for the next owner",
                extra={"groups": len(waiting), "timeout_seconds": timeout},
            )
        return len(waiting)

    async def _send(self, due: dict[int, list[bytes]], kind: bytes) -> None:
        for key, value, partition in flush_ticks(due, kind):
            await self.topic.send(key=key, value=value, partition=partition)
