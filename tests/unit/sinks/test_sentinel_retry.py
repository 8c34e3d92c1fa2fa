"""The Logs Ingestion API's and the token endpoint's answers, as tables."""

from __future__ import annotations

import orjson
import pytest

from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge
from forwarder.sinks.sentinel.retry import classify, classify_token


def azure(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    ("status", "headers", "body", "verdict", "after", "shown"),
    [
        (204, {}, b"", Ok, None, ""),
        (200, {}, b"", Ok, None, ""),
        (
            429,
            {"Retry-After": "17"},
            azure("TooManyRequests", "slow down"),
            Retry,
            17.0,
            "TooManyRequests",
        ),
        (503, {"Retry-After": "4"}, b"", Retry, 4.0, "HTTP 503"),
        (500, {}, b"", Retry, None, "HTTP 500"),
        (401, {}, azure("InvalidAuthenticationToken", "expired"), Retry, None, "token rejected"),
        (
            403,
            {"x-ms-error-code": "OperationFailed"},
            azure("OperationFailed", "no access"),
            Retry,
            None,
            "Monitoring Metrics Publisher",
        ),
        (
            404,
            {},
            azure("NotFound", "Data collection rule not found"),
            Retry,
            None,
            "dcr_immutable_id",
        ),
        (
            413,
            {"x-ms-error-code": "ContentLengthLimitExceeded"},
            b"",
            TooLarge,  # the framework sends the rows again in halves
            None,
            "ContentLengthLimitExceeded",
        ),
        (
            400,
            {},
            azure("InvalidPayload", "not an array"),
            Reject,
            None,
            "InvalidPayload: not an array",
        ),
        (400, {}, b"plain text answer", Reject, None, "plain text answer"),
    ],
)
def test_uploads(
    status: int,
    headers: dict[str, str],
    body: bytes,
    verdict: type,
    after: float | None,
    shown: str,
) -> None:
    result = classify(status, headers, body)
    assert isinstance(result, verdict)
    if isinstance(result, Retry):
        assert result.after == after
    if not isinstance(result, Ok):
        assert f"HTTP {status}" in result.reason and shown in result.reason


def entra(error: str, description: str) -> bytes:
    return orjson.dumps(
        {"error": error, "error_description": f"{description}\r\nTrace ID: x", "error_codes": [1]}
    )


@pytest.mark.parametrize(
    ("status", "headers", "body", "verdict", "after", "shown"),
    [
        (200, {}, b'{"access_token":"t","expires_in":3599}', Ok, None, ""),
        (
            401,
            {},
            entra("invalid_client", "AADSTS7000215: Invalid client secret provided."),
            Retry,
            None,
            "AADSTS7000215",
        ),
        (
            400,
            {},
            entra("unauthorized_client", "AADSTS700016: Application not found"),
            Retry,
            None,
            "unauthorized_client",
        ),
        (
            400,
            {},
            entra("invalid_scope", "AADSTS70011: scope is not valid"),
            Retry,
            None,
            "invalid_scope",
        ),
        (429, {"Retry-After": "30"}, b"", Retry, 30.0, "HTTP 429"),
        (503, {}, b"", Retry, None, "HTTP 503"),
    ],
)
def test_token_answers_never_drop_events(
    status: int,
    headers: dict[str, str],
    body: bytes,
    verdict: type,
    after: float | None,
    shown: str,
) -> None:
    result = classify_token(status, headers, body)
    assert isinstance(result, verdict)
    if isinstance(result, Retry):
        assert result.after == after
        assert shown in result.reason
        # Only the first line of Entra's description: no trace ids piling up in logs.
        assert "Trace ID" not in result.reason


@pytest.mark.parametrize(
    ("verdict", "failure"),
    [
        (classify(401, {}, azure("InvalidAuthenticationToken", "expired")), Failure.DESTINATION),
        (classify(403, {}, azure("OperationFailed", "no access")), Failure.DESTINATION),
        (classify(404, {}, azure("NotFound", "no such rule")), Failure.DESTINATION),
        (classify(503, {}, b""), Failure.TRANSIENT),
        (classify_token(401, {}, entra("invalid_client", "bad secret")), Failure.DESTINATION),
        (classify_token(400, {}, entra("invalid_scope", "bad scope")), Failure.DESTINATION),
        (classify_token(429, {}, b""), Failure.TRANSIENT),
    ],
)
def test_what_an_operator_must_fix_is_marked_as_the_destinations(
    verdict: Retry, failure: Failure
) -> None:
    assert isinstance(verdict, Retry)
    assert verdict.failure is failure
