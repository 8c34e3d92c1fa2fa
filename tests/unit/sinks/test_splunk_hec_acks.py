"""What the Splunk HEC sink reads in an ack status answer, and how often it logs a failure."""

from __future__ import annotations

import logging

import pytest

from forwarder.sinks.splunk_hec import acks
from forwarder.sinks.splunk_hec.acks import LogLimiter, read_ack_answer


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (200, b'{"acks": {"0": true, "1": false}}', None),
        (200, b'{"acks": {}}', None),
        (200, b"<html>Welcome</html>", acks.UNREADABLE),
        (200, b'{"text": "Success", "code": 0}', acks.UNREADABLE),
        (200, b'{"acks": [0, 1]}', acks.UNREADABLE),
        (200, b"", acks.UNREADABLE),
        (400, b'{"text": "ACK is disabled", "code": 14}', acks.DISABLED),
        (401, b'{"text": "Token is required", "code": 2}', acks.TOKEN),
        (403, b"Forbidden", acks.TOKEN),
        (400, b'{"text": "Data channel is missing", "code": 10}', acks.CHANNEL),
        (400, b'{"text": "Invalid data channel", "code": 11}', acks.CHANNEL),
        (404, b"404 page not found", acks.NOT_FOUND),
        (500, b'{"text": "Internal server error", "code": 8}', acks.SERVER_ERROR),
        (502, b"Bad gateway", acks.SERVER_ERROR),
        (503, b'{"text": "Server is busy", "code": 9}', acks.SERVER_ERROR),
        (400, b'{"text": "Invalid data format", "code": 6}', acks.HTTP),
        (405, b"Method Not Allowed", acks.HTTP),
    ],
)
def test_ack_answers(status: int, body: bytes, problem: str | None) -> None:
    reply = read_ack_answer(status, body)
    assert reply.problem == problem
    if problem is None:
        assert dict(reply.statuses) in ({0: True, 1: False}, {})
    else:
        assert reply.detail.startswith(f"HTTP {status}")


def test_statuses_are_read_strictly() -> None:
    reply = read_ack_answer(200, b'{"acks": {"0": true, "1": "true", "2": 1, "x": true}}')
    # Only a JSON true is an acknowledgement; keys that are not ackIds are left out.
    assert dict(reply.statuses) == {0: True, 1: False, 2: False}


def test_log_limiter_lets_one_line_per_key_and_interval_through(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    monkeypatch.setattr(acks.time, "monotonic", lambda: now[0])
    limiter = LogLimiter(60.0)
    logger = logging.getLogger("test.limiter")
    with caplog.at_level(logging.WARNING, logger="test.limiter"):
        for _ in range(5):
            limiter.log(logger, logging.WARNING, "ack:not_found", "failed", {})
            now[0] += 1
        limiter.log(logger, logging.WARNING, "ack:channel", "failed", {})  # another kind
        now[0] += 60
        limiter.log(logger, logging.WARNING, "ack:not_found", "failed", {})
    assert [record.suppressed for record in caplog.records] == [0, 0, 4]  # type: ignore[attr-defined]
