"""Run the Faust worker with its own Prometheus listener (Faust's aiohttp web server stays off)."""

from __future__ import annotations

import asyncio
import logging

import faust
import prometheus_client
from prometheus_client import CollectorRegistry

from forwarder import logs
from forwarder.config import Config
from forwarder.kafka_client import ensure_topics
from forwarder.pipeline.app import create_app

log = logging.getLogger("forwarder.worker")


def run(config: Config) -> None:
    """Create the topics, serve /metrics, run the Faust worker until SIGINT/SIGTERM."""
    asyncio.run(ensure_topics(config))
    registry = CollectorRegistry()
    app = create_app(config, registry)
    if config.worker.metrics_port:
        prometheus_client.start_http_server(
            config.worker.metrics_port, addr=config.worker.metrics_host, registry=registry
        )
    log.info(
        "worker starting",
        extra={
            "app_id": config.worker.app_id,
            "sinks": [sink.name for sink in config.sinks],
            "metrics_port": config.worker.metrics_port,
        },
    )
    worker = faust.Worker(
        app,
        loglevel=config.log_level,
        logging_config=logs.logging_dict(config.log_level),
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
