"""One sink's delivery loop, Kafka-client agnostic: route, encode, batch, deliver, dead-letter, ack.

The sink app feeds it Faust events and replay feeds it records read from a DLQ; both deliver a
batch the same way (`ship`) and ack in offset order. An item's ack handle is opaque here: the
caller's `ack` function knows what it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from forwarder import records
from forwarder.config import Config, SinkConfig
from forwarder.formats import Encoder, encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import Sink, deliver

log = logging.getLogger("forwarder.sink")

AckT = TypeVar("AckT")

# Headers of the event that travel on into the DLQ, so a replay keeps its provenance.
_KEPT_HEADERS = (
    records.HEADER_RECEIVED_AT,
    records.HEADER_SOURCE,
    records.HEADER_TOKEN_ID,
    records.HEADER_REQUEST_ID,
)

HEADER_DESTINATION_REQUEST_ID = "destination-request-id"
"""DLQ header: the destination's id of the last request that carried the event (Sentinel's
x-ms-client-request-id), to look up in the destination's own logs."""


@dataclass
class Item:
    """One event on its way to a destination."""

    key: bytes | None
    value: bytes  # the normalized event, as it goes to the DLQ
    payload: bytes  # what send_batch gets
    headers: dict[str, str] = field(default_factory=dict)
    ack: Any = None  # what the caller acks once the event is delivered or dead-lettered


class Preparer:
    """Route, encode and prepare normalized events for one sink (pure; no Kafka)."""

    def __init__(self, sink: Sink, sink_config: SinkConfig, config: Config) -> None:
        self.sink = sink
        self.route = sink_config.route
        self.encode: Encoder | None = (
            None if sink_config.format == "ecs" else encoder_for(sink_config.format, config.formats)
        )

    def __call__(self, value: bytes) -> bytes | None:
        """The payload for `value`, or None when the route does not select it.

        Raises ValueError when the event cannot be decoded or encoded (it goes to the DLQ).
        """
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as error:
            raise ValueError(f"not a JSON event: {error}") from None
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if not self.route.matches(doc):
            return None
        try:
            payload = value if self.encode is None else self.encode(doc)
            return self.sink.prepare(doc, payload)
        except Exception as error:  # an encoder bug must not stop the sink
            raise ValueError(f"encode failed: {error!r}") from None


async def dead_letter(
    producer_send: Callable[..., Any],
    item: Item,
    error: str,
    attempts: int,
    first_failed_at: str,
    destination_request_id: str | None = None,
) -> None:
    """Produce one event to the DLQ and wait for Kafka's ack (before its source may be acked)."""
    headers = [
        (name, item.headers[name].encode()) for name in _KEPT_HEADERS if name in item.headers
    ]
    headers += [
        (records.HEADER_ERROR, error.encode()[:2000]),
        ("attempts", str(attempts).encode()),
        ("first-failed-at", first_failed_at.encode()),
    ]
    if destination_request_id:
        headers.append((HEADER_DESTINATION_REQUEST_ID, destination_request_id.encode()[:200]))
    delivery = await producer_send(key=item.key, value=item.value, headers=headers)
    await delivery


async def ship(
    sink: Sink,
    sink_config: SinkConfig,
    items: Sequence[Item],
    metrics: SinkMetrics,
    send_dlq: Callable[..., Any],
) -> tuple[int, int]:
    """Deliver a batch; dead-letter what the destination rejected. Returns (sent, dead-lettered).

    Never raises a delivery failure: Faust acks the events of an agent that raised.
    """
    if not items:
        return 0, 0
    first_try = records.utc_now_iso()
    payloads = [item.payload for item in items]
    metrics.batch_events.labels(sink.name).observe(len(payloads))
    metrics.batch_bytes.labels(sink.name).observe(sum(map(len, payloads)))
    outcome = await deliver(sink, payloads, metrics, sink_config.retry)
    if outcome.rejected:
        log.error(
            "sink rejected events, dead-lettering",
            extra={
                "sink": sink.name,
                "events": len(outcome.rejected),
                "error": next(iter(outcome.rejected.values())),
            },
        )
    for index, reason in sorted(outcome.rejected.items()):
        metrics.sink_dead_lettered.labels(sink.name, outcome.dead_letter_reason(index)).inc()
        await dead_letter(
            send_dlq,
            items[index],
            reason,
            outcome.attempts,
            first_try,
            outcome.request_ids.get(index),
        )
    now = time.time()
    latency = metrics.end_to_end.labels(sink.name)
    for index in outcome.delivered:
        received = records.received_epoch(items[index].headers)
        if received is not None:
            latency.observe(max(0.0, now - received))
    return len(outcome.delivered), len(outcome.rejected)


class Batcher:
    """Collects items until count, bytes or age says the batch is due."""

    def __init__(self, max_events: int, max_bytes: int, max_seconds: float) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.items: list[Item] = []
        self.acks: list[Any] = []
        self.size = 0
        self.opened = 0.0

    def fits(self, item: Item) -> bool:
        """Whether `item` can join without passing the byte limit (a lone item always fits)."""
        return not self.items or self.size + len(item.payload) <= self.max_bytes

    def carry(self, ack: Any) -> None:
        """An ack handle with nothing to send (filtered, or already in the DLQ), acked with the
        batch.

        Acks stay in offset order, so that a partition's commits never pass an event that is
        still on its way (docs/decisions/0007-stale-generation-acks.md).
        """
        if not self.acks:
            self.opened = time.monotonic()
        self.acks.append(ack)

    def waiting(self) -> bool:
        """Whether anything waits for the batch: items to send or handles to ack."""
        return bool(self.acks)

    def add(self, item: Item) -> None:
        """Append an item, to be acked (`item.ack`) once it is delivered or dead-lettered."""
        if not self.acks:
            self.opened = time.monotonic()
        self.items.append(item)
        self.acks.append(item.ack)
        self.size += len(item.payload)

    def full(self) -> bool:
        """The count or byte limit is reached."""
        return len(self.items) >= self.max_events or self.size >= self.max_bytes

    def due(self) -> bool:
        """The oldest item waited `max_seconds`."""
        return bool(self.acks) and time.monotonic() - self.opened >= self.max_seconds

    def take(self) -> tuple[list[Item], list[Any]]:
        """Empty the batch, returning its items and the handles to ack, in offset order."""
        items, acks = self.items, self.acks
        self.items, self.acks, self.size = [], [], 0
        return items, acks


class SinkLoop(Generic[AckT]):
    """Everything a sink does with the events it reads, whoever reads them.

    `offer` each event in offset order; `ack` is called with each handle once its event was
    delivered, dead-lettered or left out by the route, never before an earlier one; `after_batch`
    runs after each batch was shipped and acked. Delivery failures never escape (see `ship`).

    One batch is on its way to the destination while the next one fills: waiting for a SIEM's
    answer no longer stops the reading, routing and encoding of the events behind it. A full
    batch waits for the one in flight, so memory stays bounded and acks stay in offset order.
    """

    def __init__(
        self,
        sink: Sink,
        sink_config: SinkConfig,
        config: Config,
        metrics: SinkMetrics,
        send_dlq: Callable[..., Any],
        ack: Callable[[AckT], Awaitable[Any]],
        *,
        max_seconds: float | None = None,
        after_batch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.sink = sink
        self.sink_config = sink_config
        self.metrics = metrics
        self.send_dlq = send_dlq
        self.ack = ack
        self.after_batch = after_batch
        self.prepare = Preparer(sink, sink_config, config)
        self.batch = Batcher(
            sink_config.batch_max_events,
            sink_config.batch_max_bytes,
            sink_config.batch_max_seconds if max_seconds is None else max_seconds,
        )
        self.delivered = 0
        self.dead_lettered = 0
        self.filtered = 0
        self._handing_over = asyncio.Lock()
        self._in_flight: asyncio.Task[None] | None = None
        self._filtered = metrics.filtered.labels(sink.name)
        self._encode_failed = metrics.sink_dead_lettered.labels(sink.name, "encode")

    async def offer(
        self, key: bytes | None, value: bytes, headers: dict[str, str], ack: AckT
    ) -> None:
        """Take one event: batch it, or dead-letter or skip it (acked in its turn)."""
        item = Item(key, value, b"", headers, ack)
        try:
            payload = self.prepare(value)
        except ValueError as error:
            self._encode_failed.inc()
            self.dead_lettered += 1
            await dead_letter(self.send_dlq, item, str(error), 0, records.utc_now_iso())
            await self._settled(ack)
            return
        if payload is None:
            self._filtered.inc()
            self.filtered += 1
            await self._settled(ack)
            return
        item.payload = payload
        if not self.batch.fits(item):
            await self.flush()
        self.batch.add(item)
        if self.batch.full():
            await self.flush()

    async def flush(self) -> None:
        """Send what the batch holds once the batch in flight is done (returns meanwhile)."""
        async with self._handing_over:
            items, acks = self.batch.take()
            if not acks:
                return
            if self._in_flight is not None:
                await self._in_flight
            self._in_flight = asyncio.create_task(self._ship(items, acks))

    async def drain(self) -> None:
        """Send what the batch holds and wait until every batch is delivered and acked."""
        await self.flush()
        async with self._handing_over:
            if self._in_flight is not None:
                await self._in_flight

    async def abandon(self) -> None:
        """Stop the batch in flight without acking it (at shutdown: it is consumed again)."""
        task, self._in_flight = self._in_flight, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as error:  # stopping anyway: its events were not acked
                log.error("sink batch failed at shutdown", extra={"error": repr(error)})

    async def flush_when_due(self) -> None:
        """Ship the batch whenever its oldest event waited `batch_max_seconds` (runs forever)."""
        while True:
            await asyncio.sleep(min(0.1, self.batch.max_seconds / 2))
            if self.batch.due():
                await self.flush()

    async def _ship(self, items: list[Item], acks: list[Any]) -> None:
        if items:
            sent, rejected = await ship(
                self.sink, self.sink_config, items, self.metrics, self.send_dlq
            )
            self.delivered += sent
            self.dead_lettered += rejected
        for handle in acks:
            await self.ack(handle)
        if self.after_batch is not None:
            await self.after_batch()

    async def _settled(self, ack: AckT) -> None:
        # Nothing to send for this event: ack it now, or after the events before it (in the
        # batch, or in the one in flight).
        busy = self._in_flight is not None and not self._in_flight.done()
        if self.batch.waiting() or busy or self._handing_over.locked():
            self.batch.carry(ack)
        else:
            await self.ack(ack)
