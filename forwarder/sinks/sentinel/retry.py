"""What the Logs Ingestion API and the Microsoft Entra token endpoint answers mean."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge, Verdict
from forwarder.sinks.http_common import retry_after

_DETAIL_CHARS = 300


def classify(status: int, headers: Mapping[str, str], body: bytes = b"") -> Verdict:
    """One upload to `dataCollectionRules/{id}/streams/{stream}` (204 when taken)."""
    if 200 <= status < 300:
        return Ok()
    detail = f"HTTP {status}"
    code, message = _azure_error(headers, body)
    if code or message:
        detail += f" {code or 'error'}: {message}".rstrip(": ")
    if status == 401:
        return Retry(
            f"{detail} (token rejected; check tenant_id, client_id and scope)",
            failure=Failure.DESTINATION,
        )
    if status == 403:
        # Settings an operator fixes; the events wait for them rather than go to the DLQ.
        return Retry(
            f"{detail} (the app needs the Monitoring Metrics Publisher role on the DCR; "
            "a new role assignment can take 30 minutes to apply)",
            failure=Failure.DESTINATION,
        )
    if status == 404:
        return Retry(
            f"{detail} (check dce_endpoint and dcr_immutable_id)", failure=Failure.DESTINATION
        )
    if status in (408, 429) or status >= 500:
        return Retry(detail, retry_after(headers))
    if status == 413:
        # The framework sends the rows again in halves.
        return TooLarge(f"{detail} (a call takes at most 1 MiB)")
    # 400: the rows do not fit the stream's declaration, or the body is not a JSON array.
    return Reject(detail)


def classify_token(status: int, headers: Mapping[str, str], body: bytes = b"") -> Ok | Retry:
    """The token endpoint: never a reason to drop events, since an operator can fix it."""
    if 200 <= status < 300:
        return Ok()
    detail = f"HTTP {status}"
    answer = _json(body)
    if isinstance(answer, Mapping) and answer.get("error"):
        description = str(answer.get("error_description") or "").splitlines()
        detail += f" {answer['error']}" + (f": {description[0]}" if description else "")
    detail = detail[:_DETAIL_CHARS]
    if status in (408, 429) or status >= 500:
        return Retry(f"token endpoint {detail}", retry_after(headers))
    return Retry(
        f"token request refused, {detail} (check tenant_id, client_id, client_secret)",
        failure=Failure.DESTINATION,
    )


def _azure_error(headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
    """The error code (`x-ms-error-code` or the body's) and message of an Azure answer."""
    code = headers.get("x-ms-error-code") or ""
    message = ""
    answer = _json(body)
    if isinstance(answer, Mapping) and isinstance(answer.get("error"), Mapping):
        error = answer["error"]
        code = code or str(error.get("code") or "")
        message = str(error.get("message") or "")
    elif body and answer is None:
        message = body[:_DETAIL_CHARS].decode("utf-8", "replace")
    return code, message[:_DETAIL_CHARS]


def _json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
