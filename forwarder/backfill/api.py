"""A small client of Aha!'s audits API: `GET /api/v1/audits`, paged, rate limited, with retries.

What was checked against Aha!'s documentation and what was not: docs/decisions/0005-backfill.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from forwarder import __version__
from forwarder.backfill.config import AhaAccountConfig
from forwarder.records import iso_millis
from forwarder.sinks.http_common import retry_after

if TYPE_CHECKING:
    import httpx

    from forwarder.backfill.metrics import ApiMetrics

log = logging.getLogger("forwarder.backfill.api")

AUDITS_PATH = "/api/v1/audits"
# Longest single back-off; a Retry-After beyond it is still honoured up to the rate-limit budget.
_MAX_BACKOFF = 60.0


class AhaApiError(Exception):
    """A request to Aha!'s API that did not succeed; `reason` is a bounded metric label."""

    reason = "api_error"
    retriable = False


class AuthError(AhaApiError):
    """Aha! refused the API key (401/403)."""

    reason = "unauthorized"


class AccountNotFound(AhaApiError):
    """No Aha! account answers at the configured domain (404, or the name does not resolve)."""

    reason = "not_found"


class RateLimitNotCleared(AhaApiError):
    """Aha! kept answering 429 for longer than the configured budget."""

    reason = "rate_limited"
    retriable = True


class ApiUnavailable(AhaApiError):
    """Server errors or broken connections that outlasted the retries."""

    reason = "unavailable"
    retriable = True


@dataclass(frozen=True)
class Ok:
    """The answer is usable."""


@dataclass(frozen=True)
class Wait:
    """Try again after `after` seconds (None: back off); `rate_limited` for a 429."""

    after: float | None
    rate_limited: bool = False


@dataclass(frozen=True)
class Fail:
    """Trying again cannot help."""

    error: AhaApiError


Verdict = Ok | Wait | Fail


def classify(status: int, headers: Mapping[str, str], account: AhaAccountConfig) -> Verdict:
    """What to do with an answer of the audits API (pure: tested as a table)."""
    if 200 <= status < 300:
        return Ok()
    if status == 429:
        return Wait(retry_after(headers), rate_limited=True)
    if status in (401, 403):
        return Fail(
            AuthError(
                f"Aha! refused the API key of account {account.name!r} (HTTP {status}): "
                "check the account's api_key and that its user may read audits"
            )
        )
    if status == 404:
        return Fail(
            AccountNotFound(
                f"no Aha! audits API at {account.url()} (HTTP 404): the account name must be "
                "the subdomain of your Aha! URL"
            )
        )
    if status in (408, 425) or status >= 500:
        return Wait(retry_after(headers))
    return Fail(AhaApiError(f"Aha! answered HTTP {status} to {AUDITS_PATH}"))


def backoff(attempt: int, *, rng: Callable[[], float] = random.random) -> float:
    """Exponential back-off with jitter: about 1, 2, 4 ... seconds, at most a minute."""
    base: float = min(_MAX_BACKOFF, 2.0 ** max(0, attempt - 1))
    return base * (0.5 + rng() / 2)


def _unresolvable(error: BaseException) -> bool:
    """Whether a connection failed because the host name does not exist (not a passing fault)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return current.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
        if "Name or service not known" in str(current) or "nodename nor servname" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


class TokenBucket:
    """Client-side pacing so a run stays under Aha!'s limits instead of provoking 429s."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()

    async def acquire(self) -> float:
        """Wait for one request's token; returns the seconds waited."""
        waited = 0.0
        while True:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return waited
            delay = (1.0 - self._tokens) / self._rate
            waited += delay
            await self._sleep(delay)


@dataclass(frozen=True)
class AuditPage:
    """One page of audits and what the `pagination` object said."""

    audits: list[dict[str, Any]]
    page: int
    per_page: int
    total_pages: int | None = None
    total_records: int | None = None

    @property
    def last(self) -> bool:
        """Whether no page follows this one."""
        if self.total_pages is not None:
            return self.page >= self.total_pages
        # Without a pagination object, a short page is the last one.
        return len(self.audits) < self.per_page


def parse_page(payload: bytes, page: int, per_page: int) -> AuditPage:
    """An AuditPage from the JSON answer `{"audits": [...], "pagination": {...}}`."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise AhaApiError(f"Aha! answered something that is not JSON: {error}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("audits"), list):
        raise AhaApiError("Aha!'s answer has no `audits` list")
    audits = [audit for audit in parsed["audits"] if isinstance(audit, dict)]
    pagination = parsed.get("pagination")
    total_pages = total_records = None
    if isinstance(pagination, dict):
        total_pages = _int(pagination.get("total_pages"))
        total_records = _int(pagination.get("total_records"))
        page = _int(pagination.get("current_page")) or page
    return AuditPage(audits, page, per_page, total_pages, total_records)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


@dataclass
class RequestStats:
    """What the client did, for summaries and tests."""

    requests: int = 0
    rate_limited: int = 0
    rate_limit_wait_seconds: float = 0.0
    retries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


class AhaClient:
    """Reads audits of one account; `async with AhaClient(...) as client:`."""

    def __init__(
        self,
        account: AhaAccountConfig,
        *,
        metrics: ApiMetrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if account.api_key is None:
            raise AuthError(f"account {account.name!r} has no api_key configured")
        import httpx

        self.account = account
        self.stats = RequestStats()
        self._metrics = metrics
        self._sleep = sleep
        self._clock = clock
        self._bucket = TokenBucket(
            account.rate_limit.requests_per_second, account.rate_limit.burst, clock, sleep
        )
        self._http = httpx.AsyncClient(
            base_url=account.url(),
            timeout=httpx.Timeout(account.timeout_seconds),
            headers={
                "Authorization": f"Bearer {account.api_key.get_secret_value()}",
                "Accept": "application/json",
                "User-Agent": f"aha-siem-forwarder/{__version__}",
            },
            transport=transport,
            follow_redirects=False,
            trust_env=True,
        )

    async def __aenter__(self) -> AhaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def audits(
        self, since: datetime, before: datetime, page: int, **filters: str
    ) -> AuditPage:
        """One page of the audits created in [since, before)."""
        params = {
            "created_since": iso_millis(since),
            "created_before": iso_millis(before),
            "page": str(page),
            "per_page": str(self.account.per_page),
            **filters,
        }
        response = await self._get(AUDITS_PATH, params)
        return parse_page(response.content, page, self.account.per_page)

    async def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        import httpx

        attempt = 0
        # Seconds waited on consecutive 429s; a longer rate limit than configured fails the run.
        limited_for = 0.0
        while True:
            await self._bucket.acquire()
            self.stats.requests += 1
            try:
                response = await self._http.get(path, params=params)
            except httpx.TransportError as error:
                self._count("error")
                if _unresolvable(error):
                    host = httpx.URL(self.account.url()).host
                    raise AccountNotFound(
                        f"cannot resolve {host}: the account name must be the subdomain of "
                        "your Aha! URL (or set base_url)"
                    ) from None
                verdict: Verdict = Wait(None)
                detail = f"{type(error).__name__}: {error}"
            else:
                self._count(str(response.status_code))
                verdict = classify(response.status_code, response.headers, self.account)
                detail = f"HTTP {response.status_code}"
                if isinstance(verdict, Ok):
                    return response
            if isinstance(verdict, Fail):
                raise verdict.error
            assert isinstance(verdict, Wait)
            if verdict.rate_limited:
                budget = self.account.rate_limit.max_wait_seconds - limited_for
                delay = verdict.after if verdict.after is not None else backoff(attempt + 1)
                if delay > budget:
                    raise RateLimitNotCleared(
                        f"Aha! kept answering 429 (rate limited) for "
                        f"{self.account.rate_limit.max_wait_seconds:.0f} s"
                    )
                attempt += 1
                limited_for += delay
                self.stats.rate_limited += 1
                self.stats.rate_limit_wait_seconds += delay
                if self._metrics is not None:
                    self._metrics.rate_limit_waits.labels(self.account.name).inc()
                    self._metrics.rate_limit_wait_seconds.labels(self.account.name).inc(delay)
                log.info(
                    "rate limited by Aha!",
                    extra={"account": self.account.name, "wait_seconds": round(delay, 3)},
                )
                await self._sleep(delay)
                continue
            limited_for = 0.0
            attempt += 1
            if attempt > self.account.max_retries:
                raise ApiUnavailable(f"Aha!'s API failed {attempt} times in a row (last: {detail})")
            delay = min(verdict.after, _MAX_BACKOFF) if verdict.after else backoff(attempt)
            self.stats.retries += 1
            log.warning(
                "Aha! API request failed, retrying",
                extra={"account": self.account.name, "detail": detail, "attempt": attempt},
            )
            await self._sleep(delay)

    def _count(self, status: str) -> None:
        self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
        if self._metrics is not None:
            self._metrics.requests.labels(self.account.name, status).inc()
