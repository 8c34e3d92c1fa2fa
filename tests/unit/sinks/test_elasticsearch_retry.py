"""The Elasticsearch / OpenSearch answers, as tables: what is retried, what is rejected."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from forwarder.sinks.base import Ok, Reject, Retry
from forwarder.sinks.elasticsearch.retry import classify_item, classify_response


def error(kind: str, reason: str = "why") -> dict[str, Any]:
    return {"type": kind, "reason": reason, "index": "logs-aha.audit-default", "shard": "0"}


@pytest.mark.parametrize(
    ("status", "item_error", "verdict"),
    [
        (201, None, Ok),
        (200, None, Ok),
        (409, error("version_conflict_engine_exception"), Ok),
        (429, error("es_rejected_execution_exception"), Retry),
        (429, error("circuit_breaking_exception"), Retry),
        (503, error("unavailable_shards_exception"), Retry),
        (500, error("exception"), Retry),
        (
            403,
            error("cluster_block_exception", "index [x] blocked by: [FORBIDDEN/8/index write]"),
            Retry,
        ),
        (
            403,
            error("security_exception", "action [indices:data/write/bulk[s]] is unauthorized"),
            Retry,
        ),
        (404, error("index_not_found_exception", "no such index [aha]"), Retry),
        (400, error("mapper_parsing_exception", "failed to parse field [x]"), Reject),
        (400, error("document_parsing_exception", "[1:2] failed to parse"), Reject),
        (
            400,
            error("illegal_argument_exception", "only write ops with an op_type of create"),
            Reject,
        ),
        (400, error("strict_dynamic_mapping_exception", "mapping set to strict"), Reject),
        (409, error("some_other_conflict"), Reject),
    ],
)
def test_bulk_items(status: int, item_error: dict[str, Any] | None, verdict: type) -> None:
    result = classify_item(status, item_error)
    assert isinstance(result, verdict)
    if isinstance(result, (Retry, Reject)) and item_error:
        # The DLQ and the logs name the error type and Elasticsearch's reason.
        assert item_error["type"] in result.reason and item_error["reason"] in result.reason
        assert f"HTTP {status}" in result.reason


def body(kind: str, reason: str, status: int) -> bytes:
    cause = {"type": kind, "reason": reason}
    return orjson.dumps({"error": {"root_cause": [cause], **cause}, "status": status})


@pytest.mark.parametrize(
    ("status", "headers", "content", "verdict", "after"),
    [
        (200, {}, b'{"errors":false,"items":[]}', Ok, None),
        (
            429,
            {"Retry-After": "12"},
            body("es_rejected_execution_exception", "q", 429),
            Retry,
            12.0,
        ),
        (429, {}, body("circuit_breaking_exception", "[parent] Data too large", 429), Retry, None),
        (500, {}, body("exception", "boom", 500), Retry, None),
        (502, {}, b"<html>Bad Gateway</html>", Retry, None),
        (503, {"retry-after": "3"}, b"", Retry, 3.0),
        (401, {}, body("security_exception", "unable to authenticate", 401), Retry, None),
        (403, {}, body("security_exception", "is unauthorized for API key", 403), Retry, None),
        (404, {}, b"404 page not found", Retry, None),
        (413, {}, b"", Reject, None),
        (
            400,
            {},
            body("illegal_argument_exception", "Malformed action/metadata line [1]", 400),
            Reject,
            None,
        ),
        (
            406,
            {},
            b'{"error":"Content-Type header [text/plain] is not supported","status":406}',
            Reject,
            None,
        ),
    ],
)
def test_whole_requests(
    status: int, headers: dict[str, str], content: bytes, verdict: type, after: float | None
) -> None:
    result = classify_response(status, headers, content)
    assert isinstance(result, verdict)
    if isinstance(result, Retry):
        assert result.after == after
    if not isinstance(result, Ok):
        assert f"HTTP {status}" in result.reason


def test_reasons_name_the_error_and_stay_short() -> None:
    result = classify_response(400, {}, body("illegal_argument_exception", "x" * 5000, 400))
    assert isinstance(result, Reject)
    assert "illegal_argument_exception" in result.reason
    assert len(result.reason) < 400
    auth = classify_response(401, {}, body("security_exception", "unable to authenticate", 401))
    assert isinstance(auth, Retry) and "credentials" in auth.reason
