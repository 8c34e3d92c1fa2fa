"""The detections process: the Sigma rules on the events topic, ECS alerts on the alerts topic.

A Faust app and consumer group of its own (`<app_id>-detections`), in a process the worker starts
and supervises as it does its sinks': the rules' cost never slows normalization, and a rule that
fails never holds back a sink. Two agents, wired to the pure engine (forwarder/detections/engine.py):

- `detect` reads the events topic. Each event goes through the single-event rules; an alerting
  rule's alert is produced to the alerts topic at once, and an event a correlation counts is
  produced to the matches topic keyed by rule and group, so that one group's events meet in one
  partition whichever records they are about.
- `correlate` reads the matches topic and keeps each group's window in the table
  `detections-windows` (RocksDB, changelog in Kafka, co-partitioned with the matches topic): the
  events of a window and the fact that it alerted survive a restart or a move to another worker.

Both await Kafka's acknowledgement before moving past an event (which acks it), so a crash
delivers again and never loses. Redelivery is harmless: a window counts an event id once and
ignores the events of a span it alerted for. The one gap left is a crash between an alert's
acknowledgement and the write of its window (no transaction spans both): the alert is produced
again with the same key and `event.id` (the rule, group and first event), a duplicate a SIEM sees
as such, and one the Elasticsearch sink writes once (`_id` = event id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import faust
import orjson
import prometheus_client
from prometheus_client import CollectorRegistry

from forwarder.config import Config
from forwarder.detections import engine
from forwarder.kafka_client import ensure_topics, matches_topic_name
from forwarder.metrics import DetectionMetrics
from forwarder.pipeline.app import Record, changelog_topics, new_faust_app, produce_acked
from forwarder.pipeline.sensors import FaustSensor

log = logging.getLogger("forwarder.detections")

Message = tuple[bytes, bytes, str]
"""Key, value, and the rule it is counted under when Kafka refuses it."""


def detections_app_id(config: Config) -> str:
    """The Faust app id, and so the consumer group, of the detections process."""
    return f"{config.worker.app_id}-detections"


def load_ruleset(config: Config) -> engine.RuleSet:
    """The configured rules, compiled (raises RuleError or UnsupportedRule, naming the rule)."""
    from forwarder.detections.export import RULES_DIR

    return engine.load(config.detections.rules_dir or RULES_DIR)


def alerting(config: Config, detection: engine.Detection) -> bool:
    """Whether a single-event rule raises alerts of its own (else it only feeds correlations)."""
    settings = config.detections
    info = detection.info
    level = engine.LEVELS.index(info.level) if info.level in engine.LEVELS else 2
    return (
        level >= engine.LEVELS.index(settings.min_level)
        and info.name not in settings.disabled_rules
    )


class Detector:
    """What `detect` does with one event, without Kafka: the alerts and matches to produce."""

    def __init__(self, config: Config, ruleset: engine.RuleSet, metrics: DetectionMetrics) -> None:
        self.ruleset = ruleset
        self.metrics = metrics
        self.alerting = {d.info.name for d in ruleset.detections if alerting(config, d)}
        self.alerting |= {
            c.info.name
            for c in ruleset.correlations
            if c.info.name not in config.detections.disabled_rules
        }
        self.counted: dict[str, list[engine.Correlation]] = {}
        for correlation in ruleset.correlations:
            for base in correlation.bases:
                self.counted.setdefault(base, []).append(correlation)
        metrics.rules.labels("event").set(len(ruleset.detections))
        metrics.rules.labels("correlation").set(len(ruleset.correlations))
        for rule in ruleset.detections:
            metrics.matches.labels(rule.info.name)
        for name in sorted(self.alerting):
            known = ruleset.by_name(name)
            if known is not None:
                metrics.alerts.labels(known.info.id, name)

    def evaluate(self, value: bytes, now: float) -> tuple[list[Message], list[Message]]:
        """The alerts (to the alerts topic) and matches (to the matches topic) of one event."""
        metrics = self.metrics
        try:
            event = orjson.loads(value)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            rows = engine.rows(event, self.ruleset.wanted)
        except ValueError as error:
            metrics.errors.labels("", "decode").inc()
            log.warning("event not evaluated", extra={"error.type": type(error).__name__})
            return [], []
        metrics.events.inc()
        alerts: list[Message] = []
        matches: list[Message] = []
        for detection in self.ruleset.detections:
            name = detection.info.name
            try:
                if not any(detection.predicate(row) for row in rows):
                    continue
            except Exception as error:  # one rule's bug must not stop the others
                metrics.errors.labels(name, "evaluate").inc()
                log.error(
                    "rule evaluation failed",
                    extra={"rule": name, "error.type": type(error).__name__},
                )
                continue
            metrics.matches.labels(name).inc()
            if name in self.alerting:
                alert = engine.event_alert(detection, event, now)
                alerts.append((alert["event"]["id"].encode(), orjson.dumps(alert), name))
            for correlation in self.counted.get(name, []):
                match = self._match(correlation, event)
                if match is not None:
                    matches.append(match)
        return alerts, matches

    def _match(self, correlation: engine.Correlation, event: dict[str, Any]) -> Message | None:
        name = correlation.info.name
        group = engine.group_of(correlation, event)
        at = engine.event_time(event)
        event_id = (event.get("event") or {}).get("id")
        if group is None or at is None or event_id is None:
            self.metrics.correlated.labels(name, "no_group").inc()
            return None
        value = {
            "rule": name,
            "group": group,
            "at": at,
            "id": str(event_id),
            "organization": event.get("organization"),
        }
        return engine.state_key(correlation, group), orjson.dumps(value), name


class Correlator:
    """What `correlate` does with one match, without Kafka: the window's new value and an alert."""

    def __init__(self, config: Config, ruleset: engine.RuleSet, metrics: DetectionMetrics) -> None:
        self.ruleset = ruleset
        self.metrics = metrics
        self.disabled = set(config.detections.disabled_rules)
        for correlation in ruleset.correlations:
            for outcome in ("counted", "duplicate", "covered", "late", "no_group"):
                metrics.correlated.labels(correlation.info.name, outcome)

    def step(
        self, value: bytes, stored: bytes | None, now: float
    ) -> tuple[bytes | None, Message | None]:
        """The window to store (None: unchanged) and the alert to produce first, if any."""
        metrics = self.metrics
        try:
            match = orjson.loads(value)
            name = str(match["rule"])
            group = [str(item) for item in match["group"]]
            at, event_id = float(match["at"]), str(match["id"])
        except (ValueError, KeyError, TypeError):
            metrics.errors.labels("", "decode").inc()
            return None, None
        correlation = self.ruleset.by_name(name)
        if not isinstance(correlation, engine.Correlation):
            # A rule removed since the match was produced: nothing counts it any more.
            metrics.errors.labels(name, "unknown_rule").inc()
            return None, None
        try:
            window = engine.Window.decode(stored)
        except ValueError as error:
            metrics.errors.labels(name, "state").inc()
            log.error(
                "correlation window unreadable, started again",
                extra={"rule": name, "error.type": type(error).__name__},
            )
            window = engine.Window()
        outcome, burst = engine.add(correlation, window, at, event_id)
        metrics.correlated.labels(name, outcome).inc()
        if outcome != "counted":
            return None, None
        alert: Message | None = None
        if burst is not None and name not in self.disabled:
            doc = engine.burst_alert(correlation, group, burst, now, match.get("organization"))
            alert = (doc["event"]["id"].encode(), orjson.dumps(doc), name)
        return window.encode(), alert


async def produce(
    app: faust.App, topic: str, messages: Sequence[Message], metrics: DetectionMetrics
) -> list[Message]:
    """Produce every message and return those Kafka acknowledged, retrying the others until it
    does; one Kafka refuses for good is counted (`kafka_refused`), logged and left out."""

    def refused(message: Message, error: BaseException) -> None:
        metrics.errors.labels(message[2], "kafka_refused").inc()
        log.error(
            "kafka refused an alert for good, dropped",
            extra={"topic": topic, "rule": message[2], "error.type": type(error).__name__},
        )

    return await produce_acked(app, topic, messages, _as_record, refused)


def _as_record(message: Message) -> Record:
    return message[0], message[1], None


def create_detections_app(config: Config, registry: CollectorRegistry) -> faust.App:
    """The detections app: `detect` on the events topic, `correlate` on the matches topic."""
    metrics = DetectionMetrics(registry)
    ruleset = load_ruleset(config)
    detector = Detector(config, ruleset, metrics)
    correlator = Correlator(config, ruleset, metrics)
    alerts_topic = config.detections.alerts_topic
    matches_name = matches_topic_name(config)
    datadir = config.worker.data_dir / "detections"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = new_faust_app(
        config,
        detections_app_id(config),
        role="detections",
        # The windows must survive restarts: RocksDB on local disk, its changelog in Kafka.
        store="rocksdb://",
        datadir=datadir,
    )
    app.monitor = FaustSensor(registry, app="detections")
    if not config.detections.from_beginning:
        # Only where the group has no committed offsets: a restart goes on where it stopped.
        app.conf.consumer_auto_offset_reset = "latest"
    windows = app.Table(
        "detections-windows",
        default=None,
        partitions=config.topics.partitions,
        key_type=bytes,
        value_type=bytes,
        options=config.worker.rocksdb.table_options(),
        help="Per correlation rule and group: the events that may make a burst, the last alert.",
    )
    events_topic = app.topic(config.topics.events, key_serializer="raw", value_serializer="raw")
    matches_topic = app.topic(matches_name, key_serializer="raw", value_serializer="raw")

    def count_alerts(sent: list[Message]) -> None:
        for _, _, name in sent:
            rule = ruleset.by_name(name)
            if rule is not None:
                metrics.alerts.labels(rule.info.id, name).inc()

    async def detect(stream: faust.StreamT) -> None:
        async for event in stream.events():
            alerts, matches = detector.evaluate(event.message.value or b"", time.time())
            if alerts:
                count_alerts(await produce(app, alerts_topic, alerts, metrics))
            if matches:
                await produce(app, matches_name, matches, metrics)

    async def correlate(stream: faust.StreamT) -> None:
        async for event in stream.events():
            key = event.message.key
            stored, alert = correlator.step(
                event.message.value or b"", windows.get(key), time.time()
            )
            # The alert first, then the window that says it was sent: a crash in between
            # sends it again (same key and id) rather than never.
            if alert is not None:
                count_alerts(await produce(app, alerts_topic, [alert], metrics))
            if stored is not None:
                windows[key] = stored

    app.agent(events_topic, name="detect")(detect)
    app.agent(matches_topic, name="correlate")(correlate)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.set(1)

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    def on_rebalanced(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.set(0)

    return app


def run_detections(config: Config, metrics_host: str, metrics_port: int) -> None:
    """Run the detections app until SIGINT/SIGTERM."""
    from forwarder.pipeline.worker import _run_faust

    registry = CollectorRegistry()
    app = create_detections_app(config, registry)
    # The changelog topic before Faust starts (see changelog_topics); the alerts and matches
    # topics are project topics.
    asyncio.run(ensure_topics(config, extra=changelog_topics(app)))
    if metrics_port:
        prometheus_client.start_http_server(metrics_port, addr=metrics_host, registry=registry)
    log.info("detections starting", extra={"alerts_topic": config.detections.alerts_topic})
    _run_faust(app, config)
