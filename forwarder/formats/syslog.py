"""Syslog around any format: RFC 5424 or RFC 3164 headers, RFC 6587 octet counting for streams.

A frame is one syslog message and never more: the header fields are cut to their RFC lengths and
to printable US-ASCII, SD-PARAM values are escaped (RFC 5424 §6.3.3) with other control characters
made U+FFFD, and CR or LF in MSG become spaces so that newline-delimited transports cannot split it
(docs/formats/syslog.md). Unicode line separators and bidirectional controls never appear raw:
CEF and LEEF replace them, syslog-json writes them as JSON escapes, and the framer makes certain.
An RFC 3164 message is at most 1024 octets and its TAG is alphanumeric.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from forwarder.formats import Encoder, cef, ecs, leef
from forwarder.formats.controls import json_escape, replace_controls, replace_controls_utf8
from forwarder.formats.options import (
    MONTHS,
    SyslogOptions,
    dig,
    event_time,
    formats_config,
    severity_rule,
    text,
)
from forwarder.formats.shrink import TEXT_FLOOR, essential, largest, largest_fit, shrunk, tagged
from forwarder.records import iso_millis

NILVALUE = "-"
BOM = b"\xef\xbb\xbf"
HOSTNAME_MAX, APP_NAME_MAX, MSGID_MAX = 255, 48, 32  # RFC 5424 §6
TAG_MAX = 32  # RFC 3164 §4.1.3
PACKET_MAX = 1024  # RFC 3164 §4.1: "The total length of the packet MUST be 1024 bytes or less."
SD_VALUE_MAX = 255  # this project's cap: the parameters are ids


def printable_ascii(value: str, limit: int) -> str:
    """`value` as 1..limit characters of %d33-126 (others become `_`), or the NILVALUE."""
    if not (value.isascii() and value.isprintable() and " " not in value):
        value = "".join(char if "!" <= char <= "~" else "_" for char in value)
    return value[:limit] or NILVALUE


def safe_msg(message: bytes) -> bytes:
    """MSG with CR and LF made spaces and the other characters of controls.py made U+FFFD.

    The encoders never emit any of them raw (CEF and LEEF replace them, syslog-json escapes them);
    this makes it certain for any message.
    """
    if b"\n" in message or b"\r" in message:
        message = message.replace(b"\r", b" ").replace(b"\n", b" ")
    return replace_controls_utf8(message)


def tag_3164(app_name: str) -> str:
    """The RFC 3164 TAG for an APP-NAME: its ASCII letters and digits, at most 32 (§4.1.3)."""
    return "".join(char for char in app_name if char.isascii() and char.isalnum())[:TAG_MAX]


def cut_utf8(message: bytes, limit: int) -> bytes:
    """The first `limit` octets of `message`, shortened so no UTF-8 character is split."""
    if len(message) <= limit:
        return message
    end = limit
    # The first octet left out is a continuation octet (10xxxxxx): its character started
    # inside the kept part, so leave that character out whole.
    while end > 0 and message[end] & 0xC0 == 0x80:
        end -= 1
    return message[:end]


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
        self._tag = tag_3164(options.app_name)
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
        return b"%s %s%s" % (header, self._bom, safe_msg(message))

    def header_3164(self, event: Mapping[str, Any]) -> bytes:
        """`<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: `, or `<PRI>TAG: ` for an event without a time."""
        moment = event_time(event)
        if moment is None:
            # No time, no HEADER. A relay then adds a TIMESTAMP (its own time) and the HOSTNAME
            # of this sender "as it is known by the relay", else its IP address (RFC 3164 §4.3.2).
            return f"<{self.priority(event)}>{self._tag}: ".encode("ascii")
        return (
            f"<{self.priority(event)}>{timestamp_3164(moment)} {self._host_3164} {self._tag}: "
        ).encode("ascii")

    def frame_3164(self, message: bytes, event: Mapping[str, Any]) -> bytes:
        """`<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG` (RFC 3164 §4.1), cut to 1024 octets on a
        character boundary (`encode_3164` makes an event fit without cutting through its format)."""
        return cut_utf8(self.header_3164(event) + safe_msg(message), PACKET_MAX)

    def encode_3164(self, inner: Encoder, event: Mapping[str, Any]) -> bytes:
        """The event in the inner format as an RFC 3164 message of at most 1024 octets.

        A longer one is encoded again from a smaller copy of the event (forwarder/formats/
        shrink.py), so its MSG is still a whole CEF line, LEEF line or JSON document. Only when
        not even the essential fields fit is the message cut on a character boundary.
        """
        header = self.header_3164(event)
        frame = header + safe_msg(inner(event))
        if len(frame) <= PACKET_MAX:
            return frame

        def attempt(smaller: Mapping[str, Any]) -> bytes:
            return header + safe_msg(inner(smaller))

        # The tag goes on after the cut, so no size can cut the tag itself.
        fitted = largest_fit(
            lambda size: attempt(tagged(shrunk(event, size))),
            TEXT_FLOOR,
            largest(event),
            PACKET_MAX,
        )
        if fitted is None:
            kept = essential(event)
            fitted = largest_fit(
                lambda size: attempt(tagged(shrunk(kept, size, lists=True))),
                1,
                largest(kept, lists=True),
                PACKET_MAX,
            )
        return fitted if fitted is not None else cut_utf8(frame, PACKET_MAX)


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
    framer = SyslogFramer(formats_config(options).syslog)
    if framer.rfc == "3164":
        encode_3164 = framer.encode_3164

        def encode_bsd(event: Mapping[str, Any]) -> bytes:
            """One event in the inner format, in one RFC 3164 message of at most 1024 octets."""
            return encode_3164(inner, event)

        return encode_bsd
    frame = framer.frame

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
    """syslog-json: the ECS JSON document as the MSG of a syslog message, with DEL, C1, line
    separators and bidi controls written as JSON escapes (the same text once decoded)."""
    document = ecs.encoder(options)

    def line_safe(event: Mapping[str, Any]) -> bytes:
        return json_escape(document(event))

    return _syslog(line_safe, options)
