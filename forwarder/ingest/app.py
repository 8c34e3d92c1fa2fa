"""The webhook ingest shim: a plain ASGI application, no web framework.

Routes: ``POST /v1/aha/{token}`` (a webhook body, produced to the raw topic before the answer),
``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from forwarder import records
from forwarder.config import Config, TokenConfig
from forwarder.metrics import IngestMetrics

log = logging.getLogger("forwarder.ingest")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WEBHOOK_PREFIX = "/v1/aha/"


class BodyProducer(Protocol):
    """Where accepted and invalid bodies go; `send` returns only once the record is durable."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None: ...

    async def ready(self) -> bool: ...


class BodyTooLarge(Exception):
    """The request body exceeds the configured limit."""


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


class TokenTable:
    """Configured tokens, matched by SHA-256 in constant time."""

    def __init__(self, tokens: tuple[TokenConfig, ...]) -> None:
        self._tokens = [(token.name, bytes.fromhex(token.sha256)) for token in tokens]

    def match(self, presented: str) -> str | None:
        """The name of the token presented, or None."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        # Compare against every token so timing says nothing about which one (or none) matched.
        for name, expected in self._tokens:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found


class IngestApp:
    """ASGI application of the ingest shim."""

    def __init__(
        self,
        config: Config,
        producer: BodyProducer,
        registry: CollectorRegistry,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self._config = config
        self._producer = producer
        self._registry = registry
        self._metrics = metrics or IngestMetrics(registry)
        self._tokens = TokenTable(config.ingest.tokens)
        self._started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        route, status = await self._dispatch(scope, receive, send)
        self._metrics.requests.labels(route, str(status)).inc()
        self._metrics.request_duration.labels(route).observe(time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._producer.start()
                except Exception as error:  # the server must not come up half-ready
                    log.error("ingest start-up failed", extra={"error": repr(error)})
                    await send({"type": "lifespan.startup.failed", "message": repr(error)})
                    return
                self._started = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._producer.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> tuple[str, int]:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(WEBHOOK_PREFIX):
            if method != "POST":
                return "webhook", await _json(send, 405, "method_not_allowed", "use POST")
            return "webhook", await self._webhook(scope, receive, send)
        if path == "/healthz":
            return "healthz", await _json(send, 200, None, None, {"status": "ok"})
        if path == "/readyz":
            ready = self._started and await self._producer.ready()
            if ready:
                return "readyz", await _json(send, 200, None, None, {"status": "ready"})
            return "readyz", await _json(send, 503, "not_ready", "Kafka is not reachable")
        if path == "/metrics":
            payload = generate_latest(self._registry)
            await _respond(send, 200, payload, CONTENT_TYPE_LATEST.encode())
            return "metrics", 200
        return "other", await _json(send, 404, "not_found", "no such route")

    def _reject(self, reason: str) -> None:
        self._metrics.rejected.labels(reason).inc()

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> int:
        token = scope["path"][len(WEBHOOK_PREFIX) :]
        token_name = self._tokens.match(token) if token and "/" not in token else None
        if token_name is None:
            self._reject("unauthorized")
            return await _json(send, 401, "unauthorized", "unknown webhook token")
        try:
            body = await _read_body(scope, receive, self._config.ingest.max_body_bytes)
        except BodyTooLarge:
            self._reject("too_large")
            limit = self._config.ingest.max_body_bytes
            return await _json(send, 413, "too_large", f"body exceeds {limit} bytes")
        self._metrics.received_bytes.inc(len(body))
        body_sha256 = hashlib.sha256(body).hexdigest()
        client = scope.get("client")
        headers = {
            records.HEADER_RECEIVED_AT: records.utc_now_iso(),
            records.HEADER_SOURCE: "webhook",
            records.HEADER_SOURCE_IP: client[0] if client else "",
            records.HEADER_TOKEN_ID: token_name,
            records.HEADER_BODY_SHA256: body_sha256,
        }
        topics = self._config.topics
        try:
            parsed = validate_body(body)
        except InvalidBody as error:
            self._reject("invalid_body")
            headers[records.HEADER_ERROR] = str(error)
            await self._produce(topics.invalid, body, body_sha256.encode(), headers)
            return await _json(send, 400, "invalid_body", str(error))
        key = records.record_key(parsed, body_sha256)
        if not await self._produce(topics.raw, body, key, headers):
            self._reject("kafka_unavailable")
            return await _json(send, 503, "unavailable", "Kafka did not acknowledge in time")
        return await _json(
            send, 202, None, None, {"status": "accepted", "body_sha256": body_sha256}
        )

    async def _produce(self, topic: str, value: bytes, key: bytes, headers: dict[str, str]) -> bool:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(
                self._producer.send(topic, value, key, records.encode_headers(headers)),
                timeout=self._config.ingest.produce_timeout_seconds,
            )
        except Exception as error:
            self._metrics.produce_errors.labels(topic).inc()
            log.warning(
                "kafka produce failed",
                extra={"topic": topic, "error": type(error).__name__, "detail": str(error)},
            )
            return False
        self._metrics.produce_duration.labels(topic).observe(time.perf_counter() - started)
        return True


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Send, status: int, payload: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _json(
    send: Send,
    status: int,
    error: str | None,
    message: str | None,
    payload: dict[str, Any] | None = None,
) -> int:
    body = payload if payload is not None else {"error": error, "message": message}
    await _respond(send, status, orjson.dumps(body), b"application/json")
    return status
