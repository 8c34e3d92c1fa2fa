"""Elasticsearch / OpenSearch sink: `_bulk` `create` actions with `_id` = the event key."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from forwarder.sinks.base import (
    Ok,
    SinkError,
    Verdict,
    raise_for,
    settle_batch,
)
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
            raise_for(classify_exception(error), f"{self.name}: cluster unreachable")
            raise
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
        raise_for(
            classify_response(response.status_code, response.headers, response.content),
            f"{self.name}: cluster info",
        )
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

    async def send_batch(self, events: Sequence[bytes]) -> None:
        """Send the batch; return when every event is created (or already was)."""
        verdicts: dict[int, Verdict] = {}
        whole = await self._send(events, list(range(len(events))), verdicts, whole=True)
        settle_batch(
            whole,
            verdicts,
            sink=self.name,
            request=f"{self.name}: bulk request",
            batch=f"{self.name}: bulk of {len(events)} events",
        )

    async def _send(
        self,
        events: Sequence[bytes],
        positions: list[int],
        verdicts: dict[int, Verdict],
        *,
        whole: bool,
    ) -> Verdict | None:
        """Post the events at `positions` and fill `verdicts` per event; with `whole`, a
        failure of the request itself is returned instead, as one verdict for the batch.

        A 413 splits the request in halves (a proxy in front of the cluster often has a lower
        limit than the cluster), down to one event, which is then rejected.
        """
        client = self._ensure_client()
        body = b"".join(events[position] for position in positions)
        headers = {"Content-Type": _NDJSON, "Accept": "application/json"}
        if self._config.gzip:
            body = gzip_body(body)
            headers["Content-Encoding"] = "gzip"
        params = {"pipeline": self._config.pipeline} if self._config.pipeline else None
        try:
            response = await client.post("/_bulk", content=body, headers=headers, params=params)
        except Exception as error:  # httpx's transport errors and time-outs
            return _for_all(classify_exception(error), positions, verdicts, whole)
        status = response.status_code
        if status == 413 and len(positions) > 1:
            half = len(positions) // 2
            log.info(
                "request too large, splitting", extra={"sink": self.name, "events": len(positions)}
            )
            for part in (positions[:half], positions[half:]):
                await self._send(events, part, verdicts, whole=False)
            return None
        verdict = classify_response(status, response.headers, response.content)
        if status in (401, 403):
            log.error(
                "credentials or privileges rejected by the cluster; events wait",
                extra={"sink": self.name, "status": status},
            )
        if not isinstance(verdict, Ok):
            return _for_all(verdict, positions, verdicts, whole)
        answer = classify_bulk(status, response.content, len(positions))
        if not isinstance(answer, list):
            # All created (`errors: false`), or an answer that cannot be read item by item.
            return _for_all(answer, positions, verdicts, whole)
        # One verdict per item, in the order of the actions sent.
        verdicts.update(zip(positions, answer, strict=True))
        return None

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._build_client()
        return self._client

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _for_all(
    verdict: Verdict, positions: list[int], verdicts: dict[int, Verdict], whole: bool
) -> Verdict | None:
    if whole:
        return verdict
    for position in positions:
        verdicts[position] = verdict
    return None


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
