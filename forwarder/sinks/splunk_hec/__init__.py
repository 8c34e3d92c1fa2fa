"""Splunk HTTP Event Collector sink."""

from forwarder.sinks.splunk_hec.config import AcknowledgementConfig, SplunkHecSinkConfig
from forwarder.sinks.splunk_hec.sink import SplunkHecSink

__all__ = ["AcknowledgementConfig", "SplunkHecSink", "SplunkHecSinkConfig"]
