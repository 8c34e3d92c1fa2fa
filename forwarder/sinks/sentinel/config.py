"""Config of the Microsoft Sentinel (Azure Monitor Logs Ingestion API) sink."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from forwarder.sinks.config import JSON_FORMATS, HttpClientConfig, SinkConfigBase

# The Logs Ingestion API's limit on one call, compressed or not.
MAX_CALL_BYTES = 1024 * 1024

API_VERSION = "2023-01-01"


class SentinelSinkConfig(SinkConfigBase):
    type: Literal["sentinel"]
    dce_endpoint: str = Field(pattern=r"^https?://[^\s/]+/?$")
    """Logs ingestion endpoint of the DCR, or of a data collection endpoint (DCE)."""
    dcr_immutable_id: str = Field(pattern=r"^dcr-[0-9A-Za-z]+$")
    """Immutable id of the data collection rule (`dcr-...`, on the DCR's overview page)."""
    stream_name: str = Field(
        default="Custom-AhaAudit", pattern=r"^(Custom|Microsoft)-[A-Za-z0-9_]+$"
    )
    """Input stream declared in the DCR that takes these rows."""
    tenant_id: str = Field(pattern=r"^[0-9A-Za-z.-]+$")
    """Microsoft Entra tenant (directory) id of the app registration."""
    client_id: str = Field(min_length=1)
    """Application (client) id of the app registration."""
    client_secret: SecretStr
    """Client secret of the app registration."""
    scope: str = "https://monitor.azure.com//.default"
    """OAuth2 scope of the token (monitor.azure.us / monitor.azure.cn in other clouds)."""
    token_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    """Token endpoint; default https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token."""
    gzip: bool = True
    """Compress request bodies (the 1 MB limit counts the uncompressed size all the same)."""
    batch_max_bytes: int = Field(default=1_000_000, ge=1024)
    """Largest batch in row bytes; one call holds at most 1 MiB, brackets and commas included."""
    http: HttpClientConfig = HttpClientConfig()
    """Time-outs, TLS, proxy and connections (for both the token and the ingestion endpoint)."""

    @classmethod
    def accepted_formats(cls) -> tuple[str, ...]:
        """The `Event` column carries JSON: ECS (the default) or OCSF."""
        return JSON_FORMATS

    @property
    def token_endpoint(self) -> str:
        """Where client credentials are exchanged for a token."""
        return (
            self.token_url
            or f"https://login.microsoftonline.com/{self.tenant_id}/oauth2/v2.0/token"
        )

    @model_validator(mode="after")
    def _fits_one_call(self) -> SentinelSinkConfig:
        # A JSON array of n rows adds n + 1 bytes ("[", "]" and the commas) to the rows.
        if self.batch_max_bytes + self.batch_max_events + 1 > MAX_CALL_BYTES:
            raise ValueError(
                "batch_max_bytes + batch_max_events + 1 must stay within the Logs Ingestion "
                f"API's {MAX_CALL_BYTES} bytes per call"
            )
        return self
