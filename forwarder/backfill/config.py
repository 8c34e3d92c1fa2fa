"""The `aha` config section: Aha! accounts whose REST API backfill and reconcile read."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Model):
    requests_per_second: float = Field(default=4.0, gt=0, le=20)
    """Requests sent per second at most; Aha! allows 20 per second and 300 per minute."""
    burst: int = Field(default=4, ge=1, le=20)
    """Requests that may be sent at once before the rate applies."""
    max_wait_seconds: float = Field(default=300.0, gt=0)
    """Longest time answers may stay 429 (rate limited) before the run fails."""


class ReconcileConfig(_Model):
    enabled: bool = False
    """Run continuous reconciliation for this account in `aha-siem reconcile`."""
    interval_seconds: float = Field(default=300.0, ge=1)
    """Time between two reconciliation runs."""
    window_seconds: float = Field(default=7200.0, gt=0)
    """The window checked starts this long before now."""
    settle_seconds: float = Field(default=600.0, ge=0)
    """The window checked ends this long before now (webhooks of newer audits may be in flight)."""

    @model_validator(mode="after")
    def _window_after_settle(self) -> ReconcileConfig:
        if self.window_seconds <= self.settle_seconds:
            raise ValueError("window_seconds must be larger than settle_seconds")
        return self


class AhaAccountConfig(_Model):
    name: str
    """The Aha! account: the `acme` of https://acme.aha.io."""
    api_key: SecretStr | None = None
    """API key of an Aha! user allowed to read the audits (sent as a bearer token); set it from
    the environment, e.g. AHA_SIEM_AHA__ACCOUNTS__0__API_KEY."""
    base_url: str | None = None
    """Use this URL instead of https://NAME.aha.io (a proxy, or a fake API in tests)."""
    token_id: str | None = None
    """`token-id` header of injected records (default: the name of the ingest token of this
    account, else the account name), so their events carry the same `organization.*`."""
    per_page: int = Field(default=100, ge=1, le=200)
    """Audits asked for per request."""
    slice_seconds: float = Field(default=86400.0, ge=60)
    """A backfill walks its range in slices this long (oldest first); the checkpoint records
    the slice and page reached."""
    timeout_seconds: float = Field(default=30.0, gt=0)
    """Time-out of one API request."""
    max_retries: int = Field(default=5, ge=0, le=20)
    """Retries of a request that failed with a server error or a broken connection."""
    rate_limit: RateLimitConfig = RateLimitConfig()
    """How fast the API is called and how long a rate limit may last."""
    reconcile: ReconcileConfig = ReconcileConfig()
    """Continuous reconciliation of this account."""

    @field_validator("name")
    @classmethod
    def _subdomain(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SUBDOMAIN.match(value):
            raise ValueError("must be the subdomain of the Aha! URL (the `acme` of acme.aha.io)")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    def url(self) -> str:
        """Where the REST API of this account lives."""
        return self.base_url or f"https://{self.name}.aha.io"


class AhaConfig(_Model):
    accounts: tuple[AhaAccountConfig, ...] = ()
    """Aha! accounts that backfill and reconcile read."""
    checkpoint_dir: Path = Path(".run/backfill")
    """Where a backfill records how far it got, to resume after a crash."""
    scan_margin_seconds: float = Field(default=600.0, ge=0)
    """The raw topic is read from this long before a window's start (clock skew, late webhooks)."""
    metrics_host: str = "0.0.0.0"
    """Address of the /metrics listener of `aha-siem reconcile`."""
    metrics_port: int = Field(default=9109, ge=0, le=65535)
    """Port of the /metrics listener of `aha-siem reconcile`; 0 disables it."""

    @model_validator(mode="after")
    def _unique_accounts(self) -> AhaConfig:
        names = [account.name for account in self.accounts]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"account names must be unique; repeated: {', '.join(repeated)}")
        return self

    def account(self, name: str) -> tuple[int, AhaAccountConfig]:
        """The index and config of an account, or KeyError."""
        for index, account in enumerate(self.accounts):
            if account.name == name.strip().lower():
                return index, account
        raise KeyError(name)
