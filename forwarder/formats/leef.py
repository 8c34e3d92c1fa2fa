"""LEEF 2.0 (IBM QRadar Log Event Extended Format): a pipe-delimited header, then key=value pairs.

LEEF defines no escape sequences, so a character that a position cannot hold is replaced by a
space: `|`, CR and LF in header fields; the attribute delimiter, CR and LF in values
(docs/formats/leef.md cites the IBM guide). Other control characters, Unicode line separators and
bidirectional controls become U+FFFD (forwarder/formats/controls.py). Keys are constants of this
module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from forwarder.formats import Encoder
from forwarder.formats.cef import audit_strings, cut, verb
from forwarder.formats.controls import replace_controls
from forwarder.formats.options import (
    MAPPINGS,
    MONTHS,
    dig,
    epoch_ms,
    event_time,
    formats_config,
    severity_rule,
    text,
)
from forwarder.records import iso_millis

EVENT_ID_MAX = 255  # "The EventID field cannot exceed 255 characters."
USER_NAME_MAX = 255  # usrName
# The guide sets no length for other values; this project cuts them where CEF does (cs1..cs6).
VALUE_MAX = 4000


def _java_mmm(moment: datetime) -> str:
    return (
        f"{MONTHS[moment.month - 1]} {moment.day:02d} {moment.year:04d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d} GMT"
    )


def _java_iso(moment: datetime) -> str:
    return iso_millis(moment)[:-1] + "+0000"


_DEV_TIME: dict[str, Callable[[datetime], str]] = {
    "MMM dd yyyy HH:mm:ss.SSS z": _java_mmm,
    "yyyy-MM-dd'T'HH:mm:ss.SSSZ": _java_iso,
    "epoch_ms": lambda moment: str(epoch_ms(moment)),
}


def header_field(value: str, limit: int) -> str:
    """A header field: cut, `|`, CR and LF made spaces (LEEF has no escapes), controls U+FFFD."""
    value = cut(value, limit).replace("|", " ").replace("\r", " ").replace("\n", " ")
    return replace_controls(value)


def delimiter_field(delimiter: str) -> str:
    """The DelimiterCharacter header field: the character itself if printable, else `xHH`."""
    if "!" <= delimiter <= "~" and delimiter != "|":
        return delimiter
    return f"x{ord(delimiter):02X}"


def encoder(options: Any = None) -> Encoder:
    """The LEEF 2.0 encoder for the `formats` options (None: defaults)."""
    leef = formats_config(options).leef
    delimiter = leef.delimiter
    prefix = "LEEF:2.0|" + "|".join(
        header_field(value, EVENT_ID_MAX) for value in (leef.vendor, leef.product, leef.version)
    )
    delimiter_header = delimiter_field(delimiter)
    render_time = _DEV_TIME[leef.dev_time_format]
    # Epoch milliseconds need no devTimeFormat ("an epoch value of 10 or 13 digits").
    time_format = "" if leef.dev_time_format == "epoch_ms" else leef.dev_time_format
    severity = severity_rule(
        leef.default_severity, leef.severity_by_action, leef.severity_by_record_type
    )

    def value_of(raw: str, limit: int) -> str:
        # The delimiter first: a control-character delimiter (x1F) in a value becomes a space like
        # any delimiter, not U+FFFD, and is left raw only between attributes.
        value = cut(raw, limit).replace(delimiter, " ").replace("\r", " ").replace("\n", " ")
        return replace_controls(value)

    def encode(event: Mapping[str, Any]) -> bytes:
        """One normalized event as one LEEF 2.0 line (UTF-8, no newline)."""
        ecs = event.get("event")
        ecs = ecs if isinstance(ecs, MAPPINGS) else {}
        user = event.get("user")
        user = user if isinstance(user, MAPPINGS) else {}
        organization = event.get("organization")
        organization = organization if isinstance(organization, MAPPINGS) else {}
        audit = dig(event, "aha", "audit")
        event_id = text(ecs.get("action")) or "unknown"

        pairs: list[str] = []
        moment = event_time(event)
        if moment is not None:
            pairs.append(f"devTime={render_time(moment)}")
            if time_format:
                pairs.append(f"devTimeFormat={time_format}")
        pairs.append(f"sev={severity(event)}")
        category = ecs.get("category")
        fields: list[tuple[str, str, int]] = [
            (
                "cat",
                ",".join(text(c) for c in category)
                if isinstance(category, list)
                else text(category),
                VALUE_MAX,
            ),
            ("usrName", text(user.get("email")) or text(user.get("name")), USER_NAME_MAX),
            ("url", text(dig(event, "url", "full")), VALUE_MAX),
            ("eventId", text(ecs.get("id")), VALUE_MAX),
            ("action", verb(event), VALUE_MAX),
            ("outcome", text(ecs.get("outcome")), VALUE_MAX),
            ("userId", text(user.get("id")), VALUE_MAX),
            ("userDisplayName", text(user.get("name")), VALUE_MAX),
            ("account", text(organization.get("name")) or text(organization.get("id")), VALUE_MAX),
        ]
        if isinstance(audit, MAPPINGS):
            record_type, record_id, changed, changes, contributors, associated = audit_strings(
                audit
            )
            fields += [
                ("recordType", record_type, VALUE_MAX),
                ("recordId", record_id, VALUE_MAX),
                ("associatedRecord", associated, VALUE_MAX),
                ("changedFields", changed, VALUE_MAX),
                ("changes", changes, VALUE_MAX),
                ("contributors", contributors, VALUE_MAX),
            ]
        fields.append(("msg", text(event.get("message")), VALUE_MAX))
        for key, raw, limit in fields:
            if raw:
                pairs.append(f"{key}={value_of(raw, limit)}")

        line = (
            f"{prefix}|{header_field(event_id, EVENT_ID_MAX)}|{delimiter_header}|"
            f"{delimiter.join(pairs)}"
        )
        return line.encode("utf-8", "replace")

    return encode
