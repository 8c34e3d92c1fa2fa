"""A fake Azure: the Microsoft Entra v2.0 token endpoint and the Logs Ingestion API.

Token endpoint (`POST /{tenant}/oauth2/v2.0/token`): form-encoded client credentials, an
`access_token` with `expires_in`, and Entra's error answers (`invalid_client` for a bad secret,
`unauthorized_client` for an unknown app, `invalid_scope`). Ingestion
(`POST /dataCollectionRules/{id}/streams/{stream}?api-version=2023-01-01`): a bearer token that
exists and has not expired (else 401), the rule's permission (403), a known rule (404) and
stream (400), the 1 MiB limit counted uncompressed (413 ContentLengthLimitExceeded), a JSON
array body, 204 when taken. Switches fail the next calls (429 with Retry-After, 5xx) and slow
the answers.

`rows` holds what a query would find, as Azure Monitor documents it stores rows:
- a `TimeGenerated` more than 2 days before the call's arrival or more than 1 day after it is
  replaced by the time of arrival ("Standard columns in Azure Monitor Logs", TimeGenerated);
- a value over 64 KB is truncated ("Azure Monitor service limits", Logs Ingestion API: "Fields
  longer than 64 KB are truncated"). The fake counts a KB as 1,000 bytes of UTF-8 (the stricter
  reading) and stores an object or array over the limit as its cut JSON text, since what Azure
  keeps of a dynamic value cut short is not documented; `truncated` lists each cut.
A 204 is all the API says: failures after it show only in the DCR's error logs, keyed by the
caller's `x-ms-client-request-id` (kept in `uploads`).
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import orjson

from tests.fakes.server import read_body

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_CALL_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 64_000
API_VERSION = "2023-01-01"
SCOPE = "https://monitor.azure.com//.default"
# How far TimeGenerated may lie from the arrival before Azure replaces it.
KEPT_BEFORE = timedelta(days=2)
KEPT_AFTER = timedelta(days=1)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Failure:
    """Answer the next `times` uploads with this status (and Retry-After when set)."""

    status: int
    code: str
    times: int = 1
    retry_after: str | None = None


@dataclass
class Upload:
    """One upload as the fake saw it."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0


@dataclass
class FakeAzure:
    """An ASGI app; serve it with `tests.fakes.server.AsgiServer`."""

    tenant_id: str = "00000000-0000-0000-0000-0000000000aa"
    client_id: str = "11111111-2222-3333-4444-555555555555"
    client_secret: str = "the-client-secret"
    dcr_immutable_id: str = "dcr-00000000000000000000000000000001"
    streams: tuple[str, ...] = ("Custom-AhaAudit",)
    expires_in: int = 3599
    """Lifetime of the tokens handed out, in seconds."""
    authorized: bool = True
    """Whether the app holds the Monitoring Metrics Publisher role on the rule (else 403)."""
    delay_seconds: float = 0.0
    """Wait this long before answering an upload."""
    clock: Callable[[], datetime] = _utc_now
    """The time a call arrives (what an out-of-range TimeGenerated becomes)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    """Every row taken, in order, as stored (see the module)."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every row taken, in order, as the caller sent it."""
    truncated: list[tuple[int, str]] = field(default_factory=list)
    """(index in `rows`, column) of each value cut to MAX_FIELD_BYTES."""
    uploads: list[Upload] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}

    @property
    def token_path(self) -> str:
        return f"/{self.tenant_id}/oauth2/v2.0/token"

    def fail_uploads(
        self,
        status: int,
        code: str = "TooManyRequests",
        times: int = 1,
        retry_after: str | None = None,
    ) -> None:
        """Make the next `times` uploads fail with `status`."""
        with self._lock:
            self.failures.append(Failure(status, code, times, retry_after))

    def expire_tokens(self) -> None:
        """Expire every token handed out so far (as if their hour had passed)."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    # ---- ASGI ----

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        query = parse_qs(scope.get("query_string", b"").decode())
        path = scope["path"]
        extra: dict[str, str] = {}
        if scope["method"] == "POST" and path == self.token_path:
            status, answer = self._token(headers, body)
        elif scope["method"] == "POST" and path.startswith("/dataCollectionRules/"):
            upload = Upload(path, query, headers, body)
            with self._lock:
                self.uploads.append(upload)
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            status, answer, extra = self._upload(upload)
            upload.status = status
        else:
            status, answer = 404, {"error": {"code": "NotFound", "message": f"{path} not found"}}
        await _send(send, status, answer, extra)

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _entra_error(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            )
        form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
        with self._lock:
            self.token_requests.append(
                {key: value for key, value in form.items() if key != "client_secret"}
            )
        if form.get("grant_type") != "client_credentials":
            return _entra_error(
                400,
                "unsupported_grant_type",
                "AADSTS70003: The app requested an unsupported grant type.",
            )
        if form.get("client_id") != self.client_id:
            return _entra_error(
                400,
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not "
                f"found in the directory '{self.tenant_id}'.",
            )
        if form.get("client_secret") != self.client_secret:
            return _entra_error(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in "
                "the request is the client secret value, not the client secret ID, for a secret "
                f"added to app '{self.client_id}'.",
            )
        if form.get("scope") != SCOPE:
            return _entra_error(
                400,
                "invalid_scope",
                f"AADSTS70011: The provided value for the input parameter 'scope' is not valid. "
                f"The scope {form.get('scope')} is not valid.",
            )
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.expires_in
        return 200, {
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "ext_expires_in": self.expires_in,
            "access_token": token,
        }

    def _upload(self, upload: Upload) -> tuple[int, Any, dict[str, str]]:
        scheme, _, token = upload.headers.get("authorization", "").partition(" ")
        with self._lock:
            expiry = self._tokens.get(token) if scheme == "Bearer" else None
        if expiry is None or expiry <= time.monotonic():
            return _azure_error(
                401,
                "InvalidAuthenticationToken",
                "The access token is missing, invalid or expired.",
            )
        if upload.query.get("api-version") != [API_VERSION]:
            return _azure_error(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{upload.query.get('api-version')}' is invalid. "
                f"The supported versions are '{API_VERSION}'.",
            )
        parts = upload.path.split("/")
        if len(parts) != 5 or parts[3] != "streams" or parts[2] != self.dcr_immutable_id:
            return _azure_error(
                404, "NotFound", f"Data collection rule with immutable Id '{parts[2]}' not found."
            )
        if not self.authorized:
            return _azure_error(
                403,
                "OperationFailed",
                "The authentication token provided does not have access to ingest data for the "
                f"data collection rule with immutable Id '{self.dcr_immutable_id}'.",
            )
        if parts[4] not in self.streams:
            return _azure_error(
                400, "InvalidStream", f"The stream '{parts[4]}' is not declared in the rule."
            )
        with self._lock:
            if self.failures:
                failure = self.failures[0]
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.pop(0)
                status, answer, extra = _azure_error(failure.status, failure.code, "told to fail")
                if failure.retry_after:
                    extra["Retry-After"] = failure.retry_after
                return status, answer, extra
        body = upload.body
        if len(body) > MAX_CALL_BYTES:
            return _too_large(len(body))
        if upload.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
            # The limit counts the data compressed and uncompressed alike.
            if len(body) > MAX_CALL_BYTES:
                return _too_large(len(body))
        try:
            rows = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            return _azure_error(400, "InvalidPayload", f"The body is not valid JSON: {error}")
        if not isinstance(rows, list) or not all(isinstance(item, dict) for item in rows):
            return _azure_error(400, "InvalidPayload", "The body must be a JSON array of objects.")
        arrival = self.clock()
        with self._lock:
            for sent in rows:
                self.sent.append(sent)
                self.rows.append(self._stored(sent, arrival, len(self.rows)))
        return 204, None, {}

    def _stored(self, sent: dict[str, Any], arrival: datetime, index: int) -> dict[str, Any]:
        """The row as Azure keeps it: TimeGenerated within range, values within 64 KB."""
        stored: dict[str, Any] = {}
        for column, value in sent.items():
            text = value if isinstance(value, str) else None
            if isinstance(value, dict | list):
                text = orjson.dumps(value).decode()
            if text is not None and len(text.encode()) > MAX_FIELD_BYTES:
                value = text.encode()[:MAX_FIELD_BYTES].decode("utf-8", "ignore")
                self.truncated.append((index, column))
            stored[column] = value
        moment = _instant(stored.get("TimeGenerated"))
        if moment is not None and not (arrival - KEPT_BEFORE <= moment <= arrival + KEPT_AFTER):
            stored["TimeGenerated"] = _iso(arrival)
        return stored


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _too_large(size: int) -> tuple[int, Any, dict[str, str]]:
    return _azure_error(
        413,
        "ContentLengthLimitExceeded",
        f"Maximum allowed content length: {MAX_CALL_BYTES} bytes (1 MB). "
        f"Provided content length: {size} bytes.",
    )


def _azure_error(status: int, code: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"code": code, "message": message}}, {"x-ms-error-code": code}


def _entra_error(status: int, error: str, description: str) -> tuple[int, Any]:
    return status, {
        "error": error,
        "error_description": f"{description}\r\nTrace ID: fake\r\nCorrelation ID: fake",
        "error_codes": [int(description[6:].split(":")[0])],
    }


async def _send(send: Send, status: int, answer: Any, extra: dict[str, str]) -> None:
    body = b"" if answer is None else orjson.dumps(answer)
    headers = [(b"content-length", str(len(body)).encode())]
    if answer is not None:
        headers.append((b"content-type", b"application/json; charset=utf-8"))
    headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
