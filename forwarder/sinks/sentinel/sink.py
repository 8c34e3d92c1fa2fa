"""Microsoft Sentinel sink: rows posted to the Azure Monitor Logs Ingestion API."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forwarder.sinks.base import (
    BatchResult,
    Ok,
    Reject,
    Retry,
    SinkError,
    Verdict,
    about,
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
        if not isinstance(verdict, Ok):
            where = f" (request {request_id})" if request_id else ""
            raise SinkError(f"{self.name}: ingestion endpoint{where}: {verdict.reason}")

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        """Upload the rows, in calls of at most 1 MiB; each row's verdict is its call's.

        A row alone over 1 MiB is rejected without sending it. After a call that is to be
        retried (Azure busy or away, the token refused), the calls left are not sent: they wait
        for the back-off with it. Each row keeps the request id of the call that carried it.
        """
        verdicts: dict[int, Verdict] = {}
        request_ids: dict[int, str] = {}
        held: Verdict | None = None
        for call in self._calls(events, list(range(len(events))), verdicts):
            if held is not None:
                verdicts.update(dict.fromkeys(call, held))
                continue
            rows = [events[position] for position in call]
            verdict, request_id = await self._upload(b"[" + b",".join(rows) + b"]", rows)
            if request_id:
                request_ids.update(dict.fromkeys(call, request_id))
            if isinstance(verdict, Ok):
                continue
            verdict = about(verdict, f"{self.name}: upload")
            verdicts.update(dict.fromkeys(call, verdict))
            if isinstance(verdict, Retry):
                held = verdict
        first = verdicts.get(0)
        if first is not None and all(verdicts.get(p) == first for p in range(len(events))):
            # One call (or all of them) answered alike: one verdict for the batch.
            return BatchResult.of(first, request_ids)
        return BatchResult.each(verdicts, request_ids)

    def _calls(
        self, events: Sequence[bytes], positions: list[int], verdicts: dict[int, Verdict]
    ) -> list[list[int]]:
        """The rows at `positions` cut in halves until each call is within 1 MiB (Azure's
        limit, known before sending); a row alone over it gets its Reject in `verdicts`."""
        size = 2 + sum(len(events[position]) for position in positions) + len(positions) - 1
        if size <= MAX_CALL_BYTES:
            return [positions]
        if len(positions) == 1:
            verdicts[positions[0]] = Reject(f"row of {size - 2} bytes is over the 1 MiB per call")
            return []
        half = len(positions) // 2
        return self._calls(events, positions[:half], verdicts) + self._calls(
            events, positions[half:], verdicts
        )

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
            token = await tokens.token()
            if isinstance(token, Retry):
                return token, request_id
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
