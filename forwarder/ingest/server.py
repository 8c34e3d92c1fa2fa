"""Run the ingest application on uvicorn (httptools parser, uvloop event loop)."""

from __future__ import annotations

import logging

import uvicorn
from prometheus_client import CollectorRegistry

from forwarder.config import Config
from forwarder.ingest.app import IngestApp
from forwarder.kafka_client import KafkaBodyProducer

log = logging.getLogger("forwarder.ingest")


def build_app(config: Config) -> IngestApp:
    """The ingest application wired to a real Kafka producer and a fresh registry."""
    return IngestApp(config, KafkaBodyProducer(config, role="ingest"), CollectorRegistry())


def serve(config: Config) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn finishes in-flight requests before the producer stops."""
    if not config.ingest.tokens:
        log.warning("no webhook tokens configured: every webhook will be answered 401")
    server_config = uvicorn.Config(
        build_app(config),
        host=config.ingest.host,
        port=config.ingest.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # The access log would write the request path, and the path carries the token.
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
    )
    log.info(
        "ingest listening",
        extra={
            "host": config.ingest.host,
            "port": config.ingest.port,
            "tokens": len(config.ingest.tokens),
        },
    )
    uvicorn.Server(server_config).run()
