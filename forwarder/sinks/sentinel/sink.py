"""Microsoft Sentinel sink: rows posted to the Azure Monitor Logs Ingestion API."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forwarder.sinks.base import (
    Ok,
    Reject,
    Retry,
    SinkError,
    Verdict,
    raise_for,
    settle_batch,
)
from forwarder.sinks.http_common import build_client, classify_exception, gzip_body
from forwarder.sinks.sentinel.config import API_VERSION, MAX_CALL_BYTES, SentinelSinkConfig
from forwarder.sinks.sentinel.retry import classify
from forwarder.sinks.sentinel.rows import row, row_key
from forwarder.sinks.sentinel.token import TokenProvider

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("forwarder.sinks.sentinel")

REQUEST_ID_HEADER = "x-ms-client-request-id"
"""A GUID per call; Azure files failures found after its 204 under it (DCRLogErrors)."""


class SentinelSink:
    """Upload events to a data collection rule's stream, with a client-credentials token."""

    def __init__(self, config: SentinelSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._client: httpx.AsyncClient | None = None
        self._tokens: TokenProvider | None = None
        self._path = f"/dataCollectionRules/{config.dcr_immutable_id}/streams/{config.stream_name}"

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        """The JSON row of one event (the batch becomes one JSON array of rows)."""
        return row(doc, payload, self._config.format)

    async def start(self) -> None:
        """Open the HTTP client (used for both the token and the ingestion endpoint)."""
        self._ensure_client()

    def _ensure_client(self) -> tuple[httpx.AsyncClient, TokenProvider]:
        if self._client is None or self._tokens is None:
            config = self._config
            self._client = build_client(config.http, config.dce_endpoint)
            self._tokens = TokenProvider(
                self._client,
                config.token_endpoint,
                config.client_id,
                config.client_secret,
                config.scope,
            )
        return self._client, self._tokens

    @property
    def tokens(self) -> TokenProvider:
        """The token cache (for tests and diagnostics)."""
        return self._ensure_client()[1]

    async def healthcheck(self) -> None:
        """A token can be had, and the rule's stream takes an empty array."""
        verdict, request_id = await self._upload(b"[]", [])
        where = f" (request {request_id})" if request_id else ""
        raise_for(verdict, f"{self.name}: ingestion endpoint{where}")

    async def send_batch(self, events: Sequence[bytes]) -> None:
        """Upload the rows; return when Azure Monitor answered 204 for every one."""
        verdicts: dict[int, Verdict] = {}
        request_ids: dict[int, str] = {}
        whole = await self._send(
            events, list(range(len(events))), verdicts, request_ids, whole=True
        )
        settle_batch(
            whole,
            verdicts,
            sink=self.name,
            request=f"{self.name}: upload",
            batch=f"{self.name}: upload of {len(events)} rows",
            request_ids=request_ids,
        )

    async def _send(
        self,
        events: Sequence[bytes],
        positions: list[int],
        verdicts: dict[int, Verdict],
        request_ids: dict[int, str],
        *,
        whole: bool,
    ) -> Verdict | None:
        """Upload the rows at `positions`, halving the call while it is over 1 MiB (before
        sending, or on a 413); with `whole`, a failure of the call is returned instead. Each
        row's `request_ids` entry is the call that last carried it."""
        rows = [events[position] for position in positions]
        body = b"[" + b",".join(rows) + b"]"
        if len(body) > MAX_CALL_BYTES:
            verdict: Verdict = Reject(f"row of {len(body) - 2} bytes is over the 1 MiB per call")
        else:
            verdict, request_id = await self._upload(body, rows)
            for position in positions:
                request_ids[position] = request_id
        too_large = isinstance(verdict, Reject) and (
            len(body) > MAX_CALL_BYTES or verdict.reason.startswith("HTTP 413")
        )
        if too_large and len(positions) > 1:
            half = len(positions) // 2
            for part in (positions[:half], positions[half:]):
                await self._send(events, part, verdicts, request_ids, whole=False)
            return None
        if whole:
            return None if isinstance(verdict, Ok) else verdict
        for position in positions:
            verdicts[position] = verdict
        return None

    async def _upload(self, body: bytes, rows: Sequence[bytes]) -> tuple[Verdict, str]:
        """POST one JSON array of `rows`; a 401 gets one more try with a freshly fetched token.

        Returns the verdict and the request id of the last POST. Every POST is logged with its
        id: a 204 only says Azure took the call, and a row it fails to store later appears only
        in the DCR's error logs (DCRLogErrors), under that id."""
        client, tokens = self._ensure_client()
        headers = {"Content-Type": "application/json"}
        content = body
        if self._config.gzip:
            content = gzip_body(body)
            headers["Content-Encoding"] = "gzip"
        params = {"api-version": API_VERSION}
        response = None
        request_id = ""
        for attempt in (1, 2):
            try:
                token = await tokens.token()
            except SinkError as error:
                # A verdict, not an exception: halves of a split already sent stay delivered.
                return Retry(str(error), error.retry_after, error.failure), request_id
            headers["Authorization"] = f"Bearer {token}"
            request_id = str(uuid.uuid4())
            headers[REQUEST_ID_HEADER] = request_id
            try:
                response = await client.post(
                    self._path, content=content, headers=headers, params=params
                )
            except Exception as error:  # httpx's transport errors and time-outs
                self._log_call(request_id, rows, len(body), error=f"{type(error).__name__}")
                return classify_exception(error), request_id
            self._log_call(request_id, rows, len(body), status=response.status_code)
            if response.status_code != 401 or attempt == 2:
                break
            # The token expired early or was revoked: fetch a new one, once.
            tokens.invalidate(token)
        assert response is not None
        verdict = classify(response.status_code, response.headers, response.content)
        if response.status_code in (401, 403, 404):
            log.error(
                "the Logs Ingestion API refused the sink's settings; events wait",
                extra={
                    "sink": self.name,
                    "status": response.status_code,
                    "request_id": request_id,
                },
            )
        return verdict, request_id

    def _log_call(
        self,
        request_id: str,
        rows: Sequence[bytes],
        size: int,
        *,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        """One line per call, with what it carried: the key to Azure's own error logs."""
        extra: dict[str, Any] = {
            "sink": self.name,
            "request_id": request_id,
            "rows": len(rows),
            "bytes": size,
        }
        if status is not None:
            extra["status"] = status
        if error is not None:
            extra["error.type"] = error
        if rows:
            extra["first_event_key"] = row_key(rows[0])
            extra["last_event_key"] = row_key(rows[-1])
        log.info("sentinel upload", extra=extra)
        if rows and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "sentinel upload rows",
                extra={
                    "sink": self.name,
                    "request_id": request_id,
                    "event_keys": [row_key(data) for data in rows],
                },
            )

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._tokens = None
