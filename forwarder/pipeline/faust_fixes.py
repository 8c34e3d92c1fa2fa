"""A fix to faust-streaming's consumer that at-least-once delivery depends on.

After a rebalance, a stream skips the messages it fetched in the previous consumer group
generation and *acks* them (faust/streams.py, "Skipping message ... with generation_id"), so
that lag does not grow. The ack lets this process commit offsets it never processed: for a
partition that moved to another worker it commits past that worker's position, and for one it
kept it may commit before the re-fetched copies are processed. A second rebalance or a crash
then seeks past messages nobody processed: they are lost (seen in the rebalance tests).

Refusing acks for messages of an earlier generation makes the partition's current owner read
them again from the last committed offset: a duplicate at worst, which at-least-once allows.
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer

_PATCHED = "_aha_siem_generation_checked"


def refuse_stale_acks() -> None:
    """Patch `Consumer.ack` to ignore messages fetched in an earlier generation (idempotent)."""
    if getattr(Consumer.ack, _PATCHED, False):
        return
    original = Consumer.ack

    def ack(self: Consumer, message: Any) -> bool:
        fetched_in = getattr(message, "generation_id", None)
        current = self.app.consumer_generation_id
        if fetched_in is not None and current is not None and fetched_in != current:
            return False
        return bool(original(self, message))

    setattr(ack, _PATCHED, True)
    ack.__doc__ = original.__doc__
    Consumer.ack = ack  # type: ignore[method-assign]
