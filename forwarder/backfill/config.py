"""The `aha` config section: Aha! accounts whose REST API backfill and reconcile read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Model):
    requests_per_second: float = Field(default=4.0, gt=0, le=20)
    """Requests sent per second at most. Aha! reports a limit of 300 requests per minute per
    source IP (5 per second sustained, shared by every client behind the same address); no finer
    limit is confirmed. The default, 240 per minute, leaves room for other clients."""
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
    settle_seconds: float = Field(default=1800.0, ge=0)
    """The window checked ends this long before now. Aha! holds every webhook for 5 minutes, and
    one for a text-editor change until 5 minutes after the most recent edit (no upper bound
    while someone keeps typing); the default allows 30 minutes. A webhook later still is not
    lost: reconcile injects the audit and the worker drops the webhook as an exact copy."""

    @model_validator(mode="after")
    def _window_after_settle(self) -> ReconcileConfig:
        if self.window_seconds <= self.settle_seconds:
            raise ValueError("window_seconds must be larger than settle_seconds")
        return self


def _strings(value: Any) -> Any:
    # YAML reads a bare user id as a number; every filter value is text.
    if isinstance(value, list | tuple):
        return tuple(str(item) if isinstance(item, int | float) else item for item in value)
    return value


class FiltersConfig(_Model):
    """The filters of the account's activity webhook integration, so that backfill and reconcile
    inject only what the webhook would have sent. Empty lists filter nothing; the lists that are
    set must all let an audit through. How each is matched, and what of it Aha! documents:
    docs/backfill.md#filters."""

    workspaces: tuple[str, ...] = ()
    """Workspaces the webhook sends, by reference prefix (the `DEMO` of DEMO-28): audits carry no
    workspace id or name, only the record's reference in `auditable_url` and `description`."""
    record_types: tuple[str, ...] = ()
    """Record types the webhook sends, as audits spell them (`feature`, `ideas/idea`)."""
    fields: tuple[str, ...] = ()
    """Field names the webhook sends (`Workflow status`), in any case; an audit passes when one
    of its changes is to one of them."""
    users: tuple[str, ...] = ()
    """Users whose activity the webhook sends, by e-mail or Aha! user id; an audit passes when
    its author or one of its contributors is one of them."""
    unknown_workspace: Literal["skip", "inject"] = "skip"
    """With `workspaces` set: what to do with an audit that names no workspace reference."""

    @field_validator("workspaces", "record_types", "fields", "users", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _strings(value)

    @field_validator("workspaces", "record_types", "fields", "users")
    @classmethod
    def _not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not item.strip() for item in value):
            raise ValueError("entries must not be empty")
        return tuple(item.strip() for item in value)

    @field_validator("workspaces")
    @classmethod
    def _prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [item for item in value if not re.fullmatch(r"[A-Za-z0-9]+", item)]
        if bad:
            raise ValueError(
                f"a workspace is given by its reference prefix (the DEMO of DEMO-28): {bad[0]!r}"
            )
        return tuple(item.upper() for item in value)

    @property
    def active(self) -> bool:
        """Whether any filter is set."""
        return bool(self.workspaces or self.record_types or self.fields or self.users)


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
    filters: FiltersConfig = FiltersConfig()
    """The filters set on the account's activity webhook in Aha! (none: it sends everything)."""

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
