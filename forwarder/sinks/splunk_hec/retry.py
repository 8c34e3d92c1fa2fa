"""What a Splunk HEC answer means: ok, retry (after how long), or reject.

The codes are HEC's documented ones ("Troubleshoot HTTP Event Collector", Possible error codes):

| code | HTTP | text |
|---|---|---|
| 0 | 200 | Success |
| 1 | 403 | Token disabled |
| 2 | 401 | Token is required |
| 3 | 401 | Invalid authorization |
| 4 | 403 | Invalid token |
| 5 | 400 | No data |
| 6 | 400 | Invalid data format |
| 7 | 400 | Incorrect index |
| 8 | 500 | Internal server error |
| 9 | 503 | Server is busy |
| 10 | 400 | Data channel is missing |
| 11 | 400 | Invalid data channel |
| 12 | 400 | Event field is required |
| 13 | 400 | Event field cannot be blank |
| 14 | 400 | ACK is disabled |
| 15 | 400 | Error in handling indexed fields |
| 16 | 400 | Query string authorization is not enabled |
| 17 | 200 | HEC is healthy (health endpoint) |
| 18-20 | 503 | HEC is unhealthy: queues full and/or ack service unavailable |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge, Verdict
from forwarder.sinks.http_common import retry_after

# Codes where the event is at fault: with `invalid-event-number` only that event is.
EVENT_CODES = frozenset({6, 12, 13, 15})
# Codes that mean the token cannot be used: an operator fixes it; the events wait.
TOKEN_CODES = frozenset({1, 2, 3, 4})
# Codes that are this sink's configuration against the token's: an operator fixes them too.
CONFIG_CODES = frozenset({7, 10, 11, 14, 16})

_TEXT_CHARS = 200

_CONFIG_HINTS = {
    7: "the token may not write to the configured index",
    10: "the token requires indexer acknowledgement: enable acknowledgement in the sink",
    11: "the collector refused the request channel",
    14: "indexer acknowledgement is disabled on the token: disable acknowledgement in the sink",
    16: "query string authorization is not enabled",
}


@dataclass(frozen=True)
class HecAnswer:
    """The parts of a HEC answer body that matter: `{"text", "code", "invalid-event-number",
    "ackId"}` (each None when absent or not readable)."""

    status: int
    text: str | None = None
    code: int | None = None
    invalid_event: int | None = None
    ack_id: int | None = None

    @property
    def detail(self) -> str:
        """`HTTP 400 code 6: Invalid data format (event 3)` for messages and logs."""
        detail = f"HTTP {self.status}"
        if self.code is not None:
            detail += f" code {self.code}"
        if self.text:
            detail += f": {self.text}"
        if self.invalid_event is not None:
            detail += f" (event {self.invalid_event})"
        return detail


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def parse_answer(status: int, body: bytes) -> HecAnswer:
    """Read a HEC answer; a body that is not HEC's JSON (a proxy's page) keeps only its start."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, Mapping):
        text = body[:_TEXT_CHARS].decode("utf-8", errors="replace").strip() or None
        return HecAnswer(status, text=text)
    text = data.get("text")
    return HecAnswer(
        status,
        text=str(text)[:_TEXT_CHARS] if text is not None else None,
        code=_int(data.get("code")),
        invalid_event=_int(data.get("invalid-event-number")),
        ack_id=_int(data.get("ackId")),
    )


def is_token_failure(answer: HecAnswer) -> bool:
    """Whether the collector refused the token (HTTP 401/403 or a token code)."""
    return answer.status in (401, 403) or answer.code in TOKEN_CODES


def classify(answer: HecAnswer, headers: Mapping[str, str] | None = None) -> Verdict:
    """The verdict on one `/services/collector/event` answer."""
    headers = headers or {}
    status, code = answer.status, answer.code
    if 200 <= status < 300 and code in (None, 0):
        return Ok()
    detail = answer.detail
    if is_token_failure(answer):
        # A disabled or wrong token is no fault of the events: they wait (the sink is reported
        # down) until an operator fixes the token, instead of filling the DLQ.
        return Retry(
            f"{detail} (token refused: check the sink's token)", failure=Failure.DESTINATION
        )
    if code in CONFIG_CODES:
        return Retry(f"{detail} ({_CONFIG_HINTS[code]})", failure=Failure.DESTINATION)
    if code in EVENT_CODES or code == 5:
        return Reject(detail)
    if status == 413:
        # The framework sends the events again in halves, down to one.
        return TooLarge(f"{detail} (request larger than the collector accepts)")
    if status == 404:
        # A wrong URL, or HEC switched off: configuration, not the events.
        return Retry(
            f"{detail} (check the sink's url; is HEC enabled?)", failure=Failure.DESTINATION
        )
    if status in (408, 425, 429) or status >= 500 or code in (8, 9):
        return Retry(detail, retry_after(headers))
    if 200 <= status < 300:
        # A 2xx with an error code HEC does not document: not proof of delivery, and nothing
        # says a retry will be read better (a bounded number of attempts, then the DLQ).
        return Retry(detail, failure=Failure.UNRECOGNIZED)
    return Reject(detail)


def event_at_fault(answer: HecAnswer, batch_size: int) -> int | None:
    """The index of the one event HEC refused, when the answer names it and the fault is the
    event's (not the request's); else None."""
    if answer.code not in EVENT_CODES:
        return None
    number = answer.invalid_event
    if number is None or not 0 <= number < batch_size:
        return None
    return number


def taken_before_busy(answer: HecAnswer, batch_size: int) -> int:
    """How many events at the start of the request HEC took before it answered "Server is busy"
    (code 9) naming the event it stopped at in `invalid-event-number`; 0 when it names none.

    The events before the named one are indexed: sending them again would index them twice.
    The named one is not at fault (the collector's queues are full): it is retried, with the
    events after it.
    """
    if answer.code != 9:
        return 0
    number = answer.invalid_event
    if number is None or not 0 < number < batch_size:
        return 0
    return number
