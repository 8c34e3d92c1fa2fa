"""Splunk HEC sink: batched envelopes to `/services/collector/event`, optional indexer acks.

With indexer acknowledgement on, every request goes on a channel (forwarder/sinks/splunk_hec/
acks.py says why and how channels are kept apart) and is settled by one of:

- its ackId reported `true` on the channel that issued it: delivered;
- `max_failed_polls` failed ack queries in a row on that channel: delivered on the HTTP 200
  (counted as a fallback, `ack_unavailable`), and the channel is retired;
- its ackId still false after `timeout_seconds`: sent again on a new channel, at most
  `max_resends` times; after the last one `on_unacknowledged` decides: delivered on the HTTP
  200s (fallback `ack_timeout`) or the DLQ.

So one send_batch call ends after at most (1 + max_resends) * timeout_seconds of waiting, and
puts each event into Splunk at most 1 + max_resends times: no answer of the ack endpoint can make
the sink resend a batch for ever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry

from forwarder.failures import Failure
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import (
    DELIVERED,
    BatchResult,
    Ok,
    Reject,
    Retry,
    SinkError,
    TooLarge,
    Verdict,
)
from forwarder.sinks.http_common import build_client, classify_exception, gzip_body, retry_after
from forwarder.sinks.splunk_hec.acks import (
    ACK_DISABLED,
    ACK_TIMEOUT,
    ACK_UNAVAILABLE,
    BEFORE_INVALID_EVENT,
    CHANNEL,
    CONNECTION,
    DISABLED,
    NO_ACK_ID,
    SERVER_ERROR,
    TOKEN,
    AckReply,
    Channel,
    LogLimiter,
    read_ack_answer,
    refuse_cookies,
)
from forwarder.sinks.splunk_hec.config import SplunkHecSinkConfig
from forwarder.sinks.splunk_hec.envelope import EnvelopeBuilder
from forwarder.sinks.splunk_hec.retry import (
    HecAnswer,
    classify,
    event_at_fault,
    parse_answer,
    taken_before_busy,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("forwarder.sinks.splunk_hec")

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"
CHANNEL_HEADER = "X-Splunk-Request-Channel"

# A failing ack endpoint is polled every few seconds: one line per kind of failure and minute.
ACK_LOG_INTERVAL_SECONDS = 60.0

AckKey = tuple[str, int]  # (channel, ackId): an ackId means something only on its channel


@dataclass(eq=False)
class _Part:
    """Events posted together and answered with an ackId, not yet reported indexed."""

    indexes: list[int]
    sends: int = 0  # POSTs answered with an ackId
    sent_at: float = 0.0  # of the last one
    keys: set[AckKey] = field(default_factory=set)  # the ackIds still asked, one per send


class _Waiting:
    """The parts of one send_batch that wait for an acknowledgement, by (channel, ackId)."""

    def __init__(self) -> None:
        self.by_key: dict[AckKey, _Part] = {}

    def add(self, key: AckKey, part: _Part) -> None:
        self.by_key[key] = part
        part.keys.add(key)

    def remove(self, key: AckKey) -> _Part:
        part = self.by_key.pop(key)
        part.keys.discard(key)
        return part

    def parts(self) -> list[_Part]:
        return list(dict.fromkeys(self.by_key.values()))

    def by_channel(self) -> dict[str, list[int]]:
        asked: dict[str, list[int]] = {}
        for channel, ack_id in self.by_key:
            asked.setdefault(channel, []).append(ack_id)
        return asked


@dataclass
class _BatchState:
    """What became of each event of one `send_batch` call."""

    size: int
    rejected: dict[int, str] = field(default_factory=dict)
    retry: dict[int, str] = field(default_factory=dict)
    too_large: dict[int, str] = field(default_factory=dict)
    retry_after: float | None = None
    # The failure class of each event to retry (forwarder/failures.py), TRANSIENT when absent.
    classes: dict[int, Failure] = field(default_factory=dict)
    # After a retriable failure nothing more is posted in this call: the collector is busy or
    # unreachable, and `deliver` backs off before the next attempt.
    stopped: bool = False

    def fail(
        self,
        indexes: Sequence[int],
        reason: str,
        after: float | None = None,
        failure: Failure = Failure.TRANSIENT,
    ) -> None:
        for index in indexes:
            self.retry[index] = reason
            if failure is not Failure.TRANSIENT:
                self.classes[index] = failure
        if after is not None:
            self.retry_after = max(after, self.retry_after or 0.0)

    def reject(self, indexes: Sequence[int], reason: str) -> None:
        for index in indexes:
            self.rejected[index] = reason

    def result(self, sink: str) -> BatchResult:
        """The verdicts this call ends with: one for the batch when every event had the same."""
        named = f"splunk_hec {sink}"
        verdicts: dict[int, Verdict] = {}
        for index, reason in self.rejected.items():
            verdicts[index] = Reject(f"{named}: {reason}")
        for index, reason in self.too_large.items():
            verdicts[index] = TooLarge(f"{named}: {reason}")
        for index, reason in self.retry.items():
            failure = self.classes.get(index, Failure.TRANSIENT)
            verdicts[index] = Retry(f"{named}: {reason}", self.retry_after, failure)
        if not verdicts:
            return DELIVERED
        first = verdicts.get(0)
        if first is not None and all(verdicts.get(i) == first for i in range(self.size)):
            return BatchResult.of(first)
        return BatchResult.each(verdicts)


class SplunkHecSink:
    """Deliver events to a Splunk HTTP Event Collector."""

    def __init__(self, config: SplunkHecSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._acks = config.acknowledgement
        self._builder = EnvelopeBuilder(config)
        self._client: httpx.AsyncClient | None = None
        self._headers = {
            "Authorization": f"Splunk {config.token.get_secret_value()}",
            "Content-Type": "application/json",
        }
        # The channel requests go on while it is free; HEC numbers ackIds per channel.
        self._primary = Channel()
        self._channels: dict[str, Channel] = {self._primary.id: self._primary}
        self._metrics = SinkMetrics(CollectorRegistry())
        self._quiet = LogLimiter(ACK_LOG_INTERVAL_SECONDS)
        self._warned_no_ack = False

    @property
    def channel(self) -> str:
        """The channel GUID requests go on (sent only with acknowledgement on)."""
        return self._current().id

    def use_metrics(self, metrics: SinkMetrics) -> None:
        """Count into the sink process's metrics (aha_siem_hec_ack_*)."""
        self._metrics = metrics

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        """The HEC envelope of one event."""
        return self._builder.build(doc, payload)

    async def start(self) -> None:
        """Open the HTTP client (TLS context, connection pool)."""
        self._http()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            try:
                client = build_client(self._config.http, self._config.url)
            except OSError as error:
                # A CA bundle or client certificate that cannot be read: an operator fixes it.
                raise SinkError(
                    f"splunk_hec {self.name}: cannot load the TLS files: {error}"
                ) from None
            # Cookies are kept per channel (a load balancer's sticky cookie must travel with
            # the channel whose events it routed), never in the client, and only with acks on:
            # without them, stickiness would only unbalance the indexers.
            client.cookies = refuse_cookies()
            self._client = client
        return self._client

    async def _request(
        self, path: str, body: bytes, headers: dict[str, str], channel: Channel | None
    ) -> httpx.Response:
        """POST on a channel (None: acknowledgement off), with the channel's cookies."""
        client = self._http()
        if channel is not None:
            headers = {**headers, CHANNEL_HEADER: channel.id}
        request = client.build_request("POST", path, content=body, headers=headers)
        if channel is not None:
            channel.jar().set_cookie_header(request)
        response = await client.send(request)
        if channel is not None:
            channel.jar().extract_cookies(response)
        return response

    async def healthcheck(self) -> None:
        """The collector is healthy and takes this sink's token."""
        import httpx

        client = self._http()
        channel = self._current() if self._acks.enabled else None
        try:
            health = await client.get(HEALTH_PATH)
            answer = parse_answer(health.status_code, health.content)
            if health.status_code != 200:
                raise SinkError(
                    f"splunk_hec {self.name}: collector unhealthy: {answer.detail}",
                    retry_after=retry_after(health.headers),
                )
            # An empty POST proves the token without indexing anything: HEC checks the token
            # first and then answers code 5 "No data".
            probe = await self._request(EVENT_PATH, b"", self._headers, channel)
        except httpx.HTTPError as error:
            failed = classify_exception(error)
            raise SinkError(f"splunk_hec {self.name}: {failed.reason}") from None
        answer = parse_answer(probe.status_code, probe.content)
        if 200 <= probe.status_code < 300 or answer.code == 5:
            return
        verdict = classify(answer, probe.headers)
        reason = answer.detail if isinstance(verdict, Ok) else verdict.reason
        raise SinkError(f"splunk_hec {self.name}: {reason}")

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        """Post the batch as one request; with acknowledgement on, settle it first (above).

        A request too large for the collector is reported `TooLarge`: the framework sends its
        halves again, each a request of its own whose acknowledgement is awaited in its call.
        """
        if not events:
            return DELIVERED
        try:
            self._http()
        except SinkError as error:
            return BatchResult.of(Retry(str(error)))
        state = _BatchState(len(events))
        waiting = _Waiting()
        try:
            await self._post_part(events, list(range(len(events))), state, waiting)
            if waiting.by_key:
                await self._await_acks(events, waiting, state)
        finally:
            # Left only when the call is cancelled: those ackIds are not waited for any more.
            for part in waiting.parts():
                self._abandon(waiting, part)
            self._forget_idle_channels()
        return state.result(self.name)

    # -- channels ------------------------------------------------------------------------

    def _current(self) -> Channel:
        """The primary channel, replaced when it was retired."""
        if self._primary.retired:
            self._primary = self._open_channel()
        return self._primary

    def _channel_for(self, *, fresh: bool) -> Channel | None:
        """The channel for the next POST: the primary when it has no ackId pending, else (or
        for a resend) a new one. None with acknowledgement off."""
        if not self._acks.enabled:
            return None
        if self._primary.retired:
            return self._current()  # new, so free and fresh
        if not fresh and self._primary.free:
            return self._primary
        return self._open_channel()

    def _open_channel(self) -> Channel:
        channel = Channel()
        self._channels[channel.id] = channel
        return channel

    def _retire(self, channel: Channel, why: str) -> None:
        """The channel takes no more events (its numbering may hold an ackId nobody waits for)."""
        if channel.retired:
            return
        channel.retired = True
        self._quiet.log(
            log,
            logging.INFO,
            f"retire:{why}",
            "splunk_hec channel retired; later requests go on a new channel",
            {"sink": self.name, "channel": channel.id, "why": why},
        )

    def _forget_idle_channels(self) -> None:
        """After a batch: keep the primary (a free channel, one that worked, replaces a retired
        one, with the route its cookies hold) and forget the other idle channels."""
        if self._primary.retired:
            spare = next((channel for channel in self._channels.values() if channel.free), None)
            if spare is not None:
                self._primary = spare
        for channel_id, channel in list(self._channels.items()):
            if channel is not self._primary and channel.pending == 0:
                del self._channels[channel_id]

    def _release(self, key: AckKey, *, seen: bool) -> None:
        """An ackId no longer waited for; unless it was seen `true` (and so forgotten by the
        indexer), its channel is retired."""
        channel = self._channels.get(key[0])
        if channel is None:
            return
        channel.pending -= 1
        if not seen:
            self._retire(channel, "ack_id_left")

    def _abandon(self, waiting: _Waiting, part: _Part) -> None:
        """Stop waiting for any ackId of `part` (its events are settled some other way)."""
        for key in list(part.keys):
            waiting.remove(key)
            self._release(key, seen=False)

    # -- posting -------------------------------------------------------------------------

    async def _post(
        self, events: Sequence[bytes], indexes: Sequence[int], channel: Channel | None
    ) -> tuple[httpx.Headers, HecAnswer]:
        body = b"\n".join(events[index] for index in indexes)
        headers = self._headers
        if self._config.gzip:
            body = gzip_body(body)
            headers = {**headers, "Content-Encoding": "gzip"}
        response = await self._request(EVENT_PATH, body, headers, channel)
        return response.headers, parse_answer(response.status_code, response.content)

    async def _post_part(
        self,
        events: Sequence[bytes],
        indexes: list[int],
        state: _BatchState,
        waiting: _Waiting,
        earlier: _Part | None = None,
    ) -> None:
        """Post some events of the batch (again, for `earlier`) and record the outcome in
        `state` / `waiting`."""
        import httpx

        if state.stopped:
            state.fail(indexes, "not sent: an earlier request of the batch failed")
            if earlier is not None:
                self._abandon(waiting, earlier)
            return
        channel = self._channel_for(fresh=earlier is not None)
        try:
            headers, answer = await self._post(events, indexes, channel)
        except httpx.HTTPError as error:
            reason = classify_exception(error).reason
            # A time-out after the body went out may still have been indexed: the retry is
            # at-least-once. The collector may have issued an ackId we never saw.
            state.fail(indexes, reason)
            state.stopped = True
            if channel is not None:
                self._retire(channel, "no_answer")
            if earlier is not None:
                self._abandon(waiting, earlier)
            return
        verdict = classify(answer, headers)
        if isinstance(verdict, Ok):
            if channel is None:
                return
            if answer.ack_id is None:
                self._warn_no_ack("the collector answered without an ackId")
                self._fallback(NO_ACK_ID)
                if earlier is not None:
                    self._abandon(waiting, earlier)
                return
            part = earlier or _Part(indexes)
            part.sends += 1
            part.sent_at = time.monotonic()
            # The channel had no ackId pending (_channel_for): this key cannot be taken.
            waiting.add((channel.id, answer.ack_id), part)
            channel.pending += 1
            return
        if channel is not None and answer.code in (10, 11):
            self._retire(channel, "refused_by_collector")
        if earlier is not None:
            # Its events are settled by this answer (too large, rejected or failed) from here on.
            self._abandon(waiting, earlier)
        if isinstance(verdict, TooLarge):
            # Too large for the collector (or a proxy): the framework halves it.
            for index in indexes:
                state.too_large[index] = verdict.reason
            return
        if isinstance(verdict, Reject):
            culprit = event_at_fault(answer, len(indexes))
            if culprit is None or len(indexes) == 1:
                state.reject(indexes, verdict.reason)
                return
            # HEC stops at the first event it cannot take and names it. The events before it
            # are already indexed (observed and reported, e.g. opentelemetry-collector-contrib
            # #36113; Splunk's documentation is silent): sending them again would index them
            # twice. Only the events after it were never read.
            refused = indexes[culprit]
            state.reject([refused], verdict.reason)
            if culprit > 0 and channel is not None:
                # Taken without an ackId to ask: counted like any other delivery on trust.
                self._fallback(BEFORE_INVALID_EVENT)
            after = indexes[culprit + 1 :]
            if after:
                state.fail(
                    after, f"not read by the collector: event {refused} before them was refused"
                )
            return
        taken = taken_before_busy(answer, len(indexes))
        if taken:
            # HEC took the events before the one it names, then found its queues full: those
            # are in (without an ackId to ask) and must not be indexed twice; the rest waits.
            if channel is not None:
                self._fallback(BEFORE_INVALID_EVENT)
            indexes = indexes[taken:]
        state.fail(indexes, verdict.reason, verdict.after, verdict.failure)
        state.stopped = True

    # -- acknowledgement -----------------------------------------------------------------

    async def _await_acks(
        self, events: Sequence[bytes], waiting: _Waiting, state: _BatchState
    ) -> None:
        """Poll each channel for its ackIds until every part is settled (see the module)."""
        settings = self._acks
        wait = settings.poll_interval_seconds
        while waiting.by_key:
            await asyncio.sleep(wait)
            wait = settings.poll_interval_seconds
            for channel_id, asked in waiting.by_channel().items():
                # An answer on another channel this round may have settled some of them.
                ids = [ack_id for ack_id in asked if (channel_id, ack_id) in waiting.by_key]
                if not ids:
                    continue
                channel = self._channels[channel_id]
                reply = await self._query_acks(channel, ids)
                if reply.problem is None:
                    channel.failed_polls = 0
                    for ack_id, indexed in reply.statuses.items():
                        key = (channel_id, ack_id)
                        if indexed and key in waiting.by_key:
                            self._settle(waiting, key)
                    continue
                if reply.problem == DISABLED:
                    self._warn_no_ack("the collector answered code 14 (ACK is disabled)")
                    for part in waiting.parts():
                        self._abandon(waiting, part)
                        self._fallback(ACK_DISABLED)
                    return
                if reply.problem == TOKEN:
                    for part in waiting.parts():
                        state.fail(
                            part.indexes,
                            f"{reply.detail} (token refused: check the sink's token)",
                            failure=Failure.DESTINATION,
                        )
                        self._abandon(waiting, part)
                    return
                self._ack_query_failed(channel, reply)
                if reply.retry_after is not None:
                    wait = max(wait, reply.retry_after)
                if channel.failed_polls >= settings.max_failed_polls:
                    self._give_up_channel(waiting, channel, reply)
            await self._resend_late(events, waiting, state)

    async def _query_acks(self, channel: Channel, ids: Sequence[int]) -> AckReply:
        """What the collector says about `ids` on `channel`."""
        import httpx

        body = orjson.dumps({"acks": sorted(ids)})
        try:
            response = await self._request(ACK_PATH, body, self._headers, channel)
        except httpx.HTTPError as error:
            return AckReply(problem=CONNECTION, detail=f"{type(error).__name__}: {error}")
        reply = read_ack_answer(response.status_code, response.content)
        if reply.problem == SERVER_ERROR:
            reply = dataclasses.replace(reply, retry_after=retry_after(response.headers))
        return reply

    def _settle(self, waiting: _Waiting, key: AckKey) -> None:
        """The ackId `key` is indexed: its part is delivered, its other sends are not waited
        for any more."""
        part = waiting.remove(key)
        self._release(key, seen=True)
        self._abandon(waiting, part)

    def _ack_query_failed(self, channel: Channel, reply: AckReply) -> None:
        assert reply.problem is not None
        channel.failed_polls += 1
        self._metrics.hec_ack_errors.labels(self.name, reply.problem).inc()
        self._quiet.log(
            log,
            logging.WARNING,
            f"ack:{reply.problem}",
            "splunk_hec ack status query failed",
            {
                "sink": self.name,
                "kind": reply.problem,
                "detail": reply.detail,
                "channel": channel.id,
                "failed_polls": channel.failed_polls,
                "max_failed_polls": self._acks.max_failed_polls,
            },
        )
        if reply.problem == CHANNEL:
            # The collector does not know the channel (dropped after idling, or the header was
            # stripped on the way): it must not take more events.
            self._retire(channel, "unknown_to_collector")

    def _give_up_channel(self, waiting: _Waiting, channel: Channel, reply: AckReply) -> None:
        """`max_failed_polls` failed queries in a row: the channel's ackIds are not asked any
        more; a part with no other ackId left counts as delivered on its HTTP 200."""
        trusted = 0
        for key in [key for key in waiting.by_key if key[0] == channel.id]:
            part = waiting.remove(key)
            self._release(key, seen=False)
            if not part.keys:
                trusted += len(part.indexes)
                self._fallback(ACK_UNAVAILABLE)
        self._retire(channel, "ack_unavailable")
        self._quiet.log(
            log,
            logging.WARNING,
            f"fallback:{ACK_UNAVAILABLE}",
            "splunk_hec indexer acknowledgement unavailable; counting the collector's HTTP 200 "
            "as delivery",
            {
                "sink": self.name,
                "kind": reply.problem,
                "detail": reply.detail,
                "failed_polls": channel.failed_polls,
                "events": trusted,
            },
        )

    async def _resend_late(
        self, events: Sequence[bytes], waiting: _Waiting, state: _BatchState
    ) -> None:
        """Send again, on a new channel, each part unacknowledged for `timeout_seconds`; settle
        by `on_unacknowledged` a part that already had its resends."""
        settings = self._acks
        now = time.monotonic()
        for part in waiting.parts():
            if not part.keys or now - part.sent_at < settings.timeout_seconds:
                continue
            if part.sends > settings.max_resends:
                self._unacknowledged(waiting, part, state)
                continue
            log.warning(
                "splunk_hec acknowledgement timed out, sending again on a new channel",
                extra={
                    "sink": self.name,
                    "events": len(part.indexes),
                    "ack_ids": sorted(part.keys),
                    "resend": part.sends,
                },
            )
            # The earlier ackIds stay asked: whichever send is indexed first settles it.
            await self._post_part(events, part.indexes, state, waiting, earlier=part)

    def _unacknowledged(self, waiting: _Waiting, part: _Part, state: _BatchState) -> None:
        settings = self._acks
        self._abandon(waiting, part)
        reason = (
            f"no indexer acknowledgement after {part.sends} sends "
            f"({settings.timeout_seconds:g} s each)"
        )
        if settings.on_unacknowledged == "dead_letter":
            state.reject(part.indexes, reason)
            return
        self._fallback(ACK_TIMEOUT)
        log.error(
            "splunk_hec %s; counting the collector's HTTP 200 as delivery",
            reason,
            extra={"sink": self.name, "events": len(part.indexes), "sends": part.sends},
        )

    def _fallback(self, reason: str) -> None:
        self._metrics.hec_ack_fallbacks.labels(self.name, reason).inc()

    def _warn_no_ack(self, why: str) -> None:
        # The collector took the events (HTTP 200); without acks that is as far as HEC tells.
        if not self._warned_no_ack:
            self._warned_no_ack = True
            log.warning(
                "splunk_hec acknowledgement is on but the token does not use it; "
                "treating HTTP 200 as delivered",
                extra={"sink": self.name, "why": why},
            )

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
