"""Config of the Elasticsearch / OpenSearch sink."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from forwarder.sinks.config import JSON_FORMATS, HttpClientConfig, SinkConfigBase


class ElasticsearchSinkConfig(SinkConfigBase):
    type: Literal["elasticsearch"]
    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """Cluster URL, e.g. https://es.example.com:9200 (a path prefix behind a proxy is kept)."""
    index: str = Field(default="logs-aha.audit-default", min_length=1, max_length=255)
    """Data stream or index the events are created in."""
    pipeline: str | None = None
    """Ingest pipeline run on every event (the `pipeline` parameter of `_bulk`)."""
    api_key: SecretStr | None = None
    """API key: the base64 `encoded` value, or `id:api_key` (encoded here)."""
    username: str | None = None
    """User for basic authentication (instead of an API key)."""
    password: SecretStr | None = None
    """Password for basic authentication."""
    gzip: bool = False
    """Compress request bodies (Content-Encoding: gzip)."""
    http: HttpClientConfig = HttpClientConfig()
    """Time-outs, TLS (CA bundle, client certificate), proxy, connections."""

    @classmethod
    def accepted_formats(cls) -> tuple[str, ...]:
        """JSON documents only: ECS (the default) or OCSF."""
        return JSON_FORMATS

    @field_validator("index")
    @classmethod
    def _index_name(cls, value: str) -> str:
        # Elasticsearch's own rules for index and data stream names.
        if value != value.lower() or value.startswith(("-", "_", "+")) or value in (".", ".."):
            raise ValueError("index must be lowercase and not start with -, _ or +")
        if any(char in value for char in ' \\/*?"<>|,#:'):
            raise ValueError('index must not contain spaces nor any of \\ / * ? " < > | , # :')
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> ElasticsearchSinkConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.api_key is not None and self.username is not None:
            raise ValueError("set either api_key or username/password, not both")
        return self
