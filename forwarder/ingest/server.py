"""Run the ingest application on uvicorn (httptools parser, uvloop event loop)."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Callable
from typing import Any

import uvicorn
import uvloop
from prometheus_client import CollectorRegistry

from forwarder.config import Config
from forwarder.ingest.app import IngestApp
from forwarder.ingest.durable import DurableWriter
from forwarder.ingest.spool import Spool
from forwarder.kafka_client import KafkaBodyProducer
from forwarder.metrics import IngestMetrics, SpoolMetrics
from forwarder.uvicorn_compat import header_guard_protocol

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
    producer = KafkaBodyProducer(config, role="ingest")
    for topic in (config.topics.raw, config.topics.invalid):
        metrics.max_record_bytes.labels(topic).set_function(
            functools.partial(producer.max_record_bytes, topic)
        )
    writer = DurableWriter(
        producer,
        spool,
        produce_timeout=config.ingest.produce_timeout_seconds,
        metrics=metrics,
    )
    return IngestApp(config, writer, registry, metrics)


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
