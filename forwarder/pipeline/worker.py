"""Run the Faust apps with their own Prometheus listener (Faust's aiohttp web server stays off)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import faust
import prometheus_client
from prometheus_client import CollectorRegistry

from forwarder import logs
from forwarder.config import Config, ConfigError
from forwarder.kafka_client import ensure_topics
from forwarder.mode_compat import StepBeforeStop

log = logging.getLogger("forwarder.worker")


class _Worker(StepBeforeStop, faust.Worker):
    """Faust's worker, running the app's `before_stop` step when a signal asks it to stop."""

    def __init__(self, app: faust.App, *, grace_seconds: float, **kwargs: Any) -> None:
        from forwarder.pipeline.app import before_stop

        super().__init__(app, **kwargs)
        self.grace_seconds = grace_seconds
        self.before_stop_step = before_stop.get(app)


def _run_faust(app: faust.App, config: Config) -> None:
    worker = _Worker(
        app,
        grace_seconds=config.dedupe.shutdown_flush_seconds,
        loglevel=config.log_level,
        logging_config=logs.logging_dict(config.log_level),
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()


def run(config: Config, config_path: Path | None = None, *, sinks: bool = True) -> None:
    """Create the topics, start one process per sink, serve /metrics, run normalize until stopped."""
    from forwarder.pipeline.app import changelog_topics, create_app
    from forwarder.pipeline.children import SinkProcesses

    detections = sinks and config.detections.enabled
    if detections:
        check_rules(config)
    registry = CollectorRegistry()
    app = create_app(config, registry)
    asyncio.run(ensure_topics(config, extra=changelog_topics(app)))
    children = None
    if sinks and (config.sinks or detections):
        children = SinkProcesses(
            [sink.name for sink in config.sinks], config_path, registry, detections=detections
        )
    if config.worker.metrics_port:
        served = registry if children is None else children.exposition(registry)
        prometheus_client.start_http_server(
            config.worker.metrics_port, addr=config.worker.metrics_host, registry=served
        )
    log.info(
        "worker starting",
        extra={
            "app_id": config.worker.app_id,
            "sinks": [sink.name for sink in config.sinks] if sinks else [],
            "metrics_port": config.worker.metrics_port,
        },
    )
    if children is not None:
        children.start()
    try:
        _run_faust(app, config)
    finally:
        if children is not None:
            children.stop()


def check_rules(config: Config) -> int:
    """The number of rules the detections process loads; raises ConfigError (naming the key)
    for rules it could not load, so the worker refuses to start and `config check` says why."""
    try:
        from sigma.exceptions import SigmaError

        from forwarder.detections.engine import UnsupportedRule
        from forwarder.detections.export import RuleError
        from forwarder.pipeline.alerts import load_ruleset
    except ImportError as error:
        raise ConfigError(
            f"detections.enabled: pySigma is not installed ({error.name}): "
            "pip install 'aha-siem-forwarder[detections]'"
        ) from None
    try:
        rules = load_ruleset(config)
    except (RuleError, UnsupportedRule, SigmaError, OSError) as error:
        raise ConfigError(f"detections.rules_dir: {error}") from None
    return len(rules.detections) + len(rules.correlations)


def run_sink(config: Config, name: str, metrics_host: str, metrics_port: int) -> None:
    """Run one sink's Faust app (its own consumer group) until SIGINT/SIGTERM."""
    from forwarder.pipeline.sink_app import create_sink_app

    sink_config = next((sink for sink in config.sinks if sink.name == name), None)
    if sink_config is None:
        known = ", ".join(sink.name for sink in config.sinks) or "none configured"
        raise ConfigError(f"sinks: no sink named {name!r} (known: {known})")
    registry = CollectorRegistry()
    app = create_sink_app(config, sink_config, registry)
    if metrics_port:
        prometheus_client.start_http_server(metrics_port, addr=metrics_host, registry=registry)
    log.info("sink starting", extra={"sink": name, "type": sink_config.type})
    _run_faust(app, config)
