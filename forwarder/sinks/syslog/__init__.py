"""Syslog sink: CEF, LEEF or JSON in syslog messages over UDP, TCP or TLS."""

from forwarder.sinks.syslog.config import SyslogSinkConfig
from forwarder.sinks.syslog.sink import SyslogSink

__all__ = ["SyslogSink", "SyslogSinkConfig"]
