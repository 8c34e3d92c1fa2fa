"""Run the ingest application on uvicorn (httptools parser, uvloop event loop)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
import uvloop
from prometheus_client import CollectorRegistry
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from forwarder.config import Config
from forwarder.ingest.app import IngestApp
from forwarder.ingest.durable import DurableWriter
from forwarder.ingest.spool import Spool
from forwarder.kafka_client import KafkaBodyProducer
from forwarder.metrics import IngestMetrics, SpoolMetrics

log = logging.getLogger("forwarder.ingest")


def build_app(config: Config, registry: CollectorRegistry | None = None) -> IngestApp:
    """The ingest application wired to a Kafka producer, the spool and a registry."""
    registry = registry or CollectorRegistry()
    metrics = IngestMetrics(registry)
    settings = config.ingest.spool
    spool = Spool(
        settings.directory,
        max_bytes=settings.max_bytes,
        segment_bytes=settings.segment_bytes,
        metrics=SpoolMetrics(registry),
    )
    writer = DurableWriter(
        KafkaBodyProducer(config, role="ingest"),
        spool,
        produce_timeout=config.ingest.produce_timeout_seconds,
        metrics=metrics,
    )
    return IngestApp(config, writer, registry, metrics)


_LINGER_SECONDS = 2.0


def header_guard_protocol(
    seconds: float,
    on_refused: Callable[[str], None],
    *,
    max_header_bytes: int = 16 * 1024,
    max_headers: int = 100,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the header limits uvicorn lacks.

    A connection slow to send a request's headers is closed (slowloris); a request line and
    headers larger than `max_header_bytes`, or with more than `max_headers` fields, is answered
    431 and the connection closed, before the headers are buffered whole. `on_refused` gets the
    reason: header_timeout or header_too_large.
    """

    class HeaderGuardProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None
        _in_headers = True
        _header_bytes = 0
        _header_count = 0
        _refused = False

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expire(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                on_refused("header_timeout")
                self.transport.close()

        def _refuse(self, message: str) -> None:
            self._refused = True
            self._disarm()
            if self.transport.is_closing():
                return
            on_refused("header_too_large")
            body = orjson.dumps({"error": "header_too_large", "message": message})
            head = (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head + body)
            # A lingering close, as nginx does: closing with the client's unread bytes in our
            # buffer would send a reset that destroys the answer before the client reads it.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_headers:
                # Bytes already received without the headers completing: refuse before
                # httptools buffers more of them.
                if self._header_bytes > max_header_bytes:
                    self._refuse(f"request headers exceed {max_header_bytes} bytes")
                    return
                self._header_bytes += len(data)
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._header_bytes = 0
            self._header_count = 0

        def on_url(self, url: bytes) -> None:
            if self._refused:
                return
            super().on_url(url)
            if len(self.url) > max_header_bytes:
                self._refuse(f"request line exceeds {max_header_bytes} bytes")

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._refused:
                return
            self._header_count += 1
            if self._header_count > max_headers:
                self._refuse(f"more than {max_headers} header fields")
                return
            super().on_header(name, value)
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > max_header_bytes:
                self._refuse(f"request headers exceed {max_header_bytes} bytes")

        def on_headers_complete(self) -> None:
            self._in_headers = False
            if self._refused:
                return
            self._disarm()
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderGuardProtocol


def _reload_certificate(server_config: uvicorn.Config, config: Config) -> None:
    tls = config.ingest.tls
    if tls is None or server_config.ssl is None:
        return
    try:
        # New handshakes use the new chain; established connections keep theirs.
        server_config.ssl.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ValueError) as error:
        log.error(
            "TLS certificate reload failed, keeping the current one",
            extra={"cert_file": str(tls.cert_file), "error": str(error)},
        )
        return
    log.info("TLS certificate reloaded", extra={"cert_file": str(tls.cert_file)})


def server_config(
    config: Config, app: Any, on_header_refused: Callable[[str], None] | None = None
) -> uvicorn.Config:
    """uvicorn settings for the ingest (also used by the benchmark for its baseline app)."""
    settings = config.ingest
    tls = settings.tls
    if on_header_refused is None and isinstance(app, IngestApp):
        metrics = app.metrics
        on_header_refused = lambda reason: metrics.rejected.labels(reason).inc()  # noqa: E731
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",
        http=header_guard_protocol(
            settings.header_timeout_seconds,
            on_header_refused or (lambda reason: None),
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
        ),
        lifespan="on",
        # The access log would write the request path, and the path carries the token.
        access_log=False,
        # The app resolves X-Forwarded-For itself, from `trusted_proxies` only; uvicorn's own
        # handling would believe the header from any local peer.
        proxy_headers=False,
        log_config=None,
        server_header=False,
        date_header=True,
        timeout_keep_alive=int(settings.keep_alive_seconds),
        timeout_graceful_shutdown=10,
        ssl_certfile=str(tls.cert_file) if tls else None,
        ssl_keyfile=str(tls.key_file) if tls else None,
    )


async def serve_app(config: Config, app: Any) -> None:
    """Serve an ASGI app on the ingest's server settings until SIGINT/SIGTERM."""
    uv_config = server_config(config, app)
    uv_config.load()
    server = uvicorn.Server(uv_config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _reload_certificate, uv_config, config)
    log.info(
        "ingest listening",
        extra={
            "host": config.ingest.host,
            "port": config.ingest.port,
            "tls": config.ingest.tls is not None,
            "tokens": len(config.ingest.tokens),
        },
    )
    await server.serve()


def serve(config: Config) -> None:
    """Serve until SIGINT/SIGTERM: stop accepting, finish in-flight requests, flush the producer."""
    if not config.ingest.tokens:
        log.warning("no webhook tokens configured: every webhook will be answered 401")
    uvloop.run(serve_app(config, build_app(config)))
