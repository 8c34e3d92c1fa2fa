"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import contextvars
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed in `extra` and is logged as a key.
# uvicorn's `color_message` repeats the message with terminal escapes.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


# The id of the request being handled, added to every line logged while it is set.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


_base_factory = logging.getLogRecordFactory()


def _stamped_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # Stamped when the record is made, in the context of the code that logs: handlers may
    # format it later, elsewhere.
    record = _base_factory(*args, **kwargs)
    current = request_id.get()
    if current is not None:
        record.request_id = current
    return record


logging.setLogRecordFactory(_stamped_record)


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, logger, message and the `extra` keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def logging_dict(level: str) -> dict[str, Any]:
    """A dictConfig that sends every logger to stderr as JSON lines."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # Chatty at INFO; their warnings still come through.
            "aiokafka": {"level": "WARNING"},
            "faust": {"level": "WARNING" if level != "debug" else "DEBUG"},
            "mode": {"level": "WARNING" if level != "debug" else "DEBUG"},
            "uvicorn.error": {"level": "INFO"},
        },
    }


def setup(level: str) -> None:
    """Configure the process's logging."""
    logging.config.dictConfig(logging_dict(level))
