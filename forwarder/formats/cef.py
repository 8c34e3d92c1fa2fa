"""CEF:0 (ArcSight Common Event Format): one escaped line per event, fields cut to the spec's lengths.

Rules from "Implementing ArcSight Common Event Format (CEF)" (docs/formats/cef.md cites them):
header fields escape `\\` and `|` and cannot span lines; extension values escape `\\`, `=`, CR and
LF (as `\\r` and `\\n`); the extension keys are constants of this module, so no input can add one.
Other control characters, Unicode line separators and bidirectional controls become U+FFFD in
both (forwarder/formats/controls.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forwarder.formats import Encoder
from forwarder.formats.controls import replace_controls
from forwarder.formats.options import (
    MAPPINGS,
    dig,
    epoch_ms,
    event_time,
    formats_config,
    severity_rule,
    text,
)

ELLIPSIS = "\u2026"
# Leading and trailing whitespace is dropped from extension values: the spec says trailing spaces
# of the last pair are not preserved and recommends against leading or trailing spaces at all.
STRIP = " \t\r\n\x0b\x0c"

# Lengths from the header field definitions and the extension dictionary.
VENDOR_MAX, PRODUCT_MAX, VERSION_MAX, CLASS_ID_MAX, NAME_MAX = 63, 63, 31, 1023, 512
ACT_MAX, OUTCOME_MAX, EXTERNAL_ID_MAX, DEVICE_EXTERNAL_ID_MAX = 63, 63, 40, 255
STRING_MAX = 1023  # suser, suid, request, cat, msg, flexString1
CUSTOM_STRING_MAX = 4000  # cs1..cs6

# The user's display name: suser holds the e-mail (the login), and CEF has no key for a full
# name, so it goes in a labelled flex string (the cs slots all have a meaning already).
DISPLAY_NAME_KEY, DISPLAY_NAME_LABEL = "flexString1", "User display name"

# cs1..cs6: one meaning per slot, so an ArcSight mapping can name them once.
CUSTOM_LABELS = (
    ("cs1", "Record type"),
    ("cs2", "Record id"),
    ("cs3", "Changed fields"),
    ("cs4", "Changes"),
    ("cs5", "Contributors"),
    ("cs6", "Associated record"),
)
_PAST = {"create": "created", "update": "updated", "destroy": "deleted"}


def cut(value: str, limit: int) -> str:
    """`value` in at most `limit` characters, a cut one ending in an ellipsis (before escaping)."""
    return value if len(value) <= limit else value[: limit - 1] + ELLIPSIS


def header_field(value: str, limit: int) -> str:
    """A header field: one line, cut, controls made U+FFFD, then `\\` and `|` escaped."""
    if "\r" in value or "\n" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    value = replace_controls(cut(value, limit))
    return value.replace("\\", "\\\\").replace("|", "\\|")


def extension_value(value: str, limit: int) -> str:
    """An extension value: trimmed, cut, controls made U+FFFD, then `\\`, `=`, CR and LF escaped."""
    value = value.strip(STRIP)
    if len(value) > limit:
        value = value[: limit - 1] + ELLIPSIS
    value = replace_controls(value)
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, MAPPINGS) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _joined(value: Any, separator: str) -> str:
    if isinstance(value, list):
        return separator.join(text(item) for item in value)
    return text(value)


def event_name(event: Mapping[str, Any], audit: Mapping[str, Any] | None, class_id: str) -> str:
    """A short name for the kind of event ("Feature updated"), without the specifics."""
    if audit is not None:
        record_type = text(dig(audit, "auditable", "type"))
        noun = record_type.rpartition("/")[2].replace("_", " ").strip() or "Record"
        verb = text(audit.get("action"))
        return f"{noun[:1].upper()}{noun[1:]} {_PAST.get(verb, verb)}".strip()
    return text(event.get("message")) or class_id


def change_text(change: Any) -> tuple[str, str]:
    """(field name, value as Aha! shows it) of one change; HTML entities already decoded."""
    if not isinstance(change, MAPPINGS):
        return "", text(change)
    value = change.get("value_text")
    return text(change.get("field_name")), value if isinstance(value, str) else text(
        change.get("value")
    )


def person(user: Any) -> str:
    """A user as "Name <email>", or whichever of name, email and id there is."""
    if not isinstance(user, MAPPINGS):
        return text(user)
    name, email = text(user.get("name")), text(user.get("email"))
    if name and email:
        return f"{name} <{email}>"
    return name or email or text(user.get("id"))


def audit_strings(audit: Mapping[str, Any]) -> tuple[str, str, str, str, str, str]:
    """Record type, record id, changed fields, changes, contributors, associated record."""
    changes = [change_text(change) for change in _items(audit.get("changes"))]
    fields = ", ".join(field for field, _ in changes if field)
    rendered = "; ".join(f"{field}={value}" if field else value for field, value in changes)
    contributors = ", ".join(person(user) for user in _items(audit.get("contributors")))
    associated = _mapping(audit.get("associated"))
    kind, ident = text(associated.get("type")), text(associated.get("id"))
    return (
        text(dig(audit, "auditable", "type")),
        text(dig(audit, "auditable", "id")),
        fields,
        rendered,
        contributors,
        f"{kind}:{ident}" if kind or ident else "",
    )


def verb(event: Mapping[str, Any]) -> str:
    """The action as Aha! names it: the audit verb (`update`) or a generic event's `action`."""
    aha = _mapping(event.get("aha"))
    kind = aha.get("event")
    return text(dig(aha, kind, "action")) if isinstance(kind, str) else ""


def encoder(options: Any = None) -> Encoder:
    """The CEF:0 encoder for the `formats` options (None: defaults)."""
    cef = formats_config(options).cef
    prefix = "CEF:0|" + "|".join(
        (
            header_field(cef.device_vendor, VENDOR_MAX),
            header_field(cef.device_product, PRODUCT_MAX),
            header_field(cef.device_version, VERSION_MAX),
        )
    )
    severity = severity_rule(
        cef.default_severity, cef.severity_by_action, cef.severity_by_record_type
    )

    def encode(event: Mapping[str, Any]) -> bytes:
        """One normalized event as one CEF line (UTF-8, no newline)."""
        ecs = _mapping(event.get("event"))
        user = _mapping(event.get("user"))
        organization = _mapping(event.get("organization"))
        audit = dig(event, "aha", "audit")
        audit = audit if isinstance(audit, MAPPINGS) else None
        class_id = text(ecs.get("action")) or "unknown"
        name = event_name(event, audit, class_id)

        pairs: list[str] = []
        moment = event_time(event)
        if moment is not None:
            pairs.append(f"rt={epoch_ms(moment)}")
        for key, raw, limit in (
            ("act", verb(event), ACT_MAX),
            # The e-mail, else the name: an e-mail of only whitespace counts as none.
            ("suser", text(user.get("email")).strip(STRIP) or text(user.get("name")), STRING_MAX),
            ("suid", text(user.get("id")), STRING_MAX),
            (DISPLAY_NAME_KEY, text(user.get("name")), STRING_MAX),
            ("externalId", text(ecs.get("id")), EXTERNAL_ID_MAX),
            (
                "deviceExternalId",
                text(organization.get("name")) or text(organization.get("id")),
                DEVICE_EXTERNAL_ID_MAX,
            ),
            ("request", text(dig(event, "url", "full")), STRING_MAX),
            ("cat", _joined(ecs.get("category"), ","), STRING_MAX),
            ("outcome", text(ecs.get("outcome")), OUTCOME_MAX),
        ):
            value = extension_value(raw, limit)
            if value:
                if key == DISPLAY_NAME_KEY:
                    pairs.append(f"{key}Label={DISPLAY_NAME_LABEL}")
                pairs.append(f"{key}={value}")
        if audit is not None:
            for (key, label), raw in zip(CUSTOM_LABELS, audit_strings(audit), strict=True):
                value = extension_value(raw, CUSTOM_STRING_MAX)
                if value:
                    pairs.append(f"{key}Label={label} {key}={value}")
        message = extension_value(text(event.get("message")), STRING_MAX)
        if message:
            pairs.append(f"msg={message}")

        line = (
            f"{prefix}|{header_field(class_id, CLASS_ID_MAX)}|{header_field(name, NAME_MAX)}"
            f"|{severity(event)}|{' '.join(pairs)}"
        )
        # A lone surrogate is not Unicode and has no UTF-8 form: it becomes '?'.
        return line.encode("utf-8", "replace")

    return encode
