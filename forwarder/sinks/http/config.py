"""Config of the generic HTTPS sink."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from forwarder.sinks.config import JSON_FORMATS, HttpClientConfig, SinkConfigBase, SinkModel

# Set by the sink from the body it sends; a configured value would contradict it.
_RESERVED_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding", "host"})


class BearerAuth(SinkModel):
    """`Authorization: Bearer <token>`."""

    type: Literal["bearer"]
    token: SecretStr
    """The bearer token."""


class BasicAuth(SinkModel):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    """User name."""
    password: SecretStr
    """Password."""


class HeaderAuth(SinkModel):
    """A secret in a header of its own, e.g. `X-API-Key`."""

    type: Literal["header"]
    name: str = Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    """Header name."""
    value: SecretStr
    """Header value (the secret)."""


HttpAuth = Annotated[BearerAuth | BasicAuth | HeaderAuth, Field(discriminator="type")]


def _valid_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        # Credentials in a URL end up in logs and error messages: they belong in `auth`.
        raise ValueError("must not carry user:password; use `auth`")
    return value


class HttpSinkConfig(SinkConfigBase):
    """Events POSTed (or PUT) to any HTTP(S) endpoint as a JSON array or as lines."""

    type: Literal["http"]
    url: str
    """Endpoint the batches are sent to (http:// or https://)."""
    method: Literal["POST", "PUT"] = "POST"
    """HTTP method of each request."""
    encoding: Literal["json", "ndjson"] = "ndjson"
    """Body of a request: `json` (one JSON array; ecs and ocsf only) or `ndjson` (one event per
    line; any format)."""
    gzip: bool = False
    """Gzip request bodies (`Content-Encoding: gzip`)."""
    auth: HttpAuth | None = None
    """Credentials: bearer token, basic auth or a secret header; null: none."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Plain headers added to every request (no secrets here: use `auth`)."""
    retry_statuses: tuple[int, ...] = ()
    """Statuses retried besides 408, 425, 429 and 5xx (e.g. 404 while a receiver deploys)."""
    healthcheck_url: str | None = None
    """URL answered with 2xx to a GET when the receiver is up; null: no health check."""
    http: HttpClientConfig = HttpClientConfig()
    """Time-outs, TLS, proxy and connections."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _valid_http_url(value)

    @field_validator("healthcheck_url")
    @classmethod
    def _healthcheck_url(cls, value: str | None) -> str | None:
        return None if value is None else _valid_http_url(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the sink")
            if "\r" in text or "\n" in text or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} has a line break")
        return value

    @field_validator("retry_statuses")
    @classmethod
    def _statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for status in value:
            if not 400 <= status <= 499:
                raise ValueError(f"{status} is not a 4xx status (5xx are always retried)")
        return value

    @model_validator(mode="after")
    def _json_needs_json(self) -> HttpSinkConfig:
        if self.encoding == "json" and self.format not in JSON_FORMATS:
            raise ValueError(
                f"encoding json carries only {', '.join(JSON_FORMATS)}; "
                f"use encoding ndjson for format {self.format!r}"
            )
        names = {name.lower() for name in self.headers}
        if self.auth is not None:
            auth_header = self.auth.name if isinstance(self.auth, HeaderAuth) else "authorization"
            if auth_header.lower() in names:
                raise ValueError(f"header {auth_header!r} is set both in headers and by auth")
        return self
