"""Options of the SIEM formats (the `formats:` config section), and the event readers they share.

The models are validated once at start-up; each encoder factory turns them into plain values and
small closures, so no pydantic object is touched per event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

# Aha! record types whose changes are identity and access management (as normalize.py classifies).
IAM_RECORD_TYPES = ("user", "role", "permission", "account_user", "project_user", "user_role")

# RFC 5424 §6.2.1 table 2 (numbers) and the keywords syslog.conf and rsyslog use for them.
SYSLOG_SEVERITIES = {
    "emerg": 0,
    "emergency": 0,
    "alert": 1,
    "crit": 2,
    "critical": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "informational": 6,
    "debug": 7,
}
# RFC 5424 §6.2.1 table 1; 13 and 14 are named after their description ("log audit", "log alert").
SYSLOG_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "audit": 13,
    "alert": 14,
    "clock": 15,
    **{f"local{n}": 16 + n for n in range(8)},
}

# RFC 5424 §6.3.2: SD-NAME is 1-32 printable US-ASCII except '=', SP, ']' and '"'; a private
# SD-ID is name@<private enterprise number>.
_SD_ID = re.compile(r"^[!#-<>?A-\\^-~]{1,31}@[0-9]+$")
_APP_NAME = re.compile(r"^[A-Za-z0-9._/-]{1,48}$")
_HOSTNAME = re.compile(r"^[!-~]{1,255}$")
_HEX_DELIMITER = re.compile(r"^0?[xX]([0-9A-Fa-f]{1,4})$")


def _named_number(table: Mapping[str, int], what: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, str) and not value.strip().isdigit():
            try:
                return table[value.strip().lower()]
            except KeyError:
                raise ValueError(
                    f"unknown {what} {value!r}; use 0-{max(table.values())} or one of {', '.join(table)}"
                ) from None
        return value

    return convert


CefSeverity = Annotated[int, Field(ge=0, le=10)]
LeefSeverity = Annotated[int, Field(ge=1, le=10)]
SyslogSeverity = Annotated[
    int, BeforeValidator(_named_number(SYSLOG_SEVERITIES, "syslog severity")), Field(ge=0, le=7)
]
SyslogFacility = Annotated[
    int, BeforeValidator(_named_number(SYSLOG_FACILITIES, "syslog facility")), Field(ge=0, le=23)
]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CefOptions(_Options):
    device_vendor: str = Field(default="Aha!", min_length=1, max_length=63)
    """CEF header Device Vendor (at most 63 characters, CEF header field definitions)."""
    device_product: str = Field(default="Aha! Roadmaps", min_length=1, max_length=63)
    """CEF header Device Product (at most 63 characters)."""
    device_version: str = Field(default="1", min_length=1, max_length=31)
    """CEF header Device Version: Aha! is SaaS and has none, so this is the version of this mapping."""
    default_severity: CefSeverity = 3
    """Severity (0-10) of an event that no rule below matches."""
    severity_by_action: dict[str, CefSeverity] = Field(
        default_factory=lambda: {"create": 3, "update": 3, "destroy": 6}
    )
    """Severity by `event.action` (e.g. `user-destroy`) or, failing that, by Aha! verb (`destroy`)."""
    severity_by_record_type: dict[str, CefSeverity] = Field(
        default_factory=lambda: dict.fromkeys(IAM_RECORD_TYPES, 8)
    )
    """Severity by Aha! record type; wins over a verb, loses to a full `event.action` rule."""


class LeefOptions(_Options):
    vendor: str = Field(default="Aha!", min_length=1, max_length=255)
    """LEEF header Vendor."""
    product: str = Field(default="Aha! Roadmaps", min_length=1, max_length=255)
    """LEEF header Product."""
    version: str = Field(default="1", min_length=1, max_length=255)
    """LEEF header Version: the version of this mapping (Aha! itself has none)."""
    delimiter: str = "\t"
    """Attribute delimiter: one character, or its hex form `x5E`/`0x5E` (LEEF 2.0); default tab."""
    dev_time_format: Literal[
        "MMM dd yyyy HH:mm:ss.SSS z", "yyyy-MM-dd'T'HH:mm:ss.SSSZ", "epoch_ms"
    ] = "MMM dd yyyy HH:mm:ss.SSS z"
    """How devTime is written: a Java date pattern sent as devTimeFormat, or epoch milliseconds."""
    default_severity: LeefSeverity = 3
    """sev (1-10) of an event that no rule below matches."""
    severity_by_action: dict[str, LeefSeverity] = Field(
        default_factory=lambda: {"create": 3, "update": 3, "destroy": 6}
    )
    """sev by `event.action` or Aha! verb, as for CEF."""
    severity_by_record_type: dict[str, LeefSeverity] = Field(
        default_factory=lambda: dict.fromkeys(IAM_RECORD_TYPES, 8)
    )
    """sev by Aha! record type, as for CEF."""

    @field_validator("delimiter", mode="before")
    @classmethod
    def _one_character(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _HEX_DELIMITER.match(value)
        if match:
            value = chr(int(match.group(1), 16))
        if len(value) != 1:
            raise ValueError("a single character, or its hex value as x09 / 0x09 (1-4 hex digits)")
        # '=' splits key from value, a space is what a delimiter in a value becomes, and the rest
        # appear in keys and in the devTime values the encoder writes itself.
        if value.isalnum() or value in "= \r\n\x00:.-+'_" or ord(value) > 0xFFFF:
            raise ValueError(f"{value!r} cannot delimit LEEF attributes")
        return value

    @field_validator("vendor", "product", "version")
    @classmethod
    def _no_pipe(cls, value: str) -> str:
        if any(char in value for char in "|\r\n"):
            raise ValueError("a LEEF header field cannot contain '|', CR or LF")
        return value


class SyslogOptions(_Options):
    rfc: Literal["5424", "3164"] = "5424"
    """Syslog header: RFC 5424 (year, zone, structured data) or the BSD form of RFC 3164."""
    facility: SyslogFacility = 16
    """Facility name (local0..local7, audit, authpriv, ...) or number 0-23; default local0."""
    app_name: str = "aha-siem"
    """APP-NAME (RFC 5424): letters, digits, . _ / -; RFC 3164's TAG is its letters and digits (32)."""
    hostname: str | None = None
    """HOSTNAME; none means this machine's host name (its first label under RFC 3164)."""
    default_severity: SyslogSeverity = 5
    """Severity name (emerg..debug) or number 0-7 of an event no rule matches; default notice."""
    severity_by_action: dict[str, SyslogSeverity] = Field(
        default_factory=lambda: {"destroy": SYSLOG_SEVERITIES["warning"]}
    )
    """Severity by `event.action` or Aha! verb, as for CEF."""
    severity_by_record_type: dict[str, SyslogSeverity] = Field(
        default_factory=lambda: dict.fromkeys(IAM_RECORD_TYPES, SYSLOG_SEVERITIES["warning"])
    )
    """Severity by Aha! record type, as for CEF."""
    structured_data: bool = True
    """RFC 5424 only: carry the event's ids in one SD-ELEMENT."""
    sd_id: str = "aha@32473"
    """SD-ID of that element: name@<your private enterprise number>; 32473 is for documentation."""
    utf8_bom: bool = False
    """RFC 5424 only: start MSG with the BOM that §6.4 asks for (many receivers mishandle it)."""

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, value: str, info: ValidationInfo) -> str:
        if not _APP_NAME.match(value):
            raise ValueError("1-48 characters of letters, digits, '.', '_', '/', '-'")
        # RFC 3164 §4.1.3: the TAG is alphanumeric; the encoder keeps only the letters and digits.
        if info.data.get("rfc") == "3164" and not any(c.isalnum() for c in value):
            raise ValueError("rfc 3164 makes the TAG of its letters and digits, and it has none")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is not None and not _HOSTNAME.match(value):
            raise ValueError("1-255 printable US-ASCII characters, no space (RFC 5424 §6)")
        return value

    @field_validator("sd_id")
    @classmethod
    def _sd_id(cls, value: str) -> str:
        if not _SD_ID.match(value) or len(value) > 32:
            raise ValueError('name@number, at most 32 printable characters, none of = ] " or space')
        return value


class FormatsConfig(_Options):
    cef: CefOptions = Field(default_factory=CefOptions)
    """CEF:0 (ArcSight) options."""
    leef: LeefOptions = Field(default_factory=LeefOptions)
    """LEEF 2.0 (QRadar) options."""
    syslog: SyslogOptions = Field(default_factory=SyslogOptions)
    """Syslog header around any format (syslog-cef, syslog-leef, syslog-json)."""


def formats_config(options: Any) -> FormatsConfig:
    """The formats options as given to an encoder factory: a FormatsConfig, a mapping, or None."""
    if options is None:
        return FormatsConfig()
    if isinstance(options, FormatsConfig):
        return options
    return FormatsConfig.model_validate(options)


# ---- Reading a normalized event: shared by the encoders, tolerant of any shape. ----

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


# Events are plain dicts: listing dict first spares the slow ABC check on the common path.
MAPPINGS = (dict, Mapping)


def dig(value: Any, *keys: str) -> Any:
    """value[k1][k2]...; None where a level is missing or not a mapping."""
    for key in keys:
        if value is None or not isinstance(value, MAPPINGS):
            return None
        value = value.get(key)
    return value


def text(value: Any) -> str:
    """Any JSON value as text: strings as they are, null as empty, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return str(value)


# Month abbreviations written by hand, not by strftime, so the process locale cannot change them.
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        # A time without a zone is taken as UTC: that is what every producer here writes.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def event_time(event: Mapping[str, Any]) -> datetime | None:
    """When the event happened, in UTC: `@timestamp`, else `event.created`; None if neither parses."""
    return _parse_time(event.get("@timestamp")) or _parse_time(dig(event, "event", "created"))


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since 1970-01-01T00:00:00Z, exactly (no float rounding)."""
    return (moment - _EPOCH) // _MILLISECOND


def severity_rule(
    default: int, by_action: Mapping[str, int], by_record_type: Mapping[str, int]
) -> Callable[[Mapping[str, Any]], int]:
    """The severity of an event: full `event.action`, then record type, then Aha! verb, then default."""
    by_action = dict(by_action)
    by_record_type = dict(by_record_type)

    def severity(event: Mapping[str, Any]) -> int:
        action = dig(event, "event", "action")
        if isinstance(action, str) and action in by_action:
            return by_action[action]
        audit = dig(event, "aha", "audit")
        record_type = dig(audit, "auditable", "type")
        if isinstance(record_type, str) and record_type in by_record_type:
            return by_record_type[record_type]
        verb = dig(audit, "action")
        if isinstance(verb, str) and verb in by_action:
            return by_action[verb]
        return default

    return severity
