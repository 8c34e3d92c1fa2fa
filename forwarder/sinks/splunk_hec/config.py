"""Config of the Splunk HTTP Event Collector sink."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from forwarder.sinks.config import HttpClientConfig, SinkConfigBase, SinkModel

# The formats HEC can carry in an `event` field: a JSON object or one line of text.
HEC_FORMATS = ("ecs", "ocsf", "cef", "leef")

# Indexed fields worth searching on without parsing the event (`| tstats` and fast filters).
DEFAULT_INDEXED_FIELDS = (
    "organization.id",
    "event.action",
    "aha.audit.action",
    "aha.audit.auditable.type",
    "user.email",
)


class AcknowledgementConfig(SinkModel):
    """HEC indexer acknowledgement: wait until Splunk says the events are indexed."""

    enabled: bool = False
    """Poll `/services/collector/ack` for each request; turn on when the token has indexer
    acknowledgement enabled (Splunk Enterprise; Splunk Cloud only for Firehose). Behind a load
    balancer, only with sticky sessions by cookie (docs/sinks/splunk_hec.md)."""
    poll_interval_seconds: float = Field(default=2.0, gt=0)
    """Time between two queries of the ack status of the pending requests."""
    timeout_seconds: float = Field(default=300.0, gt=0)
    """How long one request may stay unacknowledged before it is sent again."""
    max_resends: int = Field(default=2, ge=0)
    """Resends of a request whose acknowledgement stayed false for `timeout_seconds`, each on a
    new channel; after the last one, `on_unacknowledged` decides."""
    on_unacknowledged: Literal["trust", "dead_letter"] = "trust"
    """A request still unacknowledged `timeout_seconds` after its last resend: `trust` counts
    the collector's HTTP 200s as delivery (counted in aha_siem_hec_ack_fallbacks_total),
    `dead_letter` sends its events to the DLQ."""
    max_failed_polls: int = Field(default=3, ge=1)
    """Consecutive failed ack queries of one channel (an error status, an answer that is not
    HEC's, no answer) after which its requests count as delivered on their HTTP 200 and the
    channel takes no more events."""

    @model_validator(mode="after")
    def _poll_within_timeout(self) -> AcknowledgementConfig:
        if self.poll_interval_seconds > self.timeout_seconds:
            raise ValueError("poll_interval_seconds must not exceed timeout_seconds")
        return self


class SplunkHecSinkConfig(SinkConfigBase):
    """Send events to a Splunk HTTP Event Collector (`/services/collector/event`)."""

    type: Literal["splunk_hec"]
    url: str
    """Base URL of the collector, e.g. https://splunk.example.com:8088 (without
    /services/collector)."""
    token: SecretStr
    """HEC token, sent as `Authorization: Splunk <token>`."""
    index: str | None = None
    """Splunk index of the events; null: the token's default index."""
    source: str = "aha-siem-forwarder"
    """`source` of every event."""
    sourcetype: str | None = None
    """`sourcetype` of every event; null: aha:audit:<format> (aha:audit:ecs, aha:audit:cef, ...)."""
    host: str | None = None
    """`host` of every event; null: the Aha! account's host from the event's URL, else the
    collector's default."""
    indexed_fields: tuple[str, ...] = DEFAULT_INDEXED_FIELDS
    """Dotted ECS paths sent as indexed fields (`fields`); missing or null paths are left out."""
    key_field: str | None = "event_key"
    """Indexed field carrying the event's unique key (to find resent copies: `| dedup
    event_key`); null: not sent."""
    gzip: bool = True
    """Compress request bodies (`Content-Encoding: gzip`)."""
    http: HttpClientConfig = HttpClientConfig()
    """Time-outs, TLS (CA bundle, client certificate), proxy and connections."""
    acknowledgement: AcknowledgementConfig = AcknowledgementConfig()
    """Indexer acknowledgement (at-least-once into the index, not only into HEC)."""
    batch_max_bytes: int = Field(default=1_000_000, ge=1024)
    """Largest batch in envelope bytes before compression: within the 1 MB max_content_length of
    older Splunk releases and of many proxies (a request refused with 413 is split anyway)."""

    @classmethod
    def accepted_formats(cls) -> tuple[str, ...] | None:
        """HEC carries JSON objects (ecs, ocsf) or text lines (cef, leef), not syslog frames."""
        return HEC_FORMATS

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be http(s)://host[:port] of the HEC endpoint")
        if "/services/collector" in parts.path:
            raise ValueError(
                "url is the collector's base URL (https://host:8088): leave out /services/collector"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(
                "url takes no query, fragment or credentials (the token goes in token)"
            )
        return value.rstrip("/")

    @field_validator("token")
    @classmethod
    def _token_present(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.strip() or any(char in secret for char in "\r\n"):
            raise ValueError("token must be a non-empty single line")
        return value

    @property
    def effective_sourcetype(self) -> str:
        """The sourcetype sent: the configured one or the format's default."""
        return self.sourcetype or f"aha:audit:{self.format}"
