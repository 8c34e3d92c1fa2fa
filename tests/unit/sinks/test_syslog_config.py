"""The syslog sink's config: defaults, and the combinations refused at start-up."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from forwarder.config import SinkConfig
from forwarder.sinks import create_sink
from forwarder.sinks.syslog import SyslogSink, SyslogSinkConfig


def parse(**fields: Any) -> Any:
    return TypeAdapter(SinkConfig).validate_python(
        {"type": "syslog", "name": "siem", "host": "siem.example.com", **fields}
    )


@pytest.mark.parametrize(("transport", "port"), [("udp", 514), ("tcp", 514), ("tls", 6514)])
def test_default_port_follows_the_transport(transport: str, port: int) -> None:
    config = parse(transport=transport)
    assert isinstance(config, SyslogSinkConfig)
    assert config.destination_port == port
    assert parse(transport=transport, port=1514).destination_port == 1514


def test_defaults() -> None:
    config = parse()
    assert (config.transport, config.framing, config.format) == (
        "tcp",
        "octet-counting",
        "syslog-cef",
    )
    assert (config.max_message_bytes, config.oversize) == (8192, "reject")


def test_the_registry_builds_the_sink() -> None:
    sink = create_sink(parse(name="qradar", format="syslog-leef"))
    assert isinstance(sink, SyslogSink)
    assert sink.name == "qradar"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "ecs"}, "not accepted by a syslog sink"),
        ({"format": "cef"}, "not accepted by a syslog sink"),
        ({"transport": "udp", "framing": "non-transparent"}, "framing applies to tcp and tls"),
        ({"transport": "tls", "framing": "non-transparent"}, "octet counting only"),
        ({"transport": "udp", "max_message_bytes": 65508}, "at most 65507 over udp"),
        ({"transport": "tcp", "tls": {"verify": False}}, "tls settings need transport: tls"),
        ({"max_message_bytes": 100}, "greater than or equal to 480"),
        ({"port": 0}, "greater than or equal to 1"),
        ({"transport": "relp"}, "'udp', 'tcp' or 'tls'"),
        ({"oversize": "split"}, "'reject' or 'truncate'"),
        ({"hostname": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse(**fields)


def test_tcp_above_the_udp_limit_is_fine() -> None:
    assert parse(transport="tcp", max_message_bytes=1024 * 1024).max_message_bytes == 1024 * 1024


def test_tls_settings_with_tls() -> None:
    config = parse(transport="tls", tls={"ca_file": "/etc/siem/ca.pem", "server_name": "siem"})
    assert str(config.tls.ca_file) == "/etc/siem/ca.pem"


def test_tls_with_non_transparent_framing_is_refused_naming_the_key() -> None:
    # RFC 5425 §4.3: over TLS a syslog message is framed by octet counting only.
    with pytest.raises(ValidationError) as refused:
        parse(transport="tls", framing="non-transparent")
    (error,) = refused.value.errors()
    assert error["loc"][-1] == "framing"
    assert "transport: tls" in error["msg"] and "RFC 5425" in error["msg"]
    assert parse(transport="tls").framing == "octet-counting"
    assert parse(transport="tcp", framing="non-transparent").framing == "non-transparent"
