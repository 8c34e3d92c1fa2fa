from __future__ import annotations

import pytest

from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge, Verdict
from forwarder.sinks.splunk_hec.retry import (
    HecAnswer,
    classify,
    event_at_fault,
    is_token_failure,
    parse_answer,
    taken_before_busy,
)


def hec(status: int, code: int | None = None, text: str | None = None, **extra: int) -> HecAnswer:
    return HecAnswer(status, text=text, code=code, invalid_event=extra.get("invalid_event"))


@pytest.mark.parametrize(
    ("answer", "headers", "expected"),
    [
        (hec(200, 0, "Success"), {}, Ok),
        (hec(200), {}, Ok),  # a HEC-compatible receiver that says nothing
        # The token: an operator fixes it, the events wait instead of going to the DLQ.
        (hec(403, 1, "Token disabled"), {}, Retry),
        (hec(401, 2, "Token is required"), {}, Retry),
        (hec(401, 3, "Invalid authorization"), {}, Retry),
        (hec(403, 4, "Invalid token"), {}, Retry),
        (hec(403, text="Forbidden by proxy"), {}, Retry),
        # The event is at fault.
        (hec(400, 5, "No data"), {}, Reject),
        (hec(400, 6, "Invalid data format", invalid_event=2), {}, Reject),
        (hec(400, 12, "Event field is required"), {}, Reject),
        (hec(400, 13, "Event field cannot be blank"), {}, Reject),
        (hec(400, 15, "Error in handling indexed fields"), {}, Reject),
        # The sink's configuration against the token's: fixed by an operator, events wait.
        (hec(400, 7, "Incorrect index", invalid_event=0), {}, Retry),
        (hec(400, 10, "Data channel is missing"), {}, Retry),
        (hec(400, 11, "Invalid data channel"), {}, Retry),
        (hec(400, 14, "ACK is disabled"), {}, Retry),
        (hec(400, 16, "Query string authorization is not enabled"), {}, Retry),
        (hec(404, 404, "The requested URL was not found on this server."), {}, Retry),
        # The collector: busy, broken, or in between.
        (hec(500, 8, "Internal server error"), {}, Retry),
        (hec(503, 9, "Server is busy"), {}, Retry),
        (hec(502, text="Bad gateway"), {}, Retry),
        (hec(429), {}, Retry),
        (hec(408), {}, Retry),
        # Too large: the framework sends the events again in halves.
        (hec(413, text="Content-Length of 9 too large (maximum is 8)"), {}, TooLarge),
        (hec(400, text="Bad request"), {}, Reject),
        (hec(405), {}, Reject),
        (hec(200, 8, "Internal server error"), {}, Retry),  # 2xx with an error code is no ack
    ],
)
def test_classify(answer: HecAnswer, headers: dict[str, str], expected: type[Verdict]) -> None:
    verdict = classify(answer, headers)
    assert isinstance(verdict, expected)
    if not isinstance(verdict, Ok):
        assert f"HTTP {answer.status}" in verdict.reason
        if answer.text:
            assert answer.text in verdict.reason


@pytest.mark.parametrize(("status", "code"), [(503, 9), (429, None), (500, 8)])
def test_busy_answers_carry_retry_after(status: int, code: int | None) -> None:
    verdict = classify(hec(status, code), {"Retry-After": "7"})
    assert isinstance(verdict, Retry) and verdict.after == 7.0


def test_token_answers_name_the_token_as_the_fix() -> None:
    verdict = classify(hec(403, 4, "Invalid token"))
    assert isinstance(verdict, Retry) and "token" in verdict.reason
    assert is_token_failure(hec(401, 2)) and not is_token_failure(hec(503, 9))


def test_configuration_answers_say_what_to_change() -> None:
    missing = classify(hec(400, 10, "Data channel is missing"))
    disabled = classify(hec(400, 14, "ACK is disabled"))
    assert isinstance(missing, Retry) and "enable acknowledgement" in missing.reason
    assert isinstance(disabled, Retry) and "disable acknowledgement" in disabled.reason


@pytest.mark.parametrize(
    ("answer", "failure"),
    [
        # A person must act: the token, the sink's settings against the token's, the URL.
        (hec(403, 1, "Token disabled"), Failure.DESTINATION),
        (hec(401, text="Unauthorized"), Failure.DESTINATION),
        (hec(400, 7, "Incorrect index"), Failure.DESTINATION),
        (hec(400, 10, "Data channel is missing"), Failure.DESTINATION),
        (hec(400, 14, "ACK is disabled"), Failure.DESTINATION),
        (hec(404, text="Not found"), Failure.DESTINATION),
        # Busy or down: as long as it takes.
        (hec(503, 9, "Server is busy"), Failure.TRANSIENT),
        (hec(502, text="Bad gateway"), Failure.TRANSIENT),
        (hec(200, 8, "Internal server error"), Failure.TRANSIENT),  # a documented code
        # A 2xx with an error code HEC does not document: bounded, then the DLQ.
        (hec(200, 99, "Something new"), Failure.UNRECOGNIZED),
        (hec(201, 42), Failure.UNRECOGNIZED),
    ],
)
def test_failure_classes(answer: HecAnswer, failure: Failure) -> None:
    verdict = classify(answer)
    assert isinstance(verdict, Retry) and verdict.failure is failure


@pytest.mark.parametrize(
    ("answer", "size", "expected"),
    [
        (hec(400, 6, invalid_event=2), 5, 2),
        (hec(400, 15, invalid_event=0), 5, 0),
        (hec(400, 6, invalid_event=5), 5, None),  # out of the batch: not trusted
        (hec(400, 6), 5, None),  # no number: the whole request
        (hec(400, 7, invalid_event=1), 5, None),  # the index: configuration, not the event
        (hec(503, 9, invalid_event=1), 5, None),
    ],
)
def test_event_at_fault(answer: HecAnswer, size: int, expected: int | None) -> None:
    assert event_at_fault(answer, size) == expected


@pytest.mark.parametrize(
    ("answer", "size", "expected"),
    [
        # Busy after taking the first two events: they are in, the rest waits.
        (hec(503, 9, "Server is busy", invalid_event=2), 5, 2),
        (hec(503, 9, invalid_event=0), 5, 0),  # nothing taken
        (hec(503, 9, invalid_event=5), 5, 0),  # out of the batch: not trusted
        (hec(503, 9), 5, 0),  # no number: the whole request waits
        (hec(400, 6, invalid_event=2), 5, 0),  # not busy: the event is at fault (above)
        (hec(500, 8, invalid_event=2), 5, 0),
    ],
)
def test_taken_before_busy(answer: HecAnswer, size: int, expected: int) -> None:
    assert taken_before_busy(answer, size) == expected


def test_parse_documented_body() -> None:
    body = b'{"text":"Invalid data format","code":6,"invalid-event-number":3}'
    assert parse_answer(400, body) == HecAnswer(400, "Invalid data format", 6, 3, None)
    acked = parse_answer(200, b'{"text":"Success","code":0,"ackId":12}')
    assert acked.ack_id == 12 and acked.code == 0


def test_parse_a_proxy_page_keeps_only_its_start() -> None:
    page = b"<html>" + b"x" * 5000 + b"</html>"
    answer = parse_answer(502, page)
    assert answer.code is None and answer.text is not None
    assert answer.text.startswith("<html>") and len(answer.text) <= 200
    assert parse_answer(500, b"").text is None
