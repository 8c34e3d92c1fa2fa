"""Syslog around any format: RFC 5424 or RFC 3164 headers, RFC 6587 octet counting for streams.

A frame is one syslog message and never more: the header fields are cut to their RFC lengths and
to printable US-ASCII, SD-PARAM values are escaped (RFC 5424 §6.3.3) with other control characters
made U+FFFD, and CR or LF in MSG become spaces so that newline-delimited transports cannot split it
(docs/formats/syslog.md).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from forwarder.formats import Encoder, cef, ecs, leef
from forwarder.formats.controls import replace_controls
from forwarder.formats.options import (
    MONTHS,
    SyslogOptions,
    dig,
    event_time,
    formats_config,
    severity_rule,
    text,
)
from forwarder.records import iso_millis

NILVALUE = "-"
BOM = b"\xef\xbb\xbf"
HOSTNAME_MAX, APP_NAME_MAX, MSGID_MAX = 255, 48, 32  # RFC 5424 §6
TAG_MAX = 32  # RFC 3164 §4.1.3
SD_VALUE_MAX = 255  # this project's cap: the parameters are ids


def printable_ascii(value: str, limit: int) -> str:
    """`value` as 1..limit characters of %d33-126 (others become `_`), or the NILVALUE."""
    if not (value.isascii() and value.isprintable() and " " not in value):
        value = "".join(char if "!" <= char <= "~" else "_" for char in value)
    return value[:limit] or NILVALUE


def one_line(message: bytes) -> bytes:
    """MSG with CR and LF made spaces: the encoders never emit them; this makes it certain."""
    if b"\n" in message or b"\r" in message:
        return message.replace(b"\r", b" ").replace(b"\n", b" ")
    return message


def sd_value(value: str) -> str:
    """A PARAM-VALUE: cut, one line, controls made U+FFFD, `\\` `"` `]` escaped (RFC 5424 §6.3.3)."""
    value = cef.cut(value, SD_VALUE_MAX)
    if "\r" in value or "\n" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    value = replace_controls(value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def timestamp_5424(moment: datetime) -> str:
    """RFC 5424 TIMESTAMP in UTC with milliseconds (the form QRadar asks for)."""
    return iso_millis(moment)


def timestamp_3164(moment: datetime) -> str:
    """RFC 3164 TIMESTAMP `Mmm dd hh:mm:ss`, a day below 10 padded with a space, in UTC."""
    return (
        f"{MONTHS[moment.month - 1]} {moment.day:2d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )


def local_hostname() -> str:
    """This machine's host name, as HOSTNAME allows it."""
    return printable_ascii(socket.gethostname(), HOSTNAME_MAX)


def _short_hostname(host: str) -> str:
    # RFC 3164 §4.1.2: the host name without its domain; an IP address stays whole.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.split(".", 1)[0] or host
    return host


class SyslogFramer:
    """Frames encoded events as syslog messages; everything per-config is computed once here."""

    def __init__(self, options: SyslogOptions | None = None) -> None:
        options = options or SyslogOptions()
        host = options.hostname or local_hostname()
        self.rfc = options.rfc
        self._facility = options.facility * 8
        self._severity = severity_rule(
            options.default_severity, options.severity_by_action, options.severity_by_record_type
        )
        self._host_5424 = printable_ascii(host, HOSTNAME_MAX)
        self._host_3164 = _short_hostname(self._host_5424)
        self._app_name = printable_ascii(options.app_name, APP_NAME_MAX)
        self._tag = options.app_name[:TAG_MAX]
        self._sd_id = options.sd_id if options.structured_data else None
        self._bom = BOM if options.utf8_bom else b""
        self.frame: Callable[[bytes, Mapping[str, Any]], bytes] = (
            self.frame_5424 if options.rfc == "5424" else self.frame_3164
        )

    def priority(self, event: Mapping[str, Any]) -> int:
        """PRIVAL: facility times 8 plus the event's severity (RFC 5424 §6.2.1)."""
        return self._facility + self._severity(event)

    def structured_data(self, event: Mapping[str, Any]) -> str:
        """STRUCTURED-DATA: one SD-ELEMENT with the event's ids, or the NILVALUE."""
        if self._sd_id is None:
            return NILVALUE
        organization = event.get("organization")
        params = (
            ("eventId", dig(event, "event", "id")),
            ("recordType", dig(event, "aha", "audit", "auditable", "type")),
            ("recordId", dig(event, "aha", "audit", "auditable", "id")),
            ("userId", dig(event, "user", "id")),
            ("orgId", dig(organization, "id")),
        )
        rendered = "".join(
            f' {name}="{sd_value(text(value))}"' for name, value in params if text(value)
        )
        return f"[{self._sd_id}{rendered}]" if rendered else NILVALUE

    def frame_5424(self, message: bytes, event: Mapping[str, Any]) -> bytes:
        """`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG` (RFC 5424 §6)."""
        moment = event_time(event)
        header = (
            f"<{self.priority(event)}>1 {timestamp_5424(moment) if moment else NILVALUE} "
            f"{self._host_5424} {self._app_name} {NILVALUE} "
            f"{printable_ascii(text(dig(event, 'event', 'action')), MSGID_MAX)} "
            f"{self.structured_data(event)}"
        ).encode("utf-8", "replace")
        if not message:
            return header
        return b"%s %s%s" % (header, self._bom, one_line(message))

    def frame_3164(self, message: bytes, event: Mapping[str, Any]) -> bytes:
        """`<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG` (RFC 3164 §4.1)."""
        moment = event_time(event)
        if moment is None:
            # No time, no HEADER: a relay then adds its own time and host (RFC 3164 §4.3.2).
            header = f"<{self.priority(event)}>{self._tag}: "
        else:
            header = (
                f"<{self.priority(event)}>{timestamp_3164(moment)} {self._host_3164} {self._tag}: "
            )
        return header.encode("ascii") + one_line(message)


def frame_5424(
    message: bytes, event: Mapping[str, Any], options: SyslogOptions | None = None
) -> bytes:
    """One RFC 5424 message around `message` (builds a framer: use SyslogFramer per event)."""
    return SyslogFramer(options).frame_5424(message, event)


def frame_3164(
    message: bytes, event: Mapping[str, Any], options: SyslogOptions | None = None
) -> bytes:
    """One RFC 3164 message around `message` (builds a framer: use SyslogFramer per event)."""
    return SyslogFramer(options).frame_3164(message, event)


def octet_count(frame: bytes) -> bytes:
    """RFC 6587 §3.4.1 octet counting (also RFC 5425 §4.3): `MSG-LEN SP SYSLOG-MSG`."""
    return b"%d %s" % (len(frame), frame)


def _syslog(inner: Encoder, options: Any) -> Encoder:
    frame = SyslogFramer(formats_config(options).syslog).frame

    def encode(event: Mapping[str, Any]) -> bytes:
        """One event in the inner format, in one syslog message."""
        return frame(inner(event), event)

    return encode


def cef_encoder(options: Any = None) -> Encoder:
    """syslog-cef: a CEF line as the MSG of a syslog message (framing per `syslog.rfc`)."""
    return _syslog(cef.encoder(options), options)


def leef_encoder(options: Any = None) -> Encoder:
    """syslog-leef: a LEEF line as the MSG of a syslog message."""
    return _syslog(leef.encoder(options), options)


def json_encoder(options: Any = None) -> Encoder:
    """syslog-json: the ECS JSON document as the MSG of a syslog message."""
    return _syslog(ecs.encoder(options), options)
