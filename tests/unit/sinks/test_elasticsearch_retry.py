"""The Elasticsearch / OpenSearch answers, as tables: what is retried, what is rejected."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge
from forwarder.sinks.elasticsearch.retry import classify_bulk, classify_item, classify_response


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
        (413, {}, b"", TooLarge, None),  # the framework halves the request
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


def created(status: int = 201) -> dict[str, Any]:
    return {"create": {"_index": "logs-aha.audit-default", "_id": "a", "status": status}}


@pytest.mark.parametrize(
    ("answer", "actions"),
    [
        # The Bulk API's contract: `errors: false` is every action done, whatever `items` holds.
        ({"errors": False, "items": []}, 3),
        ({"errors": False, "items": [created()]}, 3),
        ({"errors": False}, 3),
        ({"errors": False, "items": "abbreviated"}, 1),
        ({"took": 1, "errors": False, "items": [created(), created()]}, 2),
    ],
)
def test_bulk_answers_with_errors_false_are_all_delivered(
    answer: dict[str, Any], actions: int
) -> None:
    assert classify_bulk(200, orjson.dumps(answer), actions) == Ok()


def test_bulk_answers_with_errors_are_read_item_by_item() -> None:
    conflict = {"create": {"status": 409, "error": error("version_conflict_engine_exception")}}
    mapping = {"create": {"status": 400, "error": error("mapper_parsing_exception")}}
    busy = {"create": {"status": 429, "error": error("es_rejected_execution_exception")}}
    items = [created(), conflict, mapping, busy]
    for flag in (True, None):  # `errors` missing: read the items all the same
        answer = {"items": items} | ({} if flag is None else {"errors": flag})
        verdicts = classify_bulk(200, orjson.dumps(answer), 4)
        assert isinstance(verdicts, list)
        assert [type(verdict) for verdict in verdicts] == [Ok, Ok, Reject, Retry]


@pytest.mark.parametrize(
    ("content", "actions", "said"),
    [
        (b'{"errors":true,"items":[]}', 2, "errors=true and 0 items for 2 actions"),
        (b'{"errors":true,"items":[{"create":{"status":201}}]}', 2, "1 items for 2 actions"),
        (b'{"items":[{"create":{"status":201}}]}', 3, "errors=null and 1 items"),
        (b'{"errors":"yes","items":[]}', 1, 'errors="yes" and 0 items'),
        (b'{"errors":true}', 1, "errors=true and no items"),
        (b'{"errors":true,"items":[1,2]}', 2, "not one action each"),
        (b'{"errors":true,"items":[{"create":{},"index":{}}]}', 1, "not one action each"),
        (b"[]", 1, "not a JSON object"),
        (b"OK", 1, "bulk answer is not JSON (HTTP 200): OK"),
        (b"", 1, "not JSON (HTTP 200): (empty)"),
        (b"<html>" + b"x" * 1000, 1, "<html>xxx"),
    ],
)
def test_bulk_answers_that_cannot_be_matched_to_the_actions_are_unrecognized(
    content: bytes, actions: int, said: str
) -> None:
    verdict = classify_bulk(200, content, actions)
    assert isinstance(verdict, Retry)
    assert verdict.failure is Failure.UNRECOGNIZED
    assert said in verdict.reason
    assert len(verdict.reason) < 400  # the answer's gist, not all of it


def test_a_bulk_item_without_a_status_is_unrecognized_alone() -> None:
    answer = {"errors": True, "items": [created(), {"create": {"_id": "b", "status": "201"}}]}
    verdicts = classify_bulk(200, orjson.dumps(answer), 2)
    assert isinstance(verdicts, list)
    ok, unread = verdicts
    assert ok == Ok()
    assert isinstance(unread, Retry) and unread.failure is Failure.UNRECOGNIZED
    assert "without a status" in unread.reason and '"_id":"b"' in unread.reason


@pytest.mark.parametrize(
    ("verdict", "failure"),
    [
        (classify_response(401, {}, body("security_exception", "x", 401)), Failure.DESTINATION),
        (classify_response(403, {}, body("security_exception", "x", 403)), Failure.DESTINATION),
        (classify_response(404, {}, b"404 page not found"), Failure.DESTINATION),
        (classify_response(503, {}, b""), Failure.TRANSIENT),
        (classify_item(403, error("security_exception")), Failure.DESTINATION),
        (classify_item(403, error("cluster_block_exception")), Failure.DESTINATION),
        (classify_item(404, error("index_not_found_exception")), Failure.DESTINATION),
        (classify_item(429, error("es_rejected_execution_exception")), Failure.TRANSIENT),
        (classify_item(503, error("unavailable_shards_exception")), Failure.TRANSIENT),
    ],
)
def test_what_an_operator_must_fix_is_marked_as_the_destinations(
    verdict: Retry, failure: Failure
) -> None:
    assert isinstance(verdict, Retry)
    assert verdict.failure is failure
