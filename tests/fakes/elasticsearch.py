"""A fake Elasticsearch / OpenSearch cluster: `GET /`, `_cluster/health`, `_bulk`, and the
`PUT`/`GET` of ingest pipelines (`_ingest/pipeline/<id>`) and index templates
(`_index_template/<name>`).

Faithful to the bulk API where the sink depends on it: NDJSON action/source pairs ending in a
newline, `create` failing with a 409 item when the `_id` exists in that index, data streams
taking only `create` and only documents with `@timestamp`, per-item errors in request order,
`errors` true when any item failed, security errors as Elasticsearch words them. Switches make
chosen items or whole requests fail, answers slow, and `_bulk` answers abbreviated or garbled
the way some Elasticsearch-compatible endpoints answer.

Pipelines and templates are checked as the APIs document (a pipeline needs `processors`, each
processor one known type; a template needs `index_patterns`), stored, and answered
`{"acknowledged": true}`; a PUT replaces what was there. They are not applied to `_bulk`.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import gzip
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import orjson

from tests.fakes.server import read_body

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_ACTIONS = ("index", "create", "update", "delete")

# Processor types both Elasticsearch and OpenSearch document.
PROCESSORS = frozenset(
    {
        "append", "bytes", "convert", "csv", "date", "date_index_name", "dissect",
        "dot_expander", "drop", "fail", "foreach", "grok", "gsub", "html_strip", "join", "json",
        "kv", "lowercase", "pipeline", "remove", "rename", "script", "set", "sort", "split",
        "trim", "uppercase", "urldecode", "user_agent",
    }
)  # fmt: skip
_PIPELINE_KEYS = frozenset({"description", "processors", "on_failure", "version", "_meta"})

BulkAnswer = Literal["errors_false_empty", "errors_false_fewer", "errors_true_fewer", "not_json"]
"""How `mangle_bulk_answers` changes a `_bulk` answer (the work itself is done as usual):
`errors_false_empty`: `{"errors": false, "items": []}`; `errors_false_fewer`: `errors: false`
and only the first half of the items; `errors_true_fewer`: `errors: true` and every item but
the last; `not_json`: 200 with a plain-text body."""


@dataclass
class ItemFailure:
    """Fail the item with this `_id` (`times` more times; None: always)."""

    status: int
    type: str
    reason: str
    times: int | None = 1


@dataclass
class RequestFailure:
    """Answer the next `times` requests with this status (and Retry-After when set)."""

    status: int
    type: str
    reason: str
    times: int = 1
    retry_after: str | None = None


@dataclass
class Recorded:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0


@dataclass
class FakeElasticsearch:
    """An ASGI app; serve it with `tests.fakes.server.AsgiServer`."""

    distribution: str = "elasticsearch"
    api_keys: set[str] = field(default_factory=set)
    """Accepted API keys as `id:key`; empty with no `users` means no authentication."""
    users: dict[str, str] = field(default_factory=dict)
    """Accepted basic-auth users and passwords."""
    data_streams: tuple[str, ...] = ("logs-*-*",)
    """Index name patterns that are data streams (Elasticsearch's built-in `logs` template)."""
    cluster_info_forbidden: bool = False
    """Answer 403 to `GET /`, as for a key that may only write events."""
    max_content_length: int = 100 * 1024 * 1024
    """Larger bodies get a 413 (Elasticsearch's http.max_content_length, or a proxy's limit)."""
    delay_seconds: float = 0.0
    """Wait this long before answering any request."""
    manage_forbidden: bool = False
    """Answer 403 to the PUT of pipelines and templates, as for a key without the cluster
    privileges manage_pipeline and manage_index_templates."""

    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Ingest pipelines by id, as last PUT."""
    index_templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Composable index templates by name, as last PUT."""

    documents: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """index -> _id -> source of every document created."""
    requests: list[Recorded] = field(default_factory=list)
    item_failures: dict[str, ItemFailure] = field(default_factory=dict)
    request_failures: list[RequestFailure] = field(default_factory=list)
    bulk_answer: BulkAnswer | None = None
    """Change the answer of successful `_bulk` requests (see BulkAnswer)."""
    bulk_answer_times: int | None = None
    """How many more answers to change; None: all."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._seq_no = 0

    # ---- switches and assertions for tests ----

    def fail_item(
        self, doc_id: str, status: int, type: str, reason: str, times: int | None = 1
    ) -> None:
        """Make the item with `doc_id` fail with this error."""
        with self._lock:
            self.item_failures[doc_id] = ItemFailure(status, type, reason, times)

    def fail_requests(
        self,
        status: int,
        type: str = "es_rejected_execution_exception",
        reason: str = "rejected execution",
        times: int = 1,
        retry_after: str | None = None,
    ) -> None:
        """Make the next `times` requests fail as a whole."""
        with self._lock:
            self.request_failures.append(RequestFailure(status, type, reason, times, retry_after))

    def mangle_bulk_answers(self, answer: BulkAnswer | None, times: int | None = None) -> None:
        """Change the next `times` (None: every) successful `_bulk` answers; None: stop."""
        with self._lock:
            self.bulk_answer = answer
            self.bulk_answer_times = times

    def ids(self, index: str) -> set[str]:
        """The `_id`s created in `index`."""
        with self._lock:
            return set(self.documents.get(index, {}))

    def bulk_requests(self) -> list[Recorded]:
        """The `_bulk` requests received, answered or not."""
        with self._lock:
            return [request for request in self.requests if request.path.endswith("/_bulk")]

    # ---- ASGI ----

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        recorded = Recorded(
            method=scope["method"],
            path=scope["path"],
            query=parse_qs(scope.get("query_string", b"").decode()),
            headers=headers,
            body=body,
        )
        with self._lock:
            self.requests.append(recorded)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        status, answer, extra = self._handle(recorded)
        recorded.status = status
        if isinstance(answer, bytes):
            await _send(send, status, answer, "text/plain; charset=utf-8", extra)
        else:
            await _send_json(send, status, answer, extra)

    def _handle(self, request: Recorded) -> tuple[int, Any, dict[str, str]]:
        authenticated = self._authenticate(request.headers.get("authorization"), request.path)
        if authenticated is not None:
            return authenticated
        with self._lock:
            if self.request_failures:
                failure = self.request_failures[0]
                failure.times -= 1
                if failure.times <= 0:
                    self.request_failures.pop(0)
                extra = {"Retry-After": failure.retry_after} if failure.retry_after else {}
                return failure.status, _error(failure.status, failure.type, failure.reason), extra
        path = request.path.rstrip("/") or "/"
        if request.method in ("GET", "HEAD") and path == "/":
            if self.cluster_info_forbidden:
                return (
                    403,
                    _error(
                        403,
                        "security_exception",
                        "action [cluster:monitor/main] is unauthorized for API key id [aha] of user "
                        "[forwarder], this action is granted by the cluster privileges "
                        "[monitor,manage,all]",
                    ),
                    {},
                )
            return 200, self._info(), {}
        if request.method == "GET" and path == "/_cluster/health":
            return 200, {"cluster_name": "fake", "status": "green", "timed_out": False}, {}
        if request.method in ("POST", "PUT") and (path == "/_bulk" or path.endswith("/_bulk")):
            return self._bulk(request)
        for prefix, store, put in (
            ("/_ingest/pipeline/", self.pipelines, self._put_pipeline),
            ("/_index_template/", self.index_templates, self._put_template),
        ):
            name = path[len(prefix) :] if path.startswith(prefix) else ""
            if name and "/" not in name:
                if request.method == "PUT":
                    return put(name, request.body)
                if request.method == "GET":
                    return self._get(prefix, name, store)
        return (
            400,
            _error(
                400,
                "illegal_argument_exception",
                f"no handler found for uri [{request.path}] and method [{request.method}]",
            ),
            {},
        )

    def _authenticate(
        self, header: str | None, path: str
    ) -> tuple[int, Any, dict[str, str]] | None:
        if not self.api_keys and not self.users:
            return None
        if header:
            scheme, _, credentials = header.partition(" ")
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except ValueError:
                decoded = ""
            if scheme == "ApiKey" and decoded in self.api_keys:
                return None
            user, _, password = decoded.partition(":")
            if scheme == "Basic" and user in self.users and self.users[user] == password:
                return None
        reason = (
            "unable to authenticate with provided credentials and anonymous access is not "
            "allowed for this request"
            if header
            else f"missing authentication credentials for REST request [{path}]"
        )
        realm = 'Basic realm="security", charset="UTF-8", ApiKey'
        return 401, _error(401, "security_exception", reason), {"WWW-Authenticate": realm}

    def _info(self) -> dict[str, Any]:
        if self.distribution == "opensearch":
            return {
                "name": "fake-node",
                "cluster_name": "fake",
                "cluster_uuid": "fake-uuid",
                "version": {"distribution": "opensearch", "number": "2.17.0"},
                "tagline": "The OpenSearch Project: https://opensearch.org/",
            }
        return {
            "name": "fake-node",
            "cluster_name": "fake",
            "cluster_uuid": "fake-uuid",
            "version": {"number": "8.17.0", "build_flavor": "default"},
            "tagline": "You Know, for Search",
        }

    def _bulk(self, request: Recorded) -> tuple[int, Any, dict[str, str]]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type not in ("application/json", "application/x-ndjson"):
            return (
                406,
                {
                    "error": f"Content-Type header [{content_type}] is not supported",
                    "status": 406,
                },
                {},
            )
        if len(request.body) > self.max_content_length:
            return 413, _error(413, "content_too_long", "request body too large"), {}
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if not body.endswith(b"\n"):
            return (
                400,
                _error(
                    400,
                    "illegal_argument_exception",
                    "The bulk request must be terminated by a newline [\\n]",
                ),
                {},
            )
        lines = body.split(b"\n")[:-1]
        items: list[dict[str, Any]] = []
        line = 0
        while line < len(lines):
            try:
                action_line = orjson.loads(lines[line])
                (action, meta), *others = action_line.items()
                if others or action not in _ACTIONS or not isinstance(meta, dict):
                    raise ValueError
            except (orjson.JSONDecodeError, ValueError, AttributeError):
                return (
                    400,
                    _error(
                        400,
                        "illegal_argument_exception",
                        f"Malformed action/metadata line [{line + 1}], expected one of "
                        f"{list(_ACTIONS)}",
                    ),
                    {},
                )
            source_line = None
            if action != "delete":
                line += 1
                if line >= len(lines):
                    return (
                        400,
                        _error(
                            400,
                            "action_request_validation_exception",
                            "Validation Failed: 1: source is missing;",
                        ),
                        {},
                    )
                source_line = lines[line]
            line += 1
            items.append({action: self._item(action, meta, source_line)})
        errors = any("error" in next(iter(item.values())) for item in items)
        return 200, self._mangled({"took": 3, "errors": errors, "items": items}), {}

    def _forbidden(self, action: str) -> tuple[int, Any, dict[str, str]]:
        reason = f"action [{action}] is unauthorized for API key id [aha] of user [forwarder]"
        return 403, _error(403, "security_exception", reason), {}

    def _put_pipeline(self, name: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if self.manage_forbidden:
            return self._forbidden("cluster:admin/ingest/pipeline/put")
        try:
            pipeline = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, _error(400, "parse_exception", "request body is required"), {}
        if not isinstance(pipeline, dict) or "processors" not in pipeline:
            return (
                400,
                _error(400, "parse_exception", "[processors] required property is missing"),
                {},
            )
        unknown = sorted(set(pipeline) - _PIPELINE_KEYS)
        if unknown:
            reason = (
                f"pipeline [{name}] doesn't support one or more provided configuration "
                f"parameters {unknown}"
            )
            return 400, _error(400, "parse_exception", reason), {}
        for processor in [*pipeline["processors"], *(pipeline.get("on_failure") or [])]:
            kind = next(iter(processor), "") if isinstance(processor, dict) else ""
            if not isinstance(processor, dict) or len(processor) != 1 or kind not in PROCESSORS:
                reason = f"No processor type exists with name [{kind}]"
                return 400, _error(400, "parse_exception", reason), {}
        with self._lock:
            self.pipelines[name] = pipeline
        return 200, {"acknowledged": True}, {}

    def _put_template(self, name: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if self.manage_forbidden:
            return self._forbidden("indices:admin/index_template/put")
        try:
            template = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, _error(400, "parse_exception", "request body is required"), {}
        if not isinstance(template, dict) or not template.get("index_patterns"):
            reason = "Validation Failed: 1: index patterns are missing;"
            return 400, _error(400, "action_request_validation_exception", reason), {}
        with self._lock:
            self.index_templates[name] = template
        return 200, {"acknowledged": True}, {}

    def _get(
        self, prefix: str, name: str, store: dict[str, dict[str, Any]]
    ) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            found = store.get(name)
        if prefix == "/_ingest/pipeline/":
            return (200, {name: found}, {}) if found is not None else (404, {}, {})
        if found is None:
            reason = f"index template matching [{name}] not found"
            return 404, _error(404, "resource_not_found_exception", reason), {}
        return 200, {"index_templates": [{"name": name, "index_template": found}]}, {}

    def _mangled(self, answer: dict[str, Any]) -> Any:
        with self._lock:
            mode = self.bulk_answer
            if mode is None:
                return answer
            if self.bulk_answer_times is not None:
                self.bulk_answer_times -= 1
                if self.bulk_answer_times <= 0:
                    self.bulk_answer = self.bulk_answer_times = None
        items = answer["items"]
        if mode == "errors_false_empty":
            return answer | {"errors": False, "items": []}
        if mode == "errors_false_fewer":
            return answer | {"errors": False, "items": items[: len(items) // 2]}
        if mode == "errors_true_fewer":
            return answer | {"errors": True, "items": items[:-1]}
        return b"OK"

    def _item(self, action: str, meta: dict[str, Any], source_line: bytes | None) -> dict[str, Any]:
        index = str(meta.get("_index") or "")
        doc_id = str(meta.get("_id") or f"auto-{self._seq_no}")
        result: dict[str, Any] = {"_index": index, "_id": doc_id}
        data_stream = any(fnmatch.fnmatchcase(index, pattern) for pattern in self.data_streams)
        with self._lock:
            failure = self.item_failures.get(doc_id)
            if failure is not None:
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        del self.item_failures[doc_id]
                return result | _item_error(failure.status, failure.type, failure.reason, index)
            if data_stream and action != "create":
                return result | _item_error(
                    400,
                    "illegal_argument_exception",
                    "only write ops with an op_type of create are allowed in data streams",
                    index,
                )
            try:
                source = orjson.loads(source_line or b"")
                if not isinstance(source, dict):
                    raise ValueError
            except (orjson.JSONDecodeError, ValueError):
                return result | _item_error(
                    400, "document_parsing_exception", "[1:1] failed to parse", index
                )
            if data_stream and "@timestamp" not in source:
                return result | _item_error(
                    400,
                    "document_parsing_exception",
                    "[1:1] failed to parse: data stream timestamp field [@timestamp] is missing",
                    index,
                )
            stored = self.documents.setdefault(index, {})
            if action == "create" and doc_id in stored:
                return result | _item_error(
                    409,
                    "version_conflict_engine_exception",
                    f"[{doc_id}]: version conflict, document already exists (current version [1])",
                    index,
                )
            stored[doc_id] = source
            self._seq_no += 1
            return result | {
                "_version": 1,
                "result": "created",
                "_shards": {"total": 2, "successful": 1, "failed": 0},
                "_seq_no": self._seq_no,
                "_primary_term": 1,
                "status": 201,
            }


def _error(status: int, type: str, reason: str) -> dict[str, Any]:
    cause = {"type": type, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def _item_error(status: int, type: str, reason: str, index: str) -> dict[str, Any]:
    return {
        "status": status,
        "error": {
            "type": type,
            "reason": reason,
            "index_uuid": "fake-uuid",
            "shard": "0",
            "index": index,
        },
    }


async def _send_json(send: Send, status: int, answer: Any, extra: dict[str, str]) -> None:
    await _send(send, status, orjson.dumps(answer), "application/json", extra)


async def _send(
    send: Send, status: int, body: bytes, content_type: str, extra: dict[str, str]
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
