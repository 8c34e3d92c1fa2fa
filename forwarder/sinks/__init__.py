"""SIEM sinks: one module per sink, loaded by name."""

from __future__ import annotations

import importlib
from typing import Any

from forwarder.sinks.base import Sink, SinkError

# Imported lazily so an optional dependency is only needed by the sink that uses it.
_REGISTRY: dict[str, str] = {
    "file": "forwarder.sinks.file.sink:FileSink",
    "elasticsearch": "forwarder.sinks.elasticsearch.sink:ElasticsearchSink",
    "sentinel": "forwarder.sinks.sentinel.sink:SentinelSink",
    "http": "forwarder.sinks.http.sink:HttpSink",
    "kafka": "forwarder.sinks.kafka.sink:KafkaSink",
    "splunk_hec": "forwarder.sinks.splunk_hec.sink:SplunkHecSink",
    "syslog": "forwarder.sinks.syslog.sink:SyslogSink",
}


def create_sink(config: Any, bootstrap_servers: str | None = None) -> Sink:
    """The sink instance for one sink config (its `type` selects the class).

    A sink with a `bootstrap_servers` left unset (the Kafka sink) gets the main cluster's.
    """
    if bootstrap_servers and getattr(config, "bootstrap_servers", "") is None:
        config = config.model_copy(update={"bootstrap_servers": bootstrap_servers})
    module_name, _, class_name = _REGISTRY[config.type].partition(":")
    module = importlib.import_module(module_name)
    sink: Sink = getattr(module, class_name)(config)
    return sink


__all__ = ["Sink", "SinkError", "create_sink"]
