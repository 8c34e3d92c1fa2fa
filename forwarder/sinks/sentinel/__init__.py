"""Microsoft Sentinel sink: the Azure Monitor Logs Ingestion API."""

from forwarder.sinks.sentinel.config import SentinelSinkConfig

__all__ = ["SentinelSinkConfig"]
