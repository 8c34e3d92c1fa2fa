"""The consumer refuses acks of messages fetched in an earlier consumer group generation."""

from __future__ import annotations

import faust
from faust.types import TP
from faust.types.tuples import Message

from forwarder.pipeline.faust_fixes import refuse_stale_acks

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
