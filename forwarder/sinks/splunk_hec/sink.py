"""Splunk HEC sink: batched envelopes to `/services/collector/event`, optional indexer acks."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from forwarder.sinks.base import Ok, PartialFailure, Reject, Retry, SinkError
from forwarder.sinks.http_common import build_client, classify_exception, gzip_body, retry_after
from forwarder.sinks.splunk_hec.config import SplunkHecSinkConfig
from forwarder.sinks.splunk_hec.envelope import EnvelopeBuilder
from forwarder.sinks.splunk_hec.retry import (
    HecAnswer,
    classify,
    event_at_fault,
    is_token_failure,
    parse_answer,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("forwarder.sinks.splunk_hec")

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"
CHANNEL_HEADER = "X-Splunk-Request-Channel"


@dataclass
class _Unacked:
    """Events posted and answered with an ackId, not yet reported indexed."""

    indexes: list[int]
    ack_ids: list[int]
    sent_at: float
    resends: int = 0


@dataclass
class _BatchState:
    """What became of each event of one `send_batch` call."""

    size: int
    rejected: dict[int, str] = field(default_factory=dict)
    retry: dict[int, str] = field(default_factory=dict)
    retry_after: float | None = None
    token_refused: bool = False
    # After a retriable failure nothing more is posted in this call: the collector is busy or
    # unreachable, and `deliver` backs off before the next attempt.
    stopped: bool = False

    def fail(self, indexes: Sequence[int], reason: str, after: float | None = None) -> None:
        for index in indexes:
            self.retry[index] = reason
        if after is not None:
            self.retry_after = max(after, self.retry_after or 0.0)

    def reject(self, indexes: Sequence[int], reason: str) -> None:
        for index in indexes:
            self.rejected[index] = reason

    def error(self, sink: str) -> SinkError | None:
        """The SinkError this call ends with (None: everything was delivered)."""
        if not self.retry and not self.rejected:
            return None
        if not self.rejected and len(self.retry) == self.size:
            reason = next(iter(self.retry.values()))
            return SinkError(
                f"splunk_hec {sink}: {reason}",
                retriable=True,
                retry_after=self.retry_after,
                reason="auth" if self.token_refused else "unavailable",
            )
        if not self.retry and len(self.rejected) == self.size:
            reason = next(iter(self.rejected.values()))
            return SinkError(f"splunk_hec {sink}: {reason}", retriable=False, reason="rejected")
        first = next(iter(self.retry.values()), None) or next(iter(self.rejected.values()))
        return PartialFailure(
            f"splunk_hec {sink}: {len(self.rejected)} rejected, {len(self.retry)} to retry: {first}",
            retry=sorted(self.retry),
            rejected=self.rejected,
            retry_after=self.retry_after,
        )


class _AckDisabled(Exception):
    """The collector answered HEC code 14: the token does not do indexer acknowledgement."""


class SplunkHecSink:
    """Deliver events to a Splunk HTTP Event Collector."""

    def __init__(self, config: SplunkHecSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._builder = EnvelopeBuilder(config)
        self._client: httpx.AsyncClient | None = None
        # One channel per sink instance: HEC numbers ackIds per channel.
        self.channel = str(uuid.uuid4())
        self._headers = {
            "Authorization": f"Splunk {config.token.get_secret_value()}",
            "Content-Type": "application/json",
        }
        if config.acknowledgement.enabled:
            self._headers[CHANNEL_HEADER] = self.channel
        self._warned_no_ack = False

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        """The HEC envelope of one event."""
        return self._builder.build(doc, payload)

    async def start(self) -> None:
        """Open the HTTP client (TLS context, connection pool)."""
        self._http()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            try:
                self._client = build_client(self._config.http, self._config.url)
            except OSError as error:
                # A CA bundle or client certificate that cannot be read: an operator fixes it.
                raise SinkError(
                    f"splunk_hec {self.name}: cannot load the TLS files: {error}", retriable=True
                ) from None
        return self._client

    async def healthcheck(self) -> None:
        """The collector is healthy and takes this sink's token."""
        import httpx

        client = self._http()
        try:
            health = await client.get(HEALTH_PATH)
            answer = parse_answer(health.status_code, health.content)
            if health.status_code != 200:
                raise SinkError(
                    f"splunk_hec {self.name}: collector unhealthy: {answer.detail}",
                    retriable=True,
                    retry_after=retry_after(health.headers),
                )
            # An empty POST proves the token without indexing anything: HEC checks the token
            # first and then answers code 5 "No data".
            probe = await client.post(EVENT_PATH, content=b"", headers=self._headers)
        except httpx.HTTPError as error:
            verdict = classify_exception(error)
            reason = verdict.reason if isinstance(verdict, Retry | Reject) else str(error)
            raise SinkError(f"splunk_hec {self.name}: {reason}", retriable=True) from None
        answer = parse_answer(probe.status_code, probe.content)
        if 200 <= probe.status_code < 300 or answer.code == 5:
            return
        verdict = classify(answer, probe.headers)
        reason = verdict.reason if isinstance(verdict, Retry | Reject) else answer.detail
        raise SinkError(
            f"splunk_hec {self.name}: {reason}",
            retriable=True,
            reason="auth" if is_token_failure(answer) else "unavailable",
        )

    async def send_batch(self, events: Sequence[bytes]) -> None:
        """Post the batch; with acknowledgement on, return only once Splunk indexed it."""
        if not events:
            return
        self._http()
        state = _BatchState(len(events))
        unacked: list[_Unacked] = []
        await self._post_part(events, list(range(len(events))), state, unacked)
        if unacked:
            await self._await_acks(events, unacked, state)
        error = state.error(self.name)
        if error is not None:
            raise error

    async def _post(
        self, events: Sequence[bytes], indexes: Sequence[int]
    ) -> tuple[httpx.Headers, HecAnswer]:
        body = b"\n".join(events[index] for index in indexes)
        headers = self._headers
        if self._config.gzip:
            body = gzip_body(body)
            headers = {**headers, "Content-Encoding": "gzip"}
        response = await self._http().post(EVENT_PATH, content=body, headers=headers)
        return response.headers, parse_answer(response.status_code, response.content)

    async def _post_part(
        self,
        events: Sequence[bytes],
        indexes: list[int],
        state: _BatchState,
        unacked: list[_Unacked],
        earlier_ack_ids: Sequence[int] = (),
        resends: int = 0,
    ) -> None:
        """Post some events of the batch and record the outcome in `state` / `unacked`."""
        import httpx

        if state.stopped:
            state.fail(indexes, "not sent: an earlier request of the batch failed")
            return
        try:
            headers, answer = await self._post(events, indexes)
        except httpx.HTTPError as error:
            verdict = classify_exception(error)
            reason = verdict.reason if isinstance(verdict, Retry | Reject) else str(error)
            # A time-out after the body went out may still have been indexed: the retry is
            # at-least-once.
            state.fail(indexes, reason)
            state.stopped = True
            return
        verdict = classify(answer, headers)
        if isinstance(verdict, Ok):
            if not self._config.acknowledgement.enabled:
                return
            if answer.ack_id is None:
                self._warn_no_ack("the collector answered without an ackId")
                return
            unacked.append(
                _Unacked(indexes, [*earlier_ack_ids, answer.ack_id], time.monotonic(), resends)
            )
            return
        if answer.status == 413 and len(indexes) > 1:
            # Too large for the collector (or a proxy): halve until the pieces fit.
            middle = len(indexes) // 2
            for piece in (indexes[:middle], indexes[middle:]):
                await self._post_part(events, piece, state, unacked, earlier_ack_ids, resends)
            return
        if isinstance(verdict, Reject):
            culprit = event_at_fault(answer, len(indexes))
            if culprit is None or len(indexes) == 1:
                state.reject(indexes, verdict.reason)
                return
            # HEC names the first event it could not take. It may have indexed the events
            # before it (it does not say): they are sent again, which can duplicate them in
            # Splunk, rather than risk losing them. The events after it were not indexed.
            state.reject([indexes[culprit]], verdict.reason)
            others = [index for position, index in enumerate(indexes) if position != culprit]
            state.fail(others, f"sent again after event {indexes[culprit]} was refused")
            return
        assert isinstance(verdict, Retry)
        state.token_refused = state.token_refused or is_token_failure(answer)
        state.fail(indexes, verdict.reason, verdict.after)
        state.stopped = True

    async def _await_acks(
        self, events: Sequence[bytes], unacked: list[_Unacked], state: _BatchState
    ) -> None:
        """Poll the ack endpoint until every posted part is indexed, resending late ones."""
        settings = self._config.acknowledgement
        wait = settings.poll_interval_seconds
        while unacked:
            await asyncio.sleep(wait)
            wait = settings.poll_interval_seconds
            ids = sorted({ack_id for part in unacked for ack_id in part.ack_ids})
            try:
                acked, busy_for = await self._query_acks(ids)
            except _AckDisabled:
                self._warn_no_ack("the collector answered code 14 (ACK is disabled)")
                unacked.clear()
                return
            except SinkError as error:
                for part in unacked:
                    state.fail(part.indexes, str(error))
                state.token_refused = state.token_refused or error.reason == "auth"
                unacked.clear()
                return
            if busy_for is not None:
                wait = max(wait, busy_for)
            now = time.monotonic()
            for part in list(unacked):
                if any(acked.get(ack_id) for ack_id in part.ack_ids):
                    unacked.remove(part)
                    continue
                if now - part.sent_at < settings.timeout_seconds:
                    continue
                unacked.remove(part)
                if part.resends >= settings.max_resends:
                    state.fail(
                        part.indexes,
                        f"no indexer acknowledgement within {settings.timeout_seconds:g} s "
                        f"after {part.resends + 1} sends",
                    )
                    continue
                log.warning(
                    "splunk_hec acknowledgement timed out, sending again",
                    extra={
                        "sink": self.name,
                        "events": len(part.indexes),
                        "ack_ids": part.ack_ids,
                        "resend": part.resends + 1,
                    },
                )
                # The earlier ackIds stay polled: whichever send is indexed first settles it.
                await self._post_part(
                    events, part.indexes, state, unacked, part.ack_ids, part.resends + 1
                )

    async def _query_acks(self, ids: Sequence[int]) -> tuple[Mapping[int, bool], float | None]:
        """Ack status of `ids` (missing: unknown) and, when the collector is busy, its
        Retry-After."""
        import httpx

        body = orjson.dumps({"acks": list(ids)})
        try:
            response = await self._http().post(ACK_PATH, content=body, headers=self._headers)
        except httpx.HTTPError as error:
            # Unknown this round; the time-out (and its resend) still applies.
            log.warning(
                "splunk_hec ack query failed",
                extra={"sink": self.name, "error": f"{type(error).__name__}: {error}"},
            )
            return {}, None
        answer = parse_answer(response.status_code, response.content)
        if response.status_code == 200:
            try:
                statuses = orjson.loads(response.content).get("acks") or {}
            except (orjson.JSONDecodeError, AttributeError):
                statuses = {}
            acked: dict[int, bool] = {}
            if isinstance(statuses, Mapping):
                for key, value in statuses.items():
                    if str(key).isdigit():
                        acked[int(key)] = value is True
            return acked, None
        if answer.code == 14:
            raise _AckDisabled
        if is_token_failure(answer):
            raise SinkError(
                f"{answer.detail} (token refused: check the sink's token)",
                retriable=True,
                reason="auth",
            )
        return {}, retry_after(response.headers)

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
