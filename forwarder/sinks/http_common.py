"""Shared parts of the HTTP sinks: the httpx client, gzip, and the default status rules."""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge, Verdict
from forwarder.sinks.config import HttpClientConfig

if TYPE_CHECKING:
    import httpx


def build_client(config: HttpClientConfig, base_url: str = "") -> httpx.AsyncClient:
    """An httpx client with the sink's time-outs, TLS, proxy and connection limits."""
    import httpx

    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds),
        verify=config.tls.context(),
        proxy=config.proxy,
        trust_env=False,
        limits=httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        ),
    )


def gzip_body(payload: bytes) -> bytes:
    """Gzip a request body; level 6 is the usual balance of CPU and size."""
    return gzip.compress(payload, compresslevel=6, mtime=0)


def retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), if any."""
    raw = headers.get("retry-after") or headers.get("Retry-After")
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# The request never reached what takes the events: credentials, the URL or a proxy are wrong,
# whatever the events hold. An operator fixes it; the events wait (never dropped).
_DESTINATION_STATUSES = frozenset({401, 403, 404, 405, 407, 421})


def classify_status(status: int, headers: Mapping[str, str], body: str = "") -> Verdict:
    """The common HTTP rule: 2xx ok; 408, 425, 429 and 5xx retry; redirects (not followed) and
    401, 403, 404, 405, 407, 421 retry as the destination's configuration; 413 is too large (the
    framework halves the request); other 4xx reject."""
    if 200 <= status < 300:
        return Ok()
    detail = f"HTTP {status}" + (f": {body[:300]}" if body else "")
    if status in (408, 425, 429) or status >= 500:
        return Retry(detail, retry_after(headers))
    if 300 <= status < 400 or status in _DESTINATION_STATUSES:
        hint = " (check the sink's url, credentials and proxy)"
        return Retry(detail + hint, retry_after(headers), failure=Failure.DESTINATION)
    if status == 413:
        return TooLarge(detail)
    return Reject(detail)


def classify_exception(error: BaseException) -> Retry:
    """Transport failures (connect, time-out, reset) are worth retrying; TLS failures too,
    since a certificate can be renewed, but they are named plainly."""
    return Retry(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
