"""The webhook ingest shim: a plain ASGI application, no web framework.

Routes: ``POST /v1/aha/{token}`` (a webhook body, durable in Kafka or the spool before the
answer), ``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from forwarder import logs, records
from forwarder.config import Config, TokenConfig
from forwarder.ingest.durable import RecordTooLarge
from forwarder.ingest.guards import KeyedRateLimiter, allowed, client_address
from forwarder.ingest.spool import SpoolFull
from forwarder.metrics import IngestMetrics

log = logging.getLogger("forwarder.ingest")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WEBHOOK_PREFIX = "/v1/aha/"
_JSON_TYPES = frozenset({"application/json"})
_GZIP = frozenset({"gzip", "x-gzip"})


class Writer(Protocol):
    """Where bodies go; `write` returns only once the record is durable (Kafka ack or fsync)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> str: ...

    async def ready(self) -> bool: ...


class Rejected(Exception):
    """A request answered with an error: status, error code, message, optional headers."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or []


class InvalidBody(ValueError):
    """A body that is not a webhook: the message says why."""


def validate_body(body: bytes) -> dict[str, Any]:
    """Parse a webhook body: a JSON object with `event` naming an object beside it."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidBody(f"body is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise InvalidBody("body must be a JSON object")
    event = parsed.get("event")
    if not isinstance(event, str) or not event:
        raise InvalidBody("body must have a non-empty string field `event`")
    if not isinstance(parsed.get(event), dict):
        raise InvalidBody(f"body must have an object under `{event}` (the `event` field's value)")
    return parsed


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class TokenTable:
    """Configured tokens, matched by SHA-256 in constant time."""

    def __init__(self, tokens: tuple[TokenConfig, ...]) -> None:
        self._tokens = [(token, bytes.fromhex(token.sha256)) for token in tokens]

    def match(self, presented: str) -> TokenConfig | None:
        """The token presented, or None."""
        digest = _digest(presented)
        found = None
        # Compare against every token so timing says nothing about which one (or none) matched.
        for token, expected in self._tokens:
            if hmac.compare_digest(digest, expected) and found is None:
                found = token
        return found


def basic_credentials_match(token: TokenConfig, authorization: str | None) -> bool:
    """Whether the request's HTTP Basic credentials are the token's (always true without any)."""
    if token.basic_auth is None:
        return True
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    username, sep, password = decoded.partition(":")
    user_ok = hmac.compare_digest(_digest(username), _digest(token.basic_auth.username))
    password_ok = hmac.compare_digest(
        _digest(password), bytes.fromhex(token.basic_auth.password_sha256)
    )
    return bool(sep) and user_ok and password_ok


# The request headers the webhook route reads.
_READ_HEADERS = frozenset(
    {
        b"authorization",
        b"content-encoding",
        b"content-length",
        b"content-type",
        b"x-forwarded-for",
        b"x-request-id",
    }
)


def _read_headers(scope: Scope) -> dict[bytes, str]:
    """The first value of each header in _READ_HEADERS, in one pass over the request's."""
    found: dict[bytes, str] = {}
    for key, value in scope.get("headers", ()):
        if key in _READ_HEADERS and key not in found:
            found[key] = bytes(value).decode("latin-1")
    return found


class IngestApp:
    """ASGI application of the ingest shim."""

    def __init__(
        self,
        config: Config,
        writer: Writer,
        registry: CollectorRegistry,
        metrics: IngestMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._settings = config.ingest
        self._writer = writer
        self._registry = registry
        self.metrics = metrics or IngestMetrics(registry)
        self._tokens = TokenTable(config.ingest.tokens)
        self._auth_failures = KeyedRateLimiter(
            config.ingest.auth_failures_per_minute / 60.0, config.ingest.auth_failure_burst
        )
        self._invalid_budget = KeyedRateLimiter(
            config.ingest.invalid_per_second, config.ingest.invalid_burst, max_keys=1
        )
        self._clock = clock
        self._inflight = 0
        self._started = False
        # Metric children by label values, resolved once rather than per request.
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        route, status = await self._dispatch(scope, receive, send)
        counter = self._counted.get((route, status))
        if counter is None:
            counter = self._counted[route, status] = self.metrics.requests.labels(
                route, str(status)
            )
        counter.inc()
        timer = self._timed.get(route)
        if timer is None:
            timer = self._timed[route] = self.metrics.request_duration.labels(route)
        timer.observe(time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._writer.start()
                except Exception as error:  # the server must not come up half-ready
                    log.error("ingest start-up failed", extra={"error": repr(error)})
                    await send({"type": "lifespan.startup.failed", "message": repr(error)})
                    return
                self._started = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._writer.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> tuple[str, int]:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(WEBHOOK_PREFIX):
            if method != "POST":
                return "webhook", await _json(
                    send, 405, {"error": "method_not_allowed", "message": "use POST"}
                )
            return "webhook", await self._webhook(scope, receive, send)
        if path == "/healthz":
            return "healthz", await _json(send, 200, {"status": "ok"})
        if path == "/readyz":
            if self._started and await self._writer.ready():
                return "readyz", await _json(send, 200, {"status": "ready"})
            message = "Kafka is not reachable and the spool cannot take records"
            return "readyz", await _json(send, 503, {"error": "not_ready", "message": message})
        if path == "/metrics":
            payload = generate_latest(self._registry)
            await _respond(send, 200, payload, CONTENT_TYPE_LATEST.encode())
            return "metrics", 200
        return "other", await _json(send, 404, {"error": "not_found", "message": "no such route"})

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> int:
        # One id per webhook: in the answer (body and X-Request-Id), in every log line about it,
        # and on the Kafka record, so an operator can follow one delivery through the pipeline.
        headers = _read_headers(scope)
        request_id = _request_id(headers.get(b"x-request-id"))
        token = logs.request_id.set(request_id)
        answer_headers = [(b"x-request-id", request_id.encode())]
        try:
            if self._inflight >= self._settings.max_concurrent_requests:
                self.metrics.rejected.labels("overloaded").inc()
                payload = {
                    "error": "overloaded",
                    "message": "too many requests in progress",
                    "request_id": request_id,
                }
                return await _json(send, 503, payload, [(b"retry-after", b"1"), *answer_headers])
            self._inflight += 1
            try:
                return await self._accept(scope, headers, receive, send, request_id, answer_headers)
            except Rejected as rejection:
                self.metrics.rejected.labels(rejection.error).inc()
                payload = {
                    "error": rejection.error,
                    "message": rejection.message,
                    "request_id": request_id,
                }
                return await _json(
                    send, rejection.status, payload, [*rejection.headers, *answer_headers]
                )
            finally:
                self._inflight -= 1
        finally:
            logs.request_id.reset(token)

    def _authenticate(self, scope: Scope, headers: dict[bytes, str], client: str) -> TokenConfig:
        now = self._clock()
        if not allowed(client, self._settings.allowed_cidrs):
            raise Rejected(403, "forbidden", "client address not allowed")
        if self._auth_failures.exhausted(client, now):
            raise Rejected(
                429, "rate_limited", "too many failed authentications", [(b"retry-after", b"60")]
            )
        token_text = scope["path"][len(WEBHOOK_PREFIX) :]
        token = self._tokens.match(token_text) if token_text and "/" not in token_text else None
        if token is None:
            self._auth_failures.consume(client, now)
            raise Rejected(401, "unauthorized", "unknown webhook token")
        if not basic_credentials_match(token, headers.get(b"authorization")):
            self._auth_failures.consume(client, now)
            raise Rejected(
                401,
                "unauthorized",
                "HTTP Basic credentials required",
                [(b"www-authenticate", b'Basic realm="aha-siem", charset="UTF-8"')],
            )
        return token

    async def _accept(
        self,
        scope: Scope,
        request_headers: dict[bytes, str],
        receive: Receive,
        send: Send,
        request_id: str,
        answer_headers: list[tuple[bytes, bytes]],
    ) -> int:
        peer = scope.get("client")
        client = client_address(
            peer[0] if peer else "",
            request_headers.get(b"x-forwarded-for"),
            self._settings.trusted_proxies,
        )
        token = self._authenticate(scope, request_headers, client)
        content_type = (request_headers.get(b"content-type") or "").split(";")[0].strip().lower()
        if content_type and content_type not in _JSON_TYPES:
            raise Rejected(415, "unsupported_media_type", "Content-Type must be application/json")
        encoding = (request_headers.get(b"content-encoding") or "identity").strip().lower()
        if encoding not in _GZIP and encoding != "identity":
            raise Rejected(415, "unsupported_encoding", "Content-Encoding must be gzip or identity")
        gzip = encoding in _GZIP
        declared = request_headers.get(b"content-length")
        body = await self._read_body(declared, receive, gzip=gzip)
        self.metrics.received_bytes.inc(len(body))
        headers = {
            records.HEADER_RECEIVED_AT: records.utc_now_iso(),
            records.HEADER_SOURCE: "webhook",
            records.HEADER_SOURCE_IP: client[:64],
            records.HEADER_TOKEN_ID: token.name,
            records.HEADER_REQUEST_ID: request_id,
        }
        problem = None
        try:
            if gzip:
                body = _gunzip(body, self._settings.max_body_bytes)
            parsed = validate_body(body)
        except InvalidBody as error:
            problem = str(error)
        body_sha256 = hashlib.sha256(body).hexdigest()
        headers[records.HEADER_BODY_SHA256] = body_sha256
        if problem is not None:
            await self._keep_invalid(body, body_sha256, headers, problem)
            raise Rejected(400, "invalid_body", problem)
        key = records.record_key(parsed, body_sha256)
        await self._write(self._config.topics.raw, body, key, headers)
        accepted = {"status": "accepted", "body_sha256": body_sha256, "request_id": request_id}
        return await _json(send, 202, accepted, answer_headers)

    async def _write(self, topic: str, body: bytes, key: bytes, headers: dict[str, str]) -> None:
        try:
            await self._writer.write(topic, body, key, records.encode_headers(headers))
        except RecordTooLarge as error:
            # Answered before anything is stored: a 202 would promise a record Kafka refuses.
            log.warning(
                "body too large for Kafka", extra={"bytes": len(body), "detail": str(error)}
            )
            raise Rejected(
                413,
                "too_large",
                f"body of {len(body)} bytes is too large for Kafka with its headers "
                f"(record limit {error.limit} bytes)",
            ) from None
        except SpoolFull as error:
            log.error("spool full, refusing webhook", extra={"detail": str(error)})
            raise Rejected(
                503,
                "spool_full",
                "Kafka is unavailable and the spool is full",
                [(b"retry-after", b"5")],
            ) from None
        except Exception as error:
            log.error(
                "body not durable", extra={"error": type(error).__name__, "detail": str(error)}
            )
            raise Rejected(503, "unavailable", "the body could not be stored") from None

    async def _keep_invalid(
        self, body: bytes, body_sha256: str, headers: dict[str, str], error: str
    ) -> None:
        if not self._invalid_budget.consume("", self._clock()):
            self.metrics.invalid_dropped.labels("rate_limited").inc()
            return
        error_bytes = error.encode()[: records.MAX_ERROR_BYTES].decode("utf-8", "ignore")
        headers = {**headers, records.HEADER_ERROR: error_bytes}
        topic, key = self._config.topics.invalid, body_sha256.encode()
        try:
            try:
                await self._writer.write(topic, body, key, records.encode_headers(headers))
            except RecordTooLarge as too_large:
                # Kept for forensics as its first bytes, with the size it had.
                kept = body[: max(0, len(body) - (too_large.size - too_large.limit) - 64)]
                headers[records.HEADER_TRUNCATED_FROM] = str(len(body))
                await self._writer.write(topic, kept, key, records.encode_headers(headers))
                self.metrics.invalid_truncated.inc()
        except Exception as failure:
            self.metrics.invalid_dropped.labels("not_stored").inc()
            log.warning("invalid body not kept", extra={"error": type(failure).__name__})

    async def _read_body(self, declared: str | None, receive: Receive, *, gzip: bool) -> bytes:
        limit = self._settings.max_body_bytes
        if not gzip and declared and declared.isdigit() and int(declared) > limit:
            raise Rejected(413, "too_large", f"body exceeds {limit} bytes")
        try:
            async with asyncio.timeout(self._settings.body_timeout_seconds):
                raw = await _receive_all(receive, limit)
        except TimeoutError:
            raise Rejected(408, "body_timeout", "the body did not arrive in time") from None
        if raw is None:
            raise Rejected(413, "too_large", f"body exceeds {limit} bytes")
        return raw


async def _receive_all(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it exceeds `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Rejected(400, "disconnected", "client went away before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _gunzip(raw: bytes, limit: int) -> bytes:
    """Decode a gzip body, refusing one that would expand past `limit` (no zip bombs)."""
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = decoder.decompress(raw, limit + 1)
    except zlib.error as error:
        raise InvalidBody(f"body is not valid gzip: {error}") from None
    if len(body) > limit or decoder.unconsumed_tail:
        raise Rejected(413, "too_large", f"decompressed body exceeds {limit} bytes")
    if not decoder.eof:
        raise InvalidBody("gzip body is truncated")
    return body


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _request_id(offered: str | None) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new random id."""
    if offered and _REQUEST_ID.match(offered):
        return offered
    # 128 random bits in hex, as uuid4().hex without building a UUID.
    return os.urandom(16).hex()


async def _respond(
    send: Send,
    status: int,
    payload: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": payload})


async def _json(
    send: Send, status: int, payload: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> int:
    await _respond(send, status, orjson.dumps(payload), b"application/json", extra)
    return status
