"""Faust's own view of a worker (consumer lag, commits, rebalances) as Prometheus metrics.

Faust ships a Prometheus sensor, but it serves its registry from Faust's aiohttp web server, which
the worker keeps off (DESIGN.md): here the metrics go into the registry the worker already serves.
The sensor replaces the app's `Monitor` rather than being added beside it, because Faust reports
committed offsets and partition end offsets only to `app.monitor`::

    app.monitor = FaustSensor(registry, app="worker")
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from faust.sensors.monitor import Monitor, TPOffsetMapping
from faust.types import TP, AppT, Message
from faust.types.transports import ConsumerT
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("forwarder.sensors")

_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PROCESSING_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_REBALANCE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class FaustMetrics:
    """The `aha_siem_faust_*` metric families of one registry (shared by every app in a process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages_received = Counter(
            "aha_siem_faust_messages_received_total",
            "Messages the Faust consumer delivered to streams, by app and topic.",
            ["app", "topic"],
            registry=registry,
        )
        self.message_processing = Histogram(
            "aha_siem_faust_message_processing_seconds",
            "Time from a message's delivery to the streams until every stream acked it, by app "
            "and topic.",
            ["app", "topic"],
            buckets=_PROCESSING_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "aha_siem_faust_consumer_lag_messages",
            "Messages in a partition past this worker's committed offset (end offset minus "
            "committed offset), by app, topic and partition.",
            ["app", "topic", "partition"],
            registry=registry,
        )
        self.commit_duration = Histogram(
            "aha_siem_faust_commit_duration_seconds",
            "Time of one offset commit round of the consumer, by app.",
            ["app"],
            buckets=_COMMIT_BUCKETS,
            registry=registry,
        )
        self.rebalances = Counter(
            "aha_siem_faust_rebalances_total",
            "Consumer group rebalances the app went through, by app.",
            ["app"],
            registry=registry,
        )
        self.rebalance_duration = Histogram(
            "aha_siem_faust_rebalance_duration_seconds",
            "Time from a rebalance's start until its tables were recovered, by app.",
            ["app"],
            buckets=_REBALANCE_BUCKETS,
            registry=registry,
        )
        self.messages_sent = Counter(
            "aha_siem_faust_messages_sent_total",
            "Messages the Faust producer was given to send, by app and topic.",
            ["app", "topic"],
            registry=registry,
        )
        self.send_errors = Counter(
            "aha_siem_faust_send_errors_total",
            "Messages the Faust producer failed to send, by app.",
            ["app"],
            registry=registry,
        )
        self.agent_crashes = Counter(
            "aha_siem_faust_agent_crashes_total",
            "Agents that raised and were restarted by Faust's supervisor, by app. Their unacked "
            "messages are read again, so nothing is lost, but a rising count is a bug to report.",
            ["app"],
            registry=registry,
        )


# Several Faust apps in one process may share one registry; a family can be registered only once.
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, FaustMetrics] = weakref.WeakKeyDictionary()


def faust_metrics(registry: CollectorRegistry) -> FaustMetrics:
    """The Faust metric families of `registry`, created on first use."""
    families = _FAMILIES.get(registry)
    if families is None:
        families = _FAMILIES[registry] = FaustMetrics(registry)
    return families


class FaustSensor(Monitor):
    """Faust's `Monitor`, also writing `aha_siem_faust_*` metrics into a Prometheus registry.

    `app` is the label value naming the Faust app's role (``worker``), not its app id: ids carry
    deployment names and would make the label unbounded.
    """

    def __init__(self, registry: CollectorRegistry, *, app: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.role = app
        self.metrics = faust_metrics(registry)
        family = self.metrics
        # Children resolved once: `.labels()` on the per-message path costs more than the inc.
        self._received: dict[str, Any] = {}
        self._processing: dict[str, Any] = {}
        self._sent: dict[str, Any] = {}
        self._commit_duration = family.commit_duration.labels(app)
        self._rebalances = family.rebalances.labels(app)
        self._rebalance_duration = family.rebalance_duration.labels(app)
        self._send_errors = family.send_errors.labels(app)
        self._agent_crashes = family.agent_crashes.labels(app)
        # Where each partition's lag is measured from: the offset committed by this consumer,
        # else the first offset read since the partition was assigned (reading starts at the
        # group's committed offset, so until the first commit that is the same position).
        self._committed: dict[TP, int] = {}
        self._first_read: dict[TP, int] = {}
        self._lag_series: set[TP] = set()
        self._warned_not_monitor = False

    async def on_agent_error(self, agent: Any, error: BaseException) -> None:
        """Count an agent's crash and log it (called from the app's agent error callback)."""
        self._agent_crashes.inc()
        log.error(
            "agent crashed; Faust restarts it and its unacked messages are read again",
            extra={"app": self.role, "agent": getattr(agent, "name", str(agent))},
            exc_info=error,
        )

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        """Count a message delivered to the streams and remember where reading started."""
        super().on_message_in(tp, offset, message)
        child = self._received.get(tp.topic)
        if child is None:
            child = self._received[tp.topic] = self.metrics.messages_received.labels(
                self.role, tp.topic
            )
        child.inc()
        if tp not in self._first_read:
            self._first_read[tp] = offset

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        """Observe how long the streams took to ack a message."""
        super().on_message_out(tp, offset, message)
        total = message.time_total
        if total is None:
            return
        child = self._processing.get(tp.topic)
        if child is None:
            child = self._processing[tp.topic] = self.metrics.message_processing.labels(
                self.role, tp.topic
            )
        child.observe(total)

    def on_commit_completed(self, consumer: ConsumerT, state: Any) -> None:
        """Observe the commit round and refresh every partition's lag.

        Faust runs a commit round every `broker_commit_interval` even with nothing to commit, so
        the lag of an idle or stuck consumer keeps being updated too.
        """
        super().on_commit_completed(consumer, state)
        self._commit_duration.observe(self.commit_latency[-1])
        app = getattr(consumer, "app", None)
        if app is not None and app.monitor is not self and not self._warned_not_monitor:
            self._warned_not_monitor = True
            log.warning(
                "Faust sensor is not the app's monitor: lag is measured from read offsets",
                extra={"app": self.role},
            )
        self._update_lag(consumer)

    def on_tp_commit(self, tp_offsets: TPOffsetMapping) -> None:
        """Remember the offsets this consumer committed (the next offsets to read)."""
        super().on_tp_commit(tp_offsets)
        self._committed.update(tp_offsets)

    def on_rebalance_start(self, app: AppT) -> dict[str, Any]:
        """Count a rebalance and start timing it."""
        state: dict[str, Any] = super().on_rebalance_start(app)
        self._rebalances.inc()
        return state

    def on_rebalance_end(self, app: AppT, state: dict[str, Any]) -> None:
        """Observe the rebalance and forget the partitions this worker no longer holds."""
        super().on_rebalance_end(app, state)
        latency = state.get("latency_end")
        if latency is not None:
            self._rebalance_duration.observe(float(latency))
        try:
            assigned = set(app.consumer.assignment())
        except Exception:  # a consumer that is stopping has no assignment to ask for
            assigned = set()
        self._forget(
            tp for tp in set(self._committed) | set(self._first_read) if tp not in assigned
        )

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        """Count a message handed to the producer."""
        child = self._sent.get(topic)
        if child is None:
            child = self._sent[topic] = self.metrics.messages_sent.labels(self.role, topic)
        child.inc()
        return super().on_send_initiated(producer, topic, message, keysize, valsize)

    def count_sent(self, topic: str, sent: int, errors: int = 0) -> None:
        """Count a batch produced past Faust's topics (straight to its producer), and its errors."""
        child = self._sent.get(topic)
        if child is None:
            child = self._sent[topic] = self.metrics.messages_sent.labels(self.role, topic)
        child.inc(sent)
        if errors:
            self._send_errors.inc(errors)

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        """Count a message the producer could not send."""
        super().on_send_error(producer, exc, state)
        self._send_errors.inc()

    def _update_lag(self, consumer: ConsumerT) -> None:
        for tp in set(self._committed) | set(self._first_read):
            position = self._committed.get(tp, self._first_read.get(tp))
            end = self._end_offset(consumer, tp)
            if position is None or end is None:
                continue
            self.metrics.consumer_lag.labels(self.role, tp.topic, str(tp.partition)).set(
                max(0, end - position)
            )
            self._lag_series.add(tp)

    def _end_offset(self, consumer: ConsumerT, tp: TP) -> int | None:
        # The consumer's own view is fresher than the end offsets Faust tracks per fetched
        # record: it moves on while the streams are paused by a full buffer.
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # not assigned any more, or the client is closing
            highwater = None
        if highwater is None:
            highwater = self.tp_end_offsets.get(tp)
        return highwater

    def _forget(self, tps: Any) -> None:
        for tp in list(tps):
            self._committed.pop(tp, None)
            self._first_read.pop(tp, None)
            if tp in self._lag_series:
                self._lag_series.discard(tp)
                self.metrics.consumer_lag.remove(self.role, tp.topic, str(tp.partition))
