"""Indexer acknowledgement of the Splunk HEC sink: channels, ack answers, and rate-limited logs.

HEC numbers ackIds per channel (`X-Splunk-Request-Channel`), and per indexer: behind a load
balancer every indexer numbers a channel's first request 0. So an ackId means something only
together with its channel and the indexer that issued it:

- every pending ackId is keyed by (channel, ackId) and asked of that channel only, with that
  channel's cookies (a sticky load balancer's cookie, or Splunk's own `channel_cookie`), so the
  query reaches the indexer that took the events;
- a channel carries at most one pending ackId at a time (a second request waiting at the same
  moment goes on another channel), so two indexers' equal ackIds are never both pending on one
  channel, and a `true` from one cannot settle the request the other one lost;
- a channel whose numbering may hold an ackId we no longer wait for (one given up, one answered
  while the request failed on our side, one the collector says it does not know) is retired:
  it takes no more events, so no later request can be settled by that stale ackId.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import orjson

from forwarder.sinks.splunk_hec.retry import HecAnswer, is_token_failure, parse_answer

if TYPE_CHECKING:
    import httpx

# Kinds of failed ack queries (the `kind` label of aha_siem_hec_ack_errors_total).
NOT_FOUND = "not_found"  # HTTP 404: a proxy that does not route the ack path, or HEC is off
CHANNEL = "channel"  # HEC code 10/11: the collector does not know the channel (dropped, stripped)
SERVER_ERROR = "server_error"  # 5xx, HEC code 8 (internal error) or 9 (busy)
UNREADABLE = "unreadable"  # 200 whose body is not HEC's `{"acks": {...}}`
HTTP = "http"  # any other status
CONNECTION = "connection"  # no answer: connection refused or reset, time-out, TLS

# Kinds that are not failures of the ack endpoint but answers the sink acts on at once.
DISABLED = "disabled"  # HEC code 14: the token does not use indexer acknowledgement
TOKEN = "token"  # 401/403: the token was refused

# Reasons events count as delivered without an indexer acknowledgement
# (aha_siem_hec_ack_fallbacks_total).
ACK_UNAVAILABLE = "ack_unavailable"  # max_failed_polls failed queries in a row on its channel
ACK_TIMEOUT = "ack_timeout"  # still false after its last resend (on_unacknowledged: trust)
ACK_DISABLED = "ack_disabled"  # the ack endpoint answered code 14
NO_ACK_ID = "no_ack_id"  # the 200 carried no ackId
BEFORE_INVALID_EVENT = "before_invalid_event"  # taken ahead of the event a 400 or 503 names

_DETAIL_CHARS = 200


@dataclass(frozen=True)
class AckReply:
    """What one ack query said: the statuses (ackId -> indexed) or the kind of failure."""

    statuses: Mapping[int, bool] = field(default_factory=dict)
    problem: str | None = None
    detail: str = ""
    retry_after: float | None = None


def read_ack_answer(status: int, body: bytes) -> AckReply:
    """Read an answer of `/services/collector/ack` (its Retry-After is added by the caller)."""
    answer = parse_answer(status, body)
    if status == 200:
        statuses = _statuses(body)
        if statuses is None:
            return AckReply(problem=UNREADABLE, detail=_detail(answer, body))
        return AckReply(statuses=statuses)
    if answer.code == 14:
        return AckReply(problem=DISABLED, detail=answer.detail)
    if is_token_failure(answer):
        return AckReply(problem=TOKEN, detail=answer.detail)
    if answer.code in (10, 11):
        return AckReply(problem=CHANNEL, detail=answer.detail)
    if status == 404:
        return AckReply(problem=NOT_FOUND, detail=answer.detail)
    if status >= 500 or answer.code in (8, 9):
        return AckReply(problem=SERVER_ERROR, detail=answer.detail)
    return AckReply(problem=HTTP, detail=answer.detail)


def _statuses(body: bytes) -> dict[int, bool] | None:
    """`{"acks": {"0": true, ...}}` as ackId -> indexed; None when the body is not that."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    acks = data.get("acks") if isinstance(data, Mapping) else None
    if not isinstance(acks, Mapping):
        return None
    return {int(key): value is True for key, value in acks.items() if str(key).isdigit()}


def _detail(answer: HecAnswer, body: bytes) -> str:
    if answer.text or answer.code is not None:
        return answer.detail
    start = body[:_DETAIL_CHARS].decode("utf-8", errors="replace").strip()
    return f"HTTP {answer.status}" + (f": {start}" if start else "")


@dataclass(eq=False)
class Channel:
    """One `X-Splunk-Request-Channel` with the cookies its answers set (a sticky load balancer's,
    or Splunk's `channel_cookie`), sent back with each of its requests."""

    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    cookies: httpx.Cookies | None = None
    pending: int = 0  # ackIds issued on it that are waited for
    failed_polls: int = 0  # ack queries in a row that failed
    retired: bool = False  # takes no more events

    def jar(self) -> httpx.Cookies:
        """The channel's cookie jar (made on first use)."""
        if self.cookies is None:
            import httpx

            self.cookies = httpx.Cookies()
        return self.cookies

    @property
    def free(self) -> bool:
        """Whether a request may go on it now: not retired, no ackId pending."""
        return not self.retired and self.pending == 0


def refuse_cookies() -> CookieJar:
    """A cookie jar for the shared httpx client that keeps nothing: cookies live per channel."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class LogLimiter:
    """Let one log line through per key and interval; count the ones held back meanwhile."""

    def __init__(self, interval_seconds: float) -> None:
        self.interval = interval_seconds
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; else the number of lines held back since the last one."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def log(
        self, logger: logging.Logger, level: int, key: str, message: str, extra: dict[str, Any]
    ) -> None:
        """`logger.log(level, message)` unless a line of `key` went out within the interval."""
        held = self.allow(key)
        if held is None:
            return
        logger.log(level, message, extra={**extra, "suppressed": held})
