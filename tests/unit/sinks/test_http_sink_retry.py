"""The generic HTTPS sink's status rules, as a table."""

from __future__ import annotations

import pytest

from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge, Verdict
from forwarder.sinks.http.retry import classify


@pytest.mark.parametrize(
    ("status", "headers", "extra", "expected"),
    [
        (200, {}, (), Ok()),
        (202, {}, (), Ok()),
        (204, {}, (404,), Ok()),
        (500, {}, (), Retry("HTTP 500: boom", None)),
        (502, {"Retry-After": "12"}, (), Retry("HTTP 502: boom", 12.0)),
        (503, {"retry-after": "0"}, (), Retry("HTTP 503: boom", 0.0)),
        (429, {"retry-after": "30"}, (), Retry("HTTP 429: boom", 30.0)),
        (408, {}, (), Retry("HTTP 408: boom", None)),
        (425, {}, (), Retry("HTTP 425: boom", None)),
        (400, {}, (), Reject("HTTP 400: boom")),
        (
            401,
            {},
            (),
            Retry(
                "HTTP 401: boom (check the sink's url, credentials and proxy)",
                None,
                Failure.DESTINATION,
            ),
        ),
        (
            403,
            {},
            (),
            Retry(
                "HTTP 403: boom (check the sink's url, credentials and proxy)",
                None,
                Failure.DESTINATION,
            ),
        ),
        (413, {"retry-after": "5"}, (), TooLarge("HTTP 413: boom")),
        (
            404,
            {},
            (),
            Retry(
                "HTTP 404: boom (check the sink's url, credentials and proxy)",
                None,
                Failure.DESTINATION,
            ),
        ),
        (
            404,
            {},
            (404, 409),
            Retry(
                "HTTP 404: boom (check the sink's url, credentials and proxy)",
                None,
                Failure.DESTINATION,
            ),
        ),
        (409, {"retry-after": "4"}, (404, 409), Retry("HTTP 409: boom", 4.0)),
        (
            302,
            {},
            (),
            Retry(
                "HTTP 302: boom (check the sink's url, credentials and proxy)",
                None,
                Failure.DESTINATION,
            ),
        ),
    ],
)
def test_classify(
    status: int, headers: dict[str, str], extra: tuple[int, ...], expected: Verdict
) -> None:
    assert classify(status, headers, "boom", extra) == expected


def test_long_answers_are_cut_in_the_reason() -> None:
    verdict = classify(400, {}, "x" * 5000)
    assert isinstance(verdict, Reject)
    assert len(verdict.reason) < 400
