"""What an Elasticsearch / OpenSearch answer means: whole requests and each bulk item."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge, Verdict
from forwarder.sinks.http_common import retry_after

# Item errors that are the cluster's state or configuration, not the event: an operator (or
# time) fixes them, so the event waits instead of going to the DLQ.
_RETRIED_ITEM_TYPES = frozenset(
    {
        "es_rejected_execution_exception",
        "circuit_breaking_exception",
        "unavailable_shards_exception",
        "no_shard_available_action_exception",
        "process_cluster_event_timeout_exception",
        "cluster_block_exception",
        "index_not_found_exception",
        "security_exception",
        "node_not_connected_exception",
        "node_closed_exception",
        "connect_transport_exception",
        "receive_timeout_transport_exception",
    }
)
# Of those, the ones a person has to act on: privileges, a write block, a missing index.
_DESTINATION_ITEM_TYPES = frozenset(
    {"cluster_block_exception", "index_not_found_exception", "security_exception"}
)

_DETAIL_CHARS = 300
_GIST_CHARS = 200


def error_detail(error: Any) -> str:
    """`type: reason` of an Elasticsearch error object (or its text), kept short."""
    if isinstance(error, Mapping):
        kind = str(error.get("type") or "error")
        reason = error.get("reason")
        caused_by = error.get("caused_by")
        text = f"{kind}: {reason}" if reason else kind
        if isinstance(caused_by, Mapping) and caused_by.get("reason"):
            text += f" (caused by {caused_by.get('type')}: {caused_by.get('reason')})"
        return text[:_DETAIL_CHARS]
    return str(error)[:_DETAIL_CHARS]


def classify_item(status: int, error: Any = None) -> Verdict:
    """One `_bulk` item: created, already there (409: an idempotent resend), retry or reject."""
    if 200 <= status < 300:
        return Ok()
    kind = str(error.get("type") or "") if isinstance(error, Mapping) else ""
    if status == 409 and kind in ("version_conflict_engine_exception", ""):
        # `create` with an `_id` that exists: this event was delivered before.
        return Ok()
    detail = f"HTTP {status} {error_detail(error)}" if error else f"HTTP {status}"
    if status in (401, 403, 404) or kind in _DESTINATION_ITEM_TYPES:
        return Retry(detail, failure=Failure.DESTINATION)
    if status in (408, 429) or status >= 500 or kind in _RETRIED_ITEM_TYPES:
        return Retry(detail)
    return Reject(detail)


def classify_bulk(status: int, content: bytes, actions: int) -> Verdict | list[Verdict]:
    """A 2xx `_bulk` answer to `actions` actions: one verdict for them all, or one per action.

    The Bulk API's contract, as its mature clients read it: `errors: false` means every action
    succeeded, whatever `items` holds (some compatible endpoints answer with no items, or fewer).
    Only when `errors` is not false are the items read, and then they must match the actions
    one to one. An answer that cannot be read so is UNRECOGNIZED: resent a bounded number of
    times (harmless: `create` with the event's `_id`, and 409 is success), then dead-lettered.
    """
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        return _unrecognized("bulk answer is not JSON", status, content)
    if not isinstance(answer, Mapping):
        return _unrecognized("bulk answer is not a JSON object", status, content)
    errors = answer.get("errors")
    if errors is False:
        return Ok()
    items = answer.get("items")
    flag = orjson.dumps(errors).decode()[:20]
    if not isinstance(items, list):
        return _unrecognized(f"bulk answer with errors={flag} and no items", status, content)
    if len(items) != actions:
        return _unrecognized(
            f"bulk answer with errors={flag} and {len(items)} items for {actions} actions",
            status,
            content,
        )
    results = [_result(item) for item in items]
    if any(result is None for result in results):
        return _unrecognized(
            f"bulk answer with errors={flag} and items that are not one action each",
            status,
            content,
        )
    return [_item_verdict(result) for result in results if result is not None]


def _result(item: Any) -> Mapping[str, Any] | None:
    """The result of one `{"<action>": {...}}` item, or None when the item is not one."""
    if not isinstance(item, Mapping) or len(item) != 1:
        return None
    result = next(iter(item.values()))
    return result if isinstance(result, Mapping) else None


def _item_verdict(result: Mapping[str, Any]) -> Verdict:
    status = result.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        gist = orjson.dumps(result)[:_GIST_CHARS].decode("utf-8", "replace")
        return Retry(f"bulk item without a status: {gist}", failure=Failure.UNRECOGNIZED)
    return classify_item(status, result.get("error"))


def _unrecognized(what: str, status: int, content: bytes) -> Retry:
    gist = content[:_GIST_CHARS].decode("utf-8", "replace").strip()
    if len(content) > _GIST_CHARS:
        gist += "..."
    return Retry(f"{what} (HTTP {status}): {gist or '(empty)'}", failure=Failure.UNRECOGNIZED)


def classify_response(status: int, headers: Mapping[str, str], body: bytes = b"") -> Verdict:
    """The `_bulk` request as a whole; Ok means: read the items."""
    if 200 <= status < 300:
        return Ok()
    detail = f"HTTP {status}"
    error = _error_of(body)
    if error is not None:
        detail += f" {error_detail(error)}"
    if status in (401, 403):
        # A credential or privilege problem: an operator fixes it, the events keep waiting.
        return Retry(
            f"{detail} (check the sink's credentials and privileges)",
            failure=Failure.DESTINATION,
        )
    if status == 404:
        # A missing index or a wrong URL (path prefix, proxy): configuration, not the events.
        return Retry(f"{detail} (check the sink's url and index)", failure=Failure.DESTINATION)
    if status in (408, 425, 429) or status >= 500:
        return Retry(detail, retry_after(headers))
    if status == 413:
        # A proxy in front of the cluster often has a lower limit than the cluster: the
        # framework sends the request again in halves.
        return TooLarge(f"{detail} (request larger than the cluster or proxy accepts)")
    return Reject(detail)


def _error_of(body: bytes) -> Any:
    """The `error` member of an error answer, or the start of the text when it is not JSON."""
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:_DETAIL_CHARS].decode("utf-8", "replace")
    if isinstance(parsed, Mapping):
        return parsed.get("error", parsed)
    return None
