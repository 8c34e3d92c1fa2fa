"""A fake Splunk HTTP Event Collector as a plain ASGI app, with switches for every failure.

Faithful to HEC's documented protocol: `Authorization: Splunk <token>`, batches of concatenated
JSON envelopes on `/services/collector/event` (optionally gzip), the documented status codes and
`{"text", "code", "invalid-event-number", "ackId"}` bodies, indexer acknowledgement per channel
(`X-Splunk-Request-Channel` or `?channel=`) on `/services/collector/ack`, and
`/services/collector/health`. Serve it with `tests.fakes.server.AsgiServer`.

`FakeHecCluster` puts a load balancer in front of several of them (indexers): each numbers its
ackIds per channel from 0, as Splunk's indexers do, so ackIds of different indexers collide.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

EVENT_PATHS = ("/services/collector/event", "/services/collector/event/1.0", "/services/collector")
ACK_PATH = "/services/collector/ack"
HEALTH_PATHS = ("/services/collector/health", "/services/collector/health/1.0")

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DECODER = json.JSONDecoder()

# HEC's documented answers: code -> (HTTP status, text).
CODES: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
}


@dataclass
class Forced:
    """An answer given instead of the real one to the next event POST(s)."""

    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


@dataclass
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # as sent (gzip stays compressed)


class FakeHec:
    """ASGI app; set the public attributes from a test to change its behaviour."""

    def __init__(
        self,
        token: str = "11111111-2222-3333-4444-555555555555",
        *,
        ack: bool = False,
        allowed_indexes: tuple[str, ...] | None = None,
    ) -> None:
        self.tokens: dict[str, bool] = {token: True}
        """Known tokens -> enabled."""
        self.ack = ack
        """Indexer acknowledgement on the token: a channel is required and answers carry ackId."""
        self.allowed_indexes = allowed_indexes
        """Indexes the token may write to (None: any)."""
        self.max_content_length: int | None = None
        """Answer 413 to larger (decompressed) bodies, as limits.conf max_content_length."""
        self.delay_seconds = 0.0
        """Sleep this long before answering an event POST (slow collector)."""
        self.healthy = True
        """False: the health endpoint answers 503 code 18."""
        self.busy: int = 0
        """Answer the next N event POSTs 503 code 9 "Server is busy" with Retry-After."""
        self.busy_retry_after = 1
        self.forced: list[Forced] = []
        """Answers given instead of the real ones, in order."""
        self.ack_delay_seconds = 0.0
        """An ackId turns true this long after the events were taken (late acks)."""
        self.lose_acks = 0
        """The next N ackIds never turn true (lost acks: indexer crash, ack state lost)."""
        self.ack_plan: list[float | None] = []
        """Delays of the next ackIds in turn (None: lost), before `lose_acks` and the default."""
        self.ack_forced: list[Forced] = []
        """Answers given instead of the real ones to the next ack status queries (a proxy that
        does not route the ack endpoint, a dropped channel, a failing indexer)."""
        self.events: list[dict[str, Any]] = []
        """Every envelope taken, in order (what a search in Splunk would find)."""
        self.lost: list[dict[str, Any]] = []
        """Envelopes taken under an ackId that never turns true: the indexer lost them."""
        self.requests: list[Received] = []
        self.ack_queries: list[list[int]] = []
        self._lock = threading.Lock()
        self._next_ack: dict[str, int] = {}
        self._acks: dict[str, dict[int, float | None]] = {}  # channel -> ackId -> ready at

    # -- helpers for tests -------------------------------------------------------------

    def force(
        self, status: int, body: dict[str, Any] | str, times: int = 1, **headers: str
    ) -> None:
        """Answer the next `times` event POSTs with this status and body."""
        self.forced.append(Forced(status, body, dict(headers), times))

    def force_code(self, code: int, times: int = 1, **extra: Any) -> None:
        """Answer the next event POSTs with a documented HEC code (and extra body keys)."""
        status, text = CODES[code]
        self.force(status, {"text": text, "code": code, **extra}, times)

    def force_ack(
        self, status: int, body: dict[str, Any] | str, times: int = 1, **headers: str
    ) -> None:
        """Answer the next `times` ack status queries with this status and body."""
        self.ack_forced.append(Forced(status, body, dict(headers), times))

    def event_requests(self) -> list[Received]:
        """The POSTs to the event endpoint."""
        return [request for request in self.requests if request.path in EVENT_PATHS]

    def ack_requests(self) -> list[Received]:
        """The POSTs to the ack endpoint."""
        return [request for request in self.requests if request.path == ACK_PATH]

    def indexed(self) -> list[dict[str, Any]]:
        """The envelopes taken and not lost: what is in the index once the acks are due."""
        lost = {id(envelope) for envelope in self.lost}
        return [envelope for envelope in self.events if id(envelope) not in lost]

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope["headers"]
        }
        path = scope["path"].rstrip("/") or "/"
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        self.requests.append(Received(scope["method"], path, headers, body))
        if path in HEALTH_PATHS:
            status, health = self._health(query)
            await _answer(send, status, health)
        elif path == ACK_PATH:
            if self.ack_forced:
                forced = _next_forced(self.ack_forced)
                await _answer(send, forced.status, forced.body, forced.headers)
            else:
                status, answer = self._ack_query(headers, query, body)
                await _answer(send, status, answer)
        elif path in EVENT_PATHS:
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            status, payload, extra = self._events(headers, query, body)
            await _answer(send, status, payload, extra)
        else:
            await _answer(
                send, 404, {"text": "The requested URL was not found on this server.", "code": 404}
            )

    # -- endpoints -------------------------------------------------------------------

    def _health(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        token = _first(query, "token")
        if token is not None and not self.tokens.get(token):
            return 400, {"text": "Invalid HEC token", "code": 4}
        if not self.healthy:
            return 503, _code(18)
        return 200, _code(17)

    def _auth(self, headers: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        authorization = headers.get("authorization")
        if authorization is None:
            return 401, _code(2)
        scheme, _, token = authorization.partition(" ")
        if scheme != "Splunk" or not token:
            return 401, _code(3)
        if token not in self.tokens:
            return 403, _code(4)
        if not self.tokens[token]:
            return 403, _code(1)
        return None

    def _channel(
        self, headers: dict[str, str], query: dict[str, list[str]]
    ) -> tuple[str | None, tuple[int, dict[str, Any]] | None]:
        channel = headers.get("x-splunk-request-channel") or _first(query, "channel")
        if channel is None:
            return None, (400, _code(10)) if self.ack else None
        if not _GUID.match(channel):
            return None, (400, _code(11))
        return channel, None

    def _events(
        self, headers: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        refused = self._auth(headers)
        if refused:
            return *refused, {}
        channel, refused = self._channel(headers, query)
        if refused:
            return *refused, {}
        if self.forced:
            forced = _next_forced(self.forced)
            return forced.status, forced.body, forced.headers
        if self.busy > 0:
            self.busy -= 1
            return 503, _code(9), {"Retry-After": str(self.busy_retry_after)}
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error):
                return 400, _code(6), {}
        if self.max_content_length is not None and len(body) > self.max_content_length:
            text = f"Content-Length of {len(body)} too large (maximum is {self.max_content_length})"
            return 413, {"text": text}, {}
        envelopes, failure = self._parse(body)
        with self._lock:
            self.events.extend(envelopes)
        if failure is not None:
            return 400, failure, {}
        answer: dict[str, Any] = _code(0)
        if self.ack and channel is not None:
            answer["ackId"], lost = self._register_ack(channel)
            if lost:
                with self._lock:
                    self.lost.extend(envelopes)
        return 200, answer, {}

    def _parse(self, body: bytes) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Envelopes taken, and the failure answer for the first bad one (if any).

        As Splunk is observed to do (its documentation is silent; reported in
        opentelemetry-collector-contrib#36113): the events before the bad one are indexed, the
        bad one is refused and named by `invalid-event-number` (from 0), and the rest of the
        body is never read. The 400 carries no ackId, so nothing taken is acknowledged."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return [], _code(6, **{"invalid-event-number": 0})
        if not text.strip():
            return [], _code(5)
        taken: list[dict[str, Any]] = []
        position, number = 0, 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position >= len(text):
                return taken, None
            try:
                envelope, position = _DECODER.raw_decode(text, position)
            except json.JSONDecodeError:
                return taken, _code(6, **{"invalid-event-number": number})
            problem = self._check(envelope)
            if problem is not None:
                return taken, _code(problem, **{"invalid-event-number": number})
            taken.append(envelope)
            number += 1

    def _check(self, envelope: Any) -> int | None:
        """The HEC code an envelope is refused with, or None."""
        if not isinstance(envelope, dict):
            return 6
        if "event" not in envelope:
            return 12
        event = envelope["event"]
        if event is None or (isinstance(event, str) and not event.strip()) or event == {}:
            return 13
        moment = envelope.get("time")
        if moment is not None:
            if isinstance(moment, str):
                try:
                    float(moment)
                except ValueError:
                    return 6
            elif isinstance(moment, bool) or not isinstance(moment, int | float):
                return 6
        for key in ("host", "source", "sourcetype", "index"):
            if key in envelope and not isinstance(envelope[key], str):
                return 6
        index = envelope.get("index")
        if (
            index is not None
            and self.allowed_indexes is not None
            and index not in self.allowed_indexes
        ):
            return 7
        fields = envelope.get("fields")
        if fields is not None:
            if not isinstance(fields, dict):
                return 15
            for value in fields.values():
                if isinstance(value, list):
                    if not all(isinstance(item, str) for item in value):
                        return 15
                elif not isinstance(value, str):
                    return 15
        return None

    def _register_ack(self, channel: str) -> tuple[int, bool]:
        """The next ackId of the channel, and whether it is lost (never turns true)."""
        with self._lock:
            ack_id = self._next_ack.get(channel, 0)
            self._next_ack[channel] = ack_id + 1
            ready: float | None
            if self.ack_plan:
                delay = self.ack_plan.pop(0)
                ready = None if delay is None else time.monotonic() + delay
            elif self.lose_acks > 0:
                self.lose_acks -= 1
                ready = None
            else:
                ready = time.monotonic() + self.ack_delay_seconds
            self._acks.setdefault(channel, {})[ack_id] = ready
            return ack_id, ready is None

    def _ack_query(
        self, headers: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        refused = self._auth(headers)
        if refused:
            return refused
        if not self.ack:
            return 400, _code(14)
        channel, refused = self._channel(headers, query)
        if refused or channel is None:
            return refused or (400, _code(10))
        try:
            asked = json.loads(body)["acks"]
            ids = [int(item) for item in asked]
        except (ValueError, KeyError, TypeError):
            return 400, _code(6)
        self.ack_queries.append(ids)
        now = time.monotonic()
        statuses: dict[str, bool] = {}
        with self._lock:
            pending = self._acks.get(channel, {})
            for ack_id in ids:
                ready = pending.get(ack_id)
                done = ready is not None and ready <= now
                statuses[str(ack_id)] = done
                if done:
                    # HEC forgets an ackId once it has reported it indexed.
                    del pending[ack_id]
        return 200, {"acks": statuses}


@dataclass
class Routed:
    """One request as the load balancer routed it."""

    path: str
    channel: str | None
    indexer: int
    cookie: str | None  # the load balancer's cookie the request carried


class FakeHecCluster:
    """A load balancer in front of several fake collectors (indexers).

    Sticky (the default): a request without the balancer's cookie goes to the next indexer in
    turn and its answer sets the cookie; a request with it goes where the cookie says, as an
    AWS ALB with load-balancer-generated cookies does. Not sticky: every request goes to the
    next indexer in turn (event POSTs and ack queries each in their own turn), or every ack
    query to `ack_route` when it is set.
    """

    def __init__(
        self, indexers: list[FakeHec], *, sticky: bool = True, cookie: str = "hec_lb"
    ) -> None:
        self.indexers = indexers
        self.sticky = sticky
        self.cookie = cookie
        self.ack_route: int | None = None
        self.routed: list[Routed] = []
        self._turn: dict[str, int] = {}

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every envelope any indexer took."""
        return [envelope for indexer in self.indexers for envelope in indexer.events]

    def indexed(self) -> list[dict[str, Any]]:
        """Every envelope some indexer took and did not lose."""
        return [envelope for indexer in self.indexers for envelope in indexer.indexed()]

    def event_requests(self) -> list[Routed]:
        """The event POSTs, as routed."""
        return [route for route in self.routed if route.path in EVENT_PATHS]

    def _next(self, kind: str) -> int:
        turn = self._turn.get(kind, 0)
        self._turn[kind] = turn + 1
        return turn % len(self.indexers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope["headers"]
        }
        path = scope["path"].rstrip("/") or "/"
        cookie = _cookie(headers.get("cookie", ""), self.cookie)
        kind = "ack" if path == ACK_PATH else "event"
        if self.sticky and cookie is not None and cookie.isdigit():
            target = int(cookie) % len(self.indexers)
        elif not self.sticky and kind == "ack" and self.ack_route is not None:
            target = self.ack_route
        else:
            target = self._next(kind)
        self.routed.append(Routed(path, headers.get("x-splunk-request-channel"), target, cookie))
        set_cookie = self.sticky and cookie != str(target)

        async def answer(message: Message) -> None:
            if set_cookie and message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [
                    *message.get("headers", []),
                    (b"set-cookie", f"{self.cookie}={target}; Path=/".encode()),
                ]
            await send(message)

        await self.indexers[target](scope, receive, answer)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _next_forced(queue: list[Forced]) -> Forced:
    forced = queue[0]
    forced.times -= 1
    if forced.times <= 0:
        queue.pop(0)
    return forced


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _code(code: int, **extra: Any) -> dict[str, Any]:
    return {"text": CODES[code][1], "code": code, **extra}


async def _answer(
    send: Send, status: int, payload: dict[str, Any] | str, headers: dict[str, str] | None = None
) -> None:
    body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    raw_headers = [(b"content-type", b"application/json; charset=UTF-8")]
    raw_headers += [
        (key.lower().encode(), value.encode()) for key, value in (headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
