"""What every sink's config has: name, format, batching, routing, retries; plus client TLS.

Each sink module defines its own model on top of `SinkConfigBase` with a `type` literal;
`forwarder.config` joins them into one discriminated union. Only pydantic is imported here, so a
config can be validated without a sink's optional dependencies.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SinkModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteConfig(SinkModel):
    """Which events a sink takes; an empty list or null means "any". An event must pass every
    key that is set."""

    record_types: tuple[str, ...] = ()
    """Aha! record types (`aha.audit.auditable.type`), e.g. feature, idea, user."""
    actions: tuple[str, ...] = ()
    """Audit actions (`aha.audit.action`): create, update, destroy."""
    interesting: bool | None = None
    """true: only audits Aha! marks interesting; false: only the others; null: both."""
    accounts: tuple[str, ...] = ()
    """Aha! accounts (`organization.id`, from the ingest token's account)."""
    fields: tuple[str, ...] = ()
    """Aha! field names as audits name them (`aha.audit.changes[].field_name`, e.g. Workflow
    status): events with a change to any of them; case and outer spaces do not matter."""
    users: tuple[str, ...] = ()
    """User e-mails or ids: events whose author (`user`) or any contributor
    (`aha.audit.contributors`, `related.user`) is one of them; case does not matter."""

    @field_validator("fields", "users", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        # An id written without quotes in YAML is a number, one name alone a string.
        if isinstance(value, str | int) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list | tuple):
            value = [
                str(item) if isinstance(item, int) and not isinstance(item, bool) else item
                for item in value
            ]
            if any(isinstance(item, str) and not item.strip() for item in value):
                raise ValueError("names must not be empty")
        return value

    def matches(self, doc: Mapping[str, Any]) -> bool:
        """Whether the normalized event `doc` goes to this sink."""
        aha = doc.get("aha") or {}
        audit = aha.get("audit") or {}
        if self.record_types:
            auditable = audit.get("auditable") or {}
            if auditable.get("type") not in self.record_types:
                return False
        if self.actions and audit.get("action") not in self.actions:
            return False
        if self.interesting is not None and audit.get("interesting") is not self.interesting:
            return False
        if self.accounts:
            organization = doc.get("organization") or {}
            if organization.get("id") not in self.accounts:
                return False
        if self.fields and {_folded(name) for name in self.fields}.isdisjoint(
            _changed_fields(audit)
        ):
            return False
        return not (
            self.users
            and {_folded(name) for name in self.users}.isdisjoint(_event_users(doc, audit))
        )


def _folded(name: str) -> str:
    return name.strip().casefold()


def _changed_fields(audit: Mapping[str, Any]) -> set[str]:
    """The field names of an audit's changes, folded."""
    changes = audit.get("changes")
    if not isinstance(changes, list):
        return set()
    return {
        _folded(change["field_name"])
        for change in changes
        if isinstance(change, Mapping) and isinstance(change.get("field_name"), str)
    }


def _event_users(doc: Mapping[str, Any], audit: Mapping[str, Any]) -> set[str]:
    """The ids and e-mails of an event's author and contributors, folded."""
    found: set[str] = set()
    records: list[Any] = [doc.get("user")]
    contributors = audit.get("contributors")
    if isinstance(contributors, list):
        # Flat user records, or the REST API's `{"user": {...}}` should one arrive unflattened.
        records += [
            item.get("user") if isinstance(item, Mapping) and "user" in item else item
            for item in contributors
        ]
    for record in records:
        if isinstance(record, Mapping):
            for key in ("id", "email"):
                value = record.get(key)
                if isinstance(value, str | int) and not isinstance(value, bool):
                    found.add(_folded(str(value)))
    related = (doc.get("related") or {}).get("user")
    if isinstance(related, list):
        found.update(_folded(value) for value in related if isinstance(value, str))
    return found


class RetryConfig(SinkModel):
    """Back-off for retriable failures (exponential with jitter; `Retry-After` wins)."""

    initial_backoff_seconds: float = Field(default=0.2, gt=0)
    """First wait after a retriable failure."""
    max_backoff_seconds: float = Field(default=30.0, gt=0)
    """Longest wait between two attempts."""
    max_attempts: int | None = Field(default=None, ge=1)
    """Attempts before a batch goes to the DLQ (reason retries_exhausted); null: until delivered."""
    max_unrecognized_attempts: int = Field(default=3, ge=1)
    """Attempts met by an answer the sink cannot interpret, then the DLQ (unrecognized_answer)."""

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("max_backoff_seconds must be at least initial_backoff_seconds")
        return self


class SinkConfigBase(SinkModel):
    """Fields shared by every sink; a sink's model adds `type` and its own fields."""

    type: str
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")
    """Sink name: used in metrics, consumer group and DLQ topic names."""
    input: Literal["events", "alerts"] = "events"
    """What the sink reads: the normalized events, or the detections' alerts (needs
    `detections.enabled`)."""
    format: str = "ecs"
    """Format of each event: ecs, cef, leef, ocsf, syslog-cef, ... (see `aha-siem render -h`)."""
    batch_max_events: int = Field(default=500, ge=1)
    """Largest batch sent at once."""
    batch_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest batch in encoded bytes (an event larger than this is sent alone)."""
    batch_max_seconds: float = Field(default=0.5, gt=0)
    """Longest time an event waits for its batch to fill (at low rates, most of its delay)."""
    route: RouteConfig = RouteConfig()
    """Which events this sink takes (record type, action, interesting, account, field, user)."""
    retry: RetryConfig = RetryConfig()
    """Back-off and attempt limit for retriable failures."""

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from forwarder.formats import format_names

        if value not in format_names():
            raise ValueError(
                f"unknown format {value!r}; expected one of {', '.join(format_names())}"
            )
        return value

    @model_validator(mode="after")
    def _format_allowed(self) -> SinkConfigBase:
        allowed = type(self).accepted_formats()
        if allowed is not None and self.format not in allowed:
            raise ValueError(
                f"format {self.format!r} is not accepted by a {self.type} sink; "
                f"expected one of {', '.join(allowed)}"
            )
        return self

    @classmethod
    def accepted_formats(cls) -> tuple[str, ...] | None:
        """Formats this kind of sink can carry (None: all)."""
        return None


JSON_FORMATS = ("ecs", "ocsf")


class ClientTlsConfig(SinkModel):
    """TLS towards a destination."""

    ca_file: Path | None = None
    """PEM bundle of the CAs to trust; default: the system's."""
    verify: bool = True
    """Verify the server's certificate and name; turn off only for a test destination."""
    cert_file: Path | None = None
    """PEM client certificate, for destinations that require mutual TLS."""
    key_file: Path | None = None
    """PEM key of the client certificate."""
    server_name: str | None = None
    """Name expected in the server's certificate when it differs from the host connected to."""

    @model_validator(mode="after")
    def _pair(self) -> ClientTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def context(self) -> ssl.SSLContext:
        """An SSLContext for this configuration (raises OSError/SSLError on a bad file)."""
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


class HttpClientConfig(SinkModel):
    """How an HTTP sink talks to its destination."""

    timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest time one request may take (connect, send, answer)."""
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    """Longest time to open a connection."""
    tls: ClientTlsConfig = ClientTlsConfig()
    """TLS settings for https:// destinations."""
    proxy: str | None = None
    """HTTP(S) proxy URL; the environment's HTTPS_PROXY is not used unless set here."""
    max_connections: int = Field(default=4, ge=1)
    """Connections kept to the destination."""
