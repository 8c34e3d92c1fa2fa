"""Config of the syslog sink."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from forwarder.sinks.config import ClientTlsConfig, SinkConfigBase

SYSLOG_FORMATS = ("syslog-cef", "syslog-leef", "syslog-json")
# The largest payload of one UDP datagram over IPv4 (65535 - 8 byte UDP - 20 byte IP header).
UDP_MAX_PAYLOAD = 65507
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}  # RFC 5426 §3.3; usage; RFC 5425 §4.1


class SyslogSinkConfig(SinkConfigBase):
    type: Literal["syslog"]
    format: str = "syslog-cef"
    """syslog-cef, syslog-leef or syslog-json; the header (RFC 5424 or 3164) is `formats.syslog`."""
    host: str = Field(min_length=1)
    """Receiver's host name or IP address."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """Receiver's port; default 514 for udp and tcp, 6514 for tls."""
    transport: Literal["udp", "tcp", "tls"] = "tcp"
    """udp (RFC 5426, one message per datagram), tcp (RFC 6587) or tls (RFC 5425)."""
    framing: Literal["octet-counting", "non-transparent"] = "octet-counting"
    """tcp: `LEN SP MSG` (RFC 6587 §3.4.1) or MSG followed by LF (§3.4.2); tls: octet counting only."""
    tls: ClientTlsConfig = ClientTlsConfig()
    """CA bundle, verification and client certificate for transport tls."""
    max_message_bytes: int = Field(default=8192, ge=480)
    """Largest message sent (octets, framing excluded); rsyslog's default limit is 8 KiB."""
    oversize: Literal["reject", "truncate"] = "reject"
    """A longer message: reject (to the DLQ, whole) or truncate on a UTF-8 character boundary."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    """Longest time to open a connection (TLS handshake included)."""
    write_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest time the receiver may take to accept each 64 KiB written (back-pressure)."""

    @classmethod
    def accepted_formats(cls) -> tuple[str, ...]:
        """Only the syslog formats: the sink frames syslog messages, nothing else."""
        return SYSLOG_FORMATS

    @property
    def destination_port(self) -> int:
        """The configured port, or the transport's registered one."""
        return self.port if self.port is not None else DEFAULT_PORTS[self.transport]

    @field_validator("framing")
    @classmethod
    def _tls_counts_octets(cls, value: str, info: ValidationInfo) -> str:
        # RFC 5425 §4.3 defines one framing for TLS, octet counting (`MSG-LEN SP SYSLOG-MSG`).
        if value == "non-transparent" and info.data.get("transport") == "tls":
            raise ValueError(
                "non-transparent framing is not allowed with transport: tls; RFC 5425 §4.3 "
                "frames syslog over TLS by octet counting only (framing: octet-counting)"
            )
        return value

    @model_validator(mode="after")
    def _transport_settings(self) -> SyslogSinkConfig:
        if self.transport == "udp":
            if self.framing != "octet-counting":
                raise ValueError("framing applies to tcp and tls only: udp sends one per datagram")
            if self.max_message_bytes > UDP_MAX_PAYLOAD:
                raise ValueError(
                    f"max_message_bytes is at most {UDP_MAX_PAYLOAD} over udp (one datagram)"
                )
        if self.transport != "tls" and "tls" in self.model_fields_set:
            raise ValueError("tls settings need transport: tls")
        return self
