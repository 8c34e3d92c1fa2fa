"""Config of the Kafka sink."""

from __future__ import annotations

import importlib.util
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from forwarder.sinks.config import ClientTlsConfig, SinkConfigBase, SinkModel

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# aiokafka compresses gzip with the standard library and the others with cramjam.
_NEEDS_CRAMJAM = ("snappy", "lz4", "zstd")


class SaslConfig(SinkModel):
    """SASL credentials for SASL_PLAINTEXT and SASL_SSL."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    """SASL mechanism (PLAIN sends the password as is: use it only with SASL_SSL)."""
    username: str = Field(min_length=1)
    """SASL user name."""
    password: SecretStr
    """SASL password."""


class KafkaSinkConfig(SinkConfigBase):
    """Events produced to a Kafka topic, on this cluster or another one."""

    type: Literal["kafka"]
    topic: str
    """Topic the events are produced to (it must exist, or the cluster must create topics)."""
    bootstrap_servers: str | None = None
    """Comma-separated host:port list of the target cluster; null: the main cluster."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How to talk to the brokers."""
    sasl: SaslConfig | None = None
    """SASL credentials; required with SASL_PLAINTEXT and SASL_SSL."""
    tls: ClientTlsConfig = ClientTlsConfig()
    """TLS settings for SSL and SASL_SSL."""
    key: Literal["event", "record", "none"] = "event"
    """Message key: `event` (the event's unique id), `record` (`{auditable_type}:{auditable_id}`,
    as in the project's own topics: one record's events stay in order) or `none`."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Fixed headers added to every message."""
    idempotent: bool = True
    """Idempotent producer: broker-side retries never duplicate a message."""
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    """Compression of message batches (snappy, lz4, zstd need cramjam)."""
    client_id: str = "aha-siem-sink"
    """Client id sent to the brokers (the sink name is appended)."""
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    """How long the brokers have to acknowledge a batch before it is retried."""
    delivery_timeout_seconds: float = Field(default=120.0, gt=0)
    """How long a batch may wait for all its acknowledgements before it is retried (the
    producer keeps trying meanwhile, so a retry after a long outage can duplicate)."""
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest message the producer sends; a larger event is rejected to the DLQ."""
    linger_ms: int = Field(default=5, ge=0, le=10_000)
    """How long the producer waits to fill a batch of messages."""

    @field_validator("topic")
    @classmethod
    def _legal_topic(cls, value: str) -> str:
        if not _TOPIC_NAME.match(value):
            raise ValueError("a Kafka topic name is 1-249 characters of [A-Za-z0-9._-]")
        return value

    @field_validator("compression")
    @classmethod
    def _codec_installed(cls, value: str) -> str:
        if value in _NEEDS_CRAMJAM and importlib.util.find_spec("cramjam") is None:
            raise ValueError(
                f"compression {value} needs cramjam: "
                "pip install 'aha-siem-forwarder[kafka-compression]'"
            )
        return value

    @model_validator(mode="after")
    def _sasl_matches_protocol(self) -> KafkaSinkConfig:
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and self.sasl is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs `sasl`")
        if not uses_sasl and self.sasl is not None:
            raise ValueError("`sasl` is used only with SASL_PLAINTEXT or SASL_SSL")
        if self.delivery_timeout_seconds < self.request_timeout_seconds:
            raise ValueError("delivery_timeout_seconds must be at least request_timeout_seconds")
        return self
