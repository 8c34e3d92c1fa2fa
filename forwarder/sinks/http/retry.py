"""Which answers of a generic HTTP receiver are worth sending again."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from forwarder.sinks.base import Ok, Retry, Verdict
from forwarder.sinks.http_common import classify_status, retry_after


def classify(
    status: int,
    headers: Mapping[str, str],
    body: str = "",
    retry_statuses: Collection[int] = (),
) -> Verdict:
    """2xx ok; 408, 425, 429, 5xx and the configured statuses retry; other 4xx reject."""
    verdict = classify_status(status, headers, body)
    if isinstance(verdict, Ok | Retry) or status not in retry_statuses:
        return verdict
    detail = f"HTTP {status}" + (f": {body[:300]}" if body else "")
    return Retry(detail, retry_after(headers))
