"""A generic HTTP event receiver (ASGI) with switches for each failure, recording what it got.

Answers follow HTTP semantics (RFC 9110): 401 with `WWW-Authenticate` when credentials are
missing or wrong, `Retry-After` on the statuses that ask for a later retry, 415 for a body that
is neither JSON nor lines, 400 for a body that claims gzip and is not.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tests.fakes.server import read_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it; `body` is the decoded (gunzipped) body."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    body: bytes
    status: int

    def events(self) -> list[Any]:
        """The events of the body: a JSON array's items or one JSON value per line."""
        if self.headers.get("content-type", "").startswith("application/json"):
            parsed = orjson.loads(self.body)
            assert isinstance(parsed, list), "a JSON body must be an array"
            return parsed
        return [orjson.loads(line) for line in self.body.splitlines()]

    def lines(self) -> list[bytes]:
        """The body's lines, for formats that are not JSON."""
        return self.body.splitlines()


class HttpReceiver:
    """ASGI app. Switches can be changed while it serves (from the test's thread)."""

    def __init__(
        self,
        *,
        statuses: Iterable[int] = (),
        default_status: int = 200,
        retry_after: str | None = None,
        delay_seconds: float = 0.0,
        authorization: str | None = None,
        health_path: str = "/health",
        health_status: int = 200,
    ) -> None:
        self.statuses: deque[int] = deque(statuses)
        """Statuses for the next event requests, in order; then `default_status`."""
        self.default_status = default_status
        self.retry_after = retry_after
        """`Retry-After` value sent with every error answer; None: not sent."""
        self.delay_seconds = delay_seconds
        """Wait before answering: a slow receiver."""
        self.authorization = authorization
        """Exact `Authorization` value required; None: no check."""
        self.health_path = health_path
        self.health_status = health_status
        self.requests: list[Received] = []
        """Every event request (not health checks), with the status it was answered."""
        self.health_checks = 0
        self._lock = threading.Lock()

    def accepted(self) -> list[Received]:
        """The event requests answered with 2xx."""
        with self._lock:
            return [request for request in self.requests if 200 <= request.status < 300]

    def accepted_events(self) -> list[Any]:
        """Every event of every accepted request, in arrival order."""
        return [event for request in self.accepted() for event in request.events()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        raw = await read_body(receive)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if scope["method"] == "GET" and scope["path"] == self.health_path:
            with self._lock:
                self.health_checks += 1
            if (
                self.authorization is not None
                and headers.get("authorization") != self.authorization
            ):
                await _answer(send, 401, {"error": "unauthorized"}, _CHALLENGE)
                return
            await _answer(send, self.health_status, {"status": self.health_status})
            return
        status, answer, extra, body = self._judge(scope["method"], headers, raw)
        with self._lock:
            self.requests.append(
                Received(scope["method"], scope["path"], headers, raw, body, status)
            )
        await _answer(send, status, answer, extra)

    def _judge(
        self, method: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]], bytes]:
        """Status, answer, extra headers, and the decoded body."""
        if method not in ("POST", "PUT"):
            return 405, {"error": "method not allowed"}, [(b"allow", b"POST, PUT")], raw
        if self.authorization is not None and headers.get("authorization") != self.authorization:
            return 401, {"error": "unauthorized"}, _CHALLENGE, raw
        if headers.get("content-encoding") == "gzip":
            try:
                decoded = gzip.decompress(raw)
            except (OSError, EOFError):
                return 400, {"error": "body is not gzip"}, [], raw
        else:
            decoded = raw
        if not _parses(headers.get("content-type", ""), decoded):
            return 415, {"error": "body does not match its content type"}, [], decoded
        with self._lock:
            status = self.statuses.popleft() if self.statuses else self.default_status
        extra: list[tuple[bytes, bytes]] = []
        if status >= 400 and self.retry_after is not None:
            extra.append((b"retry-after", self.retry_after.encode()))
        if 200 <= status < 300:
            return status, {"accepted": True}, extra, decoded
        return status, {"error": f"configured status {status}"}, extra, decoded


_CHALLENGE = [(b"www-authenticate", b'Bearer realm="events", Basic realm="events"')]


def _parses(content_type: str, body: bytes) -> bool:
    try:
        if content_type.startswith("application/json"):
            return isinstance(orjson.loads(body), list)
        if content_type.startswith("application/x-ndjson"):
            for line in body.splitlines():
                orjson.loads(line)
            return body.endswith(b"\n")
    except orjson.JSONDecodeError:
        return False
    # text/plain and the like: any lines go.
    return True


async def _answer(
    send: Send, status: int, payload: dict[str, Any], extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
