"""Elasticsearch / OpenSearch sink: `_bulk` `create` actions with `_id` = the event key."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from forwarder.sinks.base import BatchResult, Ok, SinkError, Verdict, about
from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig
from forwarder.sinks.elasticsearch.retry import classify_bulk, classify_response
from forwarder.sinks.http_common import build_client, classify_exception, gzip_body
from forwarder.sinks.ids import event_key

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("forwarder.sinks.elasticsearch")

_NDJSON = "application/x-ndjson"


def api_key_header(api_key: str) -> str:
    """`ApiKey <encoded>` from either the encoded key or `id:api_key`."""
    if ":" in api_key:
        api_key = base64.b64encode(api_key.encode()).decode("ascii")
    return f"ApiKey {api_key}"


class ElasticsearchSink:
    """Create each event once in a data stream or index through `_bulk`."""

    def __init__(self, config: ElasticsearchSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._client: httpx.AsyncClient | None = None
        # Data streams only take `create`; `create` with an `_id` also makes a resend harmless.
        self._action_head = b'{"create":{"_index":' + orjson.dumps(config.index) + b',"_id":'
        self._add_timestamp = config.format != "ecs"

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        """The action line and the document line of one event, each ending in a newline."""
        action = self._action_head + orjson.dumps(event_key(doc)) + b"}}\n"
        if self._add_timestamp:
            payload = _with_timestamp(payload, doc.get("@timestamp"))
        return action + payload + b"\n"

    async def start(self) -> None:
        """Open the HTTP client."""
        if self._client is None:
            self._client = self._build_client()

    def _build_client(self) -> httpx.AsyncClient:
        import httpx

        client = build_client(self._config.http, self._config.url)
        if self._config.api_key is not None:
            client.headers["Authorization"] = api_key_header(
                self._config.api_key.get_secret_value()
            )
        elif self._config.username is not None and self._config.password is not None:
            client.auth = httpx.BasicAuth(
                self._config.username, self._config.password.get_secret_value()
            )
        return client

    async def healthcheck(self) -> None:
        """The cluster answers `GET /` (Elasticsearch or OpenSearch) and takes the credentials."""
        client = self._ensure_client()
        try:
            response = await client.get("/")
        except Exception as error:  # httpx's transport errors, TLS included
            failed = classify_exception(error)
            raise SinkError(_reason(failed, f"{self.name}: cluster unreachable")) from None
        if response.status_code == 403:
            # Authenticated; a key limited to writing events may not read cluster info.
            log.info(
                "cluster info not readable with these credentials; writes will tell",
                extra={"sink": self.name},
            )
            return
        if response.status_code == 401:
            log.error(
                "credentials rejected by the cluster", extra={"sink": self.name, "status": 401}
            )
        verdict = classify_response(response.status_code, response.headers, response.content)
        if not isinstance(verdict, Ok):
            raise SinkError(_reason(verdict, f"{self.name}: cluster info"))
        info = _json_object(response.content)
        version: Mapping[str, Any] = info.get("version") or {}
        if not isinstance(version, Mapping):
            version = {}
        log.info(
            "cluster reachable",
            extra={
                "sink": self.name,
                "cluster": info.get("cluster_name"),
                "distribution": version.get("distribution", "elasticsearch"),
                "version": version.get("number"),
            },
        )

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        """One `_bulk` request: a verdict for the request, or one per event (409 is created)."""
        client = self._ensure_client()
        body = b"".join(events)
        headers = {"Content-Type": _NDJSON, "Accept": "application/json"}
        if self._config.gzip:
            body = gzip_body(body)
            headers["Content-Encoding"] = "gzip"
        params = {"pipeline": self._config.pipeline} if self._config.pipeline else None
        request = f"{self.name}: bulk request"
        try:
            response = await client.post("/_bulk", content=body, headers=headers, params=params)
        except Exception as error:  # httpx's transport errors and time-outs
            return BatchResult.of(about(classify_exception(error), request))
        status = response.status_code
        verdict = classify_response(status, response.headers, response.content)
        if status in (401, 403):
            log.error(
                "credentials or privileges rejected by the cluster; events wait",
                extra={"sink": self.name, "status": status},
            )
        if not isinstance(verdict, Ok):
            return BatchResult.of(about(verdict, request))
        answer = classify_bulk(status, response.content, len(events))
        if not isinstance(answer, list):
            # All created (`errors: false`), or an answer that cannot be read item by item.
            return BatchResult.of(about(answer, request))
        # One verdict per item, in the order of the actions sent.
        return BatchResult.each(
            {position: item for position, item in enumerate(answer) if not isinstance(item, Ok)}
        )

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._build_client()
        return self._client

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _reason(verdict: Verdict, where: str) -> str:
    """What a failed health check says: where, and the verdict's reason."""
    return where if isinstance(verdict, Ok) else f"{where}: {verdict.reason}"


def _with_timestamp(payload: bytes, timestamp: Any) -> bytes:
    """Put `@timestamp` first in a JSON object: data streams need it and OCSF has `time`."""
    if not isinstance(timestamp, str) or not payload.startswith(b"{"):
        return payload
    rest = payload[1:].lstrip()
    separator = b"" if rest.startswith(b"}") else b","
    return b'{"@timestamp":' + orjson.dumps(timestamp) + separator + rest


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


__all__ = ["ElasticsearchSink", "SinkError", "api_key_header"]
