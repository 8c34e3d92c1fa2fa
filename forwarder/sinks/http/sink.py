"""Generic HTTPS sink: each batch is one request, a JSON array or one event per line."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from forwarder.sinks.base import DELIVERED, BatchResult, Ok, Retry, SinkError, about
from forwarder.sinks.http.config import BasicAuth, BearerAuth, HeaderAuth, HttpSinkConfig
from forwarder.sinks.http.retry import classify
from forwarder.sinks.http_common import build_client, classify_exception, gzip_body

log = logging.getLogger("forwarder.sinks.http")

_CONTENT_TYPES = {"json": "application/json", "ndjson": "application/x-ndjson"}


def encode_body(events: Sequence[bytes], encoding: str) -> bytes:
    """A request body: a JSON array of the events, or one event per line."""
    if encoding == "json":
        return b"[" + b",".join(events) + b"]"
    return b"".join(event + b"\n" for event in events)


def _where(url: str) -> str:
    # Receivers such as HTTP collectors carry their token in the path: name only the origin.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class HttpSink:
    """Send batches to an HTTP(S) endpoint with the configured method, headers and auth."""

    def __init__(self, config: HttpSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._client: httpx.AsyncClient | None = None
        self._where = _where(config.url)
        self._headers = self._request_headers(config)

    @staticmethod
    def _request_headers(config: HttpSinkConfig) -> dict[str, str]:
        headers = {"Content-Type": _CONTENT_TYPES[config.encoding]}
        # A configured Content-Type (e.g. text/plain for a line receiver) wins.
        headers.update(config.headers)
        if config.gzip:
            headers["Content-Encoding"] = "gzip"
        return headers

    def _auth(self) -> tuple[dict[str, str], Any]:
        """Secret headers and httpx auth for one request (secrets are unwrapped only here)."""
        auth = self._config.auth
        if isinstance(auth, BearerAuth):
            return {"Authorization": f"Bearer {auth.token.get_secret_value()}"}, None
        if isinstance(auth, HeaderAuth):
            return {auth.name: auth.value.get_secret_value()}, None
        if isinstance(auth, BasicAuth):
            return {}, httpx.BasicAuth(auth.username, auth.password.get_secret_value())
        return {}, None

    def prepare(self, doc: Mapping[str, Any], payload: bytes) -> bytes:
        """The event as it goes into the body: its payload in the configured format."""
        return payload

    async def start(self) -> None:
        """Create the HTTP client (raises OSError for an unreadable CA or client certificate)."""
        if self._client is None:
            self._client = build_client(self._config.http)

    async def healthcheck(self) -> None:
        """GET `healthcheck_url` and expect 2xx; without one there is nothing to check."""
        url = self._config.healthcheck_url
        if url is None:
            return
        client = await self._started()
        secret_headers, auth = self._auth()
        try:
            response = await client.get(url, headers=secret_headers, auth=auth)
        except httpx.HTTPError as error:
            reason = classify_exception(error)
            detail = reason.reason if isinstance(reason, Retry) else type(error).__name__
            raise SinkError(f"health check of {_where(url)} failed: {detail}") from None
        if not 200 <= response.status_code < 300:
            raise SinkError(f"health check of {_where(url)} answered HTTP {response.status_code}")

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        """One request for the batch: the receiver takes or refuses it whole."""
        if not events:
            return DELIVERED
        client = await self._started()
        body = encode_body(events, self._config.encoding)
        if self._config.gzip:
            body = gzip_body(body)
        secret_headers, auth = self._auth()
        action = f"{self._config.method} {self._where}"
        try:
            response = await client.request(
                self._config.method,
                self._config.url,
                content=body,
                headers={**self._headers, **secret_headers},
                auth=auth,
            )
        except httpx.HTTPError as error:
            return BatchResult.of(about(classify_exception(error), action))
        verdict = classify(
            response.status_code,
            response.headers,
            response.text,
            self._config.retry_statuses,
        )
        if isinstance(verdict, Ok):
            log.debug(
                "batch delivered",
                extra={"sink": self.name, "events": len(events), "status": response.status_code},
            )
            return DELIVERED
        return BatchResult.of(about(verdict, action))

    async def _started(self) -> httpx.AsyncClient:
        if self._client is None:
            await self.start()
        assert self._client is not None
        return self._client

    async def close(self) -> None:
        """Close the connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
