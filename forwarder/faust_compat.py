"""Every use of a private name of faust-streaming, each with the upstream behaviour it corrects.

tests/unit/test_faust_compat.py fails when faust changes under these names (they are checked
against faust-streaming 0.15.x). mode's private names live in forwarder/mode_compat.py.

Consumer fixes that at-least-once delivery depends on. Faust commits, per partition, the end of
the first run of consecutive acked offsets. Four of its behaviours let it commit past a message
nobody processed (seen as lost records in the rebalance and SIGKILL tests,
docs/decisions/0007-stale-generation-acks.md):

1. After a rebalance a stream skips the messages it fetched in the previous consumer group
   generation and *acks* them, so that lag does not grow.
2. Its check for a missing offset right after the committed one (`min(acked) - committed > 1`)
   lets exactly one missing offset through.
3. When the fetcher sees offsets jump it records a "gap" and treats the missing offsets as
   acked; on the project's topics (not compacted, not transactional) offsets never jump, so a
   jump means a message was dropped on the way to the streams.
4. A partition without a committed offset (a new group, or offset 0) is kept as `None`, and
   then nothing is checked before committing it.

The patches: acks of earlier-generation messages are refused (the partition's current owner
reads them again); a partition is committed only from its committed offset on, without holes,
and a partition with none starts from its earliest offset; gaps are not recorded. A message
dropped on the way to the streams then holds its partition's commits back instead of being
skipped, and `reread_holes` (run by a timer in every app) seeks such a partition back to its
committed offset so the message is read again: a few duplicates, never a loss.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

import faust
from faust.streams import _current_event
from faust.transport.consumer import Consumer
from faust.types import EventT

log = logging.getLogger("forwarder.faust")

_PATCHED = "_aha_siem_patched"


def _has_hole(acked: Any, committed: int | None) -> bool:
    """Later offsets are acked while the message at the committed offset is not."""
    return bool(acked) and committed is not None and min(acked) > committed


def refuse_stale_acks() -> None:
    """Install the consumer patches (idempotent)."""
    if getattr(Consumer.ack, _PATCHED, False):
        return
    original_ack = Consumer.ack
    original_new_offset = Consumer._new_offset
    original_perform_seek = Consumer.perform_seek

    def ack(self: Consumer, message: Any) -> bool:
        fetched_in = getattr(message, "generation_id", None)
        current = self.app.consumer_generation_id
        if fetched_in is not None and current is not None and fetched_in != current:
            return False
        return bool(original_ack(self, message))

    def _new_offset(self: Consumer, tp: Any) -> int | None:
        if _has_hole(self._acked[tp], self._committed_offset[tp]):
            return None  # the message at the committed offset is not processed yet
        result: int | None = original_new_offset(self, tp)
        return result

    async def _add_gap(self: Consumer, tp: Any, offset_from: int, offset_to: int) -> None:
        log.warning(
            "offsets skipped on the way to the streams; not treating them as processed",
            extra={
                "topic": tp.topic,
                "partition": tp.partition,
                "from": offset_from,
                "to": offset_to,
            },
        )

    async def perform_seek(self: Consumer) -> None:
        # Faust keeps "no committed offset" (a new group, or offset 0) as None, and then checks
        # nothing before committing: a partition would be committed from whatever was acked
        # first. Reading starts at the earliest offset then (auto_offset_reset=earliest), so
        # that is where the partition stands.
        await original_perform_seek(self)
        acking = self.app.topics.acks_enabled_for
        unknown = [
            tp
            for tp in self.assignment()
            if self._committed_offset.get(tp) is None and acking(tp.topic)
        ]
        if unknown:
            earliest = await self.earliest_offsets(*unknown)
            for tp in unknown:
                if self._committed_offset.get(tp) is None and tp in earliest:
                    self._committed_offset[tp] = int(earliest[tp])

    for function in (ack, _new_offset, _add_gap, perform_seek):
        setattr(function, _PATCHED, True)
    Consumer.ack = ack  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]


class HoleWatch:
    """Finds partitions whose commits wait for a message that is not coming, and re-reads them.

    A partition "has a hole" when later offsets are acked but the one at its committed offset
    is not. If that lasts `patience` seconds the message was dropped before reaching the
    streams: seeking to the committed offset reads it (and what follows) again.
    """

    def __init__(self, patience: float = 15.0) -> None:
        self.patience = patience
        self._since: dict[Any, tuple[int, float]] = {}

    async def check(self, consumer: Any, now: float | None = None) -> list[Any]:
        """Seek back every partition with a lasting hole; return them."""
        now = time.monotonic() if now is None else now
        reread = []
        try:
            assigned = set(consumer.assignment())
        except Exception:  # not started or stopping: nothing to check
            return []
        for tp in assigned:
            committed = consumer._committed_offset.get(tp)
            if not _has_hole(consumer._acked.get(tp), committed):
                self._since.pop(tp, None)
                continue
            first, since = self._since.get(tp, (committed, now))
            if first != committed:
                first, since = committed, now
            self._since[tp] = (first, since)
            if now - since < self.patience:
                continue
            log.warning(
                "a message was not processed; reading the partition again from it",
                extra={"topic": tp.topic, "partition": tp.partition, "offset": committed},
            )
            await consumer.seek(tp, committed)
            self._since.pop(tp, None)
            reread.append(tp)
        for tp in list(self._since):
            if tp not in assigned:
                del self._since[tp]
        return reread


class AgentErrorApp(faust.App):
    """Faust's app, also telling its monitor when an agent crashed.

    Faust passes its own private error callback (`App._on_agent_error`, which commits through
    the consumer's `on_task_error`) to every agent, so an agent's `on_error` cannot be set: the
    app's callback is extended instead, calling the monitor's `on_agent_error` when it has one.
    """

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        hook = getattr(self.monitor, "on_agent_error", None)
        if hook is not None:
            await hook(agent, exc)
        await super()._on_agent_error(agent, exc)


def use_partition_of(event: EventT) -> None:
    """Make `event` the one Faust's table reads and writes use to pick their partition.

    Tables find a key's partition (RocksDB instance and changelog partition) through the private
    current-event context variable `faust.streams._current_event`; inside a `take_events` batch
    it names the batch's last event, so a batch of several keys would write every key into the
    last event's partition. Only the context variable is set, in this task's own context: the
    stream's `current_event` attribute belongs to the task that fills the batch, and changing it
    would put the wrong event into the batch.
    """
    _current_event.set(weakref.ref(event))
