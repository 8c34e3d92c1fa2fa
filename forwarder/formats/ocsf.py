"""OCSF 1.8.0 JSON: Aha! audits as Entity Management events (docs/decisions/0003-ocsf-class.md)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from forwarder.formats import Encoder

OCSF_VERSION = "1.8.0"
# The cloud profile brings `cloud` (the SaaS and its tenant); no other profile is used.
PROFILES = ("cloud",)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
# OCSF's email_t pattern: an address it would reject stays in `unmapped` instead.
_EMAIL = re.compile(r"[a-zA-Z0-9!#$%&'*+-/=?^_`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+")
_IP_MAX_LEN = 40  # ip_t's max_len
_MAX_OFFSET = 1080  # timezone_offset's range in minutes, either side of UTC

_OTHER = 99
_EMPTY: Mapping[str, Any] = {}
_INFORMATIONAL = (1, "Informational")
_STATUS = {"success": (1, "Success"), "failure": (2, "Failure")}
_STATUS_UNKNOWN = (0, "Unknown")
_FAILURE = (2, "Failure")

# Observable types: (type_id, type).
_OBS_IP = (2, "IP Address")
_OBS_USER_NAME = (4, "User Name")
_OBS_EMAIL = (5, "Email Address")
_OBS_USER_UID = (31, "User Object: uid")

# Managed entity type ids; every Aha! record type but `user` is "Other" with its own `type`.
_ENTITY_UNKNOWN, _ENTITY_USER = (0, "Unknown"), (2, "User")

_AUDIT_ACTIVITIES = {"create": 1, "update": 3, "destroy": 4}
_DELETE = 4
# aha.audit keys that have an OCSF home; the rest travel in unmapped.aha.audit.
_MAPPED_AUDIT_KEYS = frozenset({"id", "action", "auditable", "associated", "changes"})
# Security webhook actions with a known meaning: action -> Authentication activity and status.
_LOGINS = {"user.login_failed": (1, _FAILURE)}


@dataclass(frozen=True)
class _Class:
    uid: int
    name: str
    category_uid: int
    category_name: str
    activities: Mapping[int, str]


_ENTITY_MANAGEMENT = _Class(
    3004,
    "Entity Management",
    3,
    "Identity & Access Management",
    {0: "Unknown", 1: "Create", 3: "Update", 4: "Delete", 99: "Other"},
)
_AUTHENTICATION = _Class(
    3002, "Authentication", 3, "Identity & Access Management", {1: "Logon", 99: "Other"}
)
_BASE_EVENT = _Class(0, "Base Event", 0, "Uncategorized", {99: "Other"})


def _mapping(value: Any) -> Mapping[str, Any]:
    # `type(...) is dict` first: an ABC isinstance check costs more than the rest of a lookup.
    return value if type(value) is dict or isinstance(value, Mapping) else _EMPTY


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _millis(moment: datetime) -> int:
    return (moment - _EPOCH) // _MILLISECOND


def _email(value: Any) -> str | None:
    return value if isinstance(value, str) and _EMAIL.fullmatch(value) else None


def _ip(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > _IP_MAX_LEN:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None
    return value


def _user(ecs_user: Mapping[str, Any]) -> dict[str, str] | None:
    """An OCSF user from an ECS one; None when OCSF's user constraint (name or uid) can't hold."""
    user = {}
    if uid := _text(ecs_user.get("id")):
        user["uid"] = uid
    if name := _text(ecs_user.get("name")):
        user["name"] = name
    if email := _email(ecs_user.get("email")):
        user["email_addr"] = email
        if "uid" not in user and "name" not in user:
            # OCSF wants a name or uid; Aha! signs users in by e-mail, so it names them.
            user["name"] = email
    return user if ("uid" in user or "name" in user) else None


def _user_observables(
    path: str, user: Mapping[str, Any], keys: tuple[str, str, str]
) -> list[dict[str, Any]]:
    """Observables of one user object, whose uid/name/e-mail keys are `keys`."""
    uid_key, name_key, email_key = keys
    found = [
        _observable(f"{path}.{key}", kind, value)
        for key, kind in ((uid_key, _OBS_USER_UID), (name_key, _OBS_USER_NAME))
        if (value := _text(user.get(key)))
    ]
    if email := _email(user.get(email_key)):
        found.append(_observable(f"{path}.{email_key}", _OBS_EMAIL, email))
    return found


def _observable(name: str, kind: tuple[int, str], value: str) -> dict[str, Any]:
    return {"name": name, "type_id": kind[0], "type": kind[1], "value": value}


def _header(
    event: Mapping[str, Any], cls: _Class, activity_id: int, activity_name: str
) -> dict[str, Any]:
    """Classification, time, status, metadata and cloud: what every class here shares."""
    ecs_event = _mapping(event.get("event"))
    aha = _mapping(event.get("aha"))
    ingest = _mapping(aha.get("ingest"))
    observer = _mapping(event.get("observer"))
    organization = _mapping(event.get("organization"))
    status_id, status = _STATUS.get(str(ecs_event.get("outcome")), _STATUS_UNKNOWN)
    doc: dict[str, Any] = {
        "class_uid": cls.uid,
        "class_name": cls.name,
        "category_uid": cls.category_uid,
        "category_name": cls.category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": cls.uid * 100 + activity_id,
        "type_name": f"{cls.name}: {cls.activities[activity_id]}",
        "severity_id": _INFORMATIONAL[0],
        "severity": _INFORMATIONAL[1],
        "status_id": status_id,
        "status": status,
    }
    # @timestamp is always a time in events from normalize; the rest guards hand-made input.
    moment = (
        _moment(event.get("@timestamp"))
        or _moment(ecs_event.get("created"))
        or _moment(ingest.get("received_at"))
    )
    doc["time"] = _millis(moment) if moment else 0
    if moment and (offset := moment.utcoffset()) is not None:
        minutes = int(offset.total_seconds()) // 60
        if -_MAX_OFFSET <= minutes <= _MAX_OFFSET:
            doc["timezone_offset"] = minutes
    product: dict[str, Any] = {
        "name": _text(observer.get("product")) or "Aha! Roadmaps",
        "vendor_name": _text(observer.get("vendor")) or "Aha!",
    }
    if feature := _text(aha.get("event")):
        product["feature"] = {"name": feature}
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "profiles": list(PROFILES),
        "product": product,
    }
    if uid := _text(ecs_event.get("id")):
        metadata["uid"] = uid
        metadata["original_event_uid"] = uid
    if original_time := _text(event.get("@timestamp")):
        metadata["original_time"] = original_time
    if logged := _moment(ingest.get("received_at")):
        metadata["logged_time"] = _millis(logged)
    if processed := _moment(ecs_event.get("created")):
        metadata["processed_time"] = _millis(processed)
    if code := _text(ecs_event.get("action")):
        metadata["event_code"] = code
    if source := _text(ecs_event.get("dataset")):
        metadata["source"] = source
    cloud: dict[str, Any] = {"provider": product["vendor_name"]}
    org = {
        key: value
        for key, value in (
            ("uid", _text(organization.get("id"))),
            ("name", _text(organization.get("name"))),
        )
        if value
    }
    if org:
        cloud["org"] = org
    if "uid" in org:
        metadata["tenant_uid"] = org["uid"]
    doc["metadata"] = metadata
    doc["cloud"] = cloud
    if message := _text(event.get("message")):
        doc["message"] = message
    if original := _text(ecs_event.get("original")):
        doc["raw_data"] = original
    if digest := _text(ecs_event.get("hash")):
        doc["raw_data_hash"] = {"algorithm_id": 3, "algorithm": "SHA-256", "value": digest}
    return doc


def _record_name(changes: list[Any]) -> str | None:
    """The record's name, when the audit sets its "Name" field."""
    for change in changes:
        if _mapping(change).get("field_name") == "Name":
            return _text(change.get("value"))
    return None


def _entity(record: Mapping[str, Any]) -> dict[str, Any]:
    record_type = _text(record.get("type"))
    uid = _text(record.get("id"))
    entity: dict[str, Any]
    if record_type == "user":
        entity = {"type_id": _ENTITY_USER[0], "type": _ENTITY_USER[1]}
        if uid:
            entity["user"] = {"uid": uid}
    elif record_type is None or record_type == "unknown":
        entity = {"type_id": _ENTITY_UNKNOWN[0], "type": _ENTITY_UNKNOWN[1]}
    else:
        entity = {"type_id": _OTHER, "type": record_type}
    if uid:
        entity["uid"] = uid
    return entity


def _entity_management(event: Mapping[str, Any], aha: Mapping[str, Any]) -> dict[str, Any]:
    audit = _mapping(aha.get("audit"))
    action = _text(audit.get("action")) or "unknown"
    # normalize writes "unknown" when Aha! sent no action at all.
    activity_id = 0 if action == "unknown" else _AUDIT_ACTIVITIES.get(action, _OTHER)
    activity_name = action if activity_id == _OTHER else _ENTITY_MANAGEMENT.activities[activity_id]
    doc = _header(event, _ENTITY_MANAGEMENT, activity_id, activity_name)
    record = _mapping(audit.get("auditable"))
    changes = audit.get("changes")
    changes = changes if isinstance(changes, list) else []
    name = _record_name(changes)
    identity = _entity(record)
    entity = dict(identity)
    if "uid" not in identity:
        # managed_entity needs a name or a uid: the audit's own words name the record best.
        entity["name"] = name or doc.get("message") or identity["type"]
    data: dict[str, Any] = {}
    if url := _text(_mapping(event.get("url")).get("full")):
        data["url"] = url
    if audit.get("associated") is not None:
        data["associated"] = audit["associated"]
    if changes and activity_id == _DELETE:
        data["changes"] = changes
    if data:
        entity["data"] = data
    doc["entity"] = entity
    if changes and activity_id != _DELETE:
        # The state after the change: Aha! reports the new value of each field it changed.
        result = dict(identity)
        if name or "uid" not in identity:
            result["name"] = name or entity["name"]
        result["data"] = {"changes": changes}
        doc["entity_result"] = result
    if (record_type := _text(record.get("type"))) and (record_id := _text(record.get("id"))):
        doc["metadata"]["correlation_uid"] = f"{record_type}:{record_id}"
    unmapped: dict[str, Any] = {}
    observables = []
    ecs_user = _mapping(event.get("user"))
    if user := _user(ecs_user):
        doc["actor"] = {"user": user}
        observables += _user_observables("actor.user", user, ("uid", "name", "email_addr"))
    if ecs_user.get("email") is not None and _email(ecs_user.get("email")) is None:
        unmapped["user"] = {"email": ecs_user["email"]}
    rest = {key: value for key, value in audit.items() if key not in _MAPPED_AUDIT_KEYS}
    unmapped["aha"] = {
        **{key: value for key, value in aha.items() if key != "audit"},
        "audit": rest,
    }
    contributors = rest.get("contributors")
    seen = {(item["type_id"], item["value"]) for item in observables}
    for contributor in contributors if isinstance(contributors, list) else ():
        if contributor := _mapping(contributor):
            for item in _user_observables(
                "unmapped.aha.audit.contributors[]", contributor, ("id", "name", "email")
            ):
                # The author is usually a contributor too: one observable per user value.
                if (item["type_id"], item["value"]) not in seen:
                    seen.add((item["type_id"], item["value"]))
                    observables.append(item)
    if observables:
        doc["observables"] = observables
    doc["unmapped"] = unmapped
    return doc


def _authentication(
    event: Mapping[str, Any], aha: Mapping[str, Any], inner: Mapping[str, Any], user: dict[str, str]
) -> dict[str, Any]:
    activity_id, (status_id, status) = _LOGINS[inner["action"]]
    doc = _header(event, _AUTHENTICATION, activity_id, _AUTHENTICATION.activities[activity_id])
    doc["status_id"], doc["status"] = status_id, status
    details = _mapping(inner.get("details"))
    if reason := _text(details.get("reason")):
        doc["status_detail"] = reason
    doc["user"] = user
    # The service the user signed in to: Aha! itself (Authentication needs service or dst_endpoint).
    doc["service"] = {"name": doc["metadata"]["product"]["name"]}
    observables = _user_observables("user", user, ("uid", "name", "email_addr"))
    if ip := _ip(inner.get("ip_address")):
        doc["src_endpoint"] = {"ip": ip}
        observables.append(_observable("src_endpoint.ip", _OBS_IP, ip))
    doc["observables"] = observables
    doc["unmapped"] = {"aha": dict(aha)}
    return doc


def _base_event(event: Mapping[str, Any], aha: Mapping[str, Any]) -> dict[str, Any]:
    kind = _text(aha.get("event")) or "unknown"
    action = _text(_mapping(aha.get(kind)).get("action"))
    doc = _header(event, _BASE_EVENT, _OTHER, action or kind)
    doc["unmapped"] = {"aha": dict(aha)}
    return doc


def to_ocsf(event: Mapping[str, Any]) -> dict[str, Any]:
    """The OCSF event for one normalized ECS event (it shares nested values with `event`)."""
    aha = _mapping(event.get("aha"))
    kind = aha.get("event")
    if kind == "audit":
        return _entity_management(event, aha)
    inner = _mapping(aha.get(kind)) if isinstance(kind, str) else {}
    if kind == "security" and _text(inner.get("action")) in _LOGINS:
        user = _user(_mapping(event.get("user")))
        if user:
            return _authentication(event, aha, inner, user)
    return _base_event(event, aha)


def encode(event: Mapping[str, Any]) -> bytes:
    """One OCSF event as compact JSON."""
    return orjson.dumps(to_ocsf(event))


def encoder(options: Any = None) -> Encoder:
    """The OCSF encoder (it has no options)."""
    return encode
