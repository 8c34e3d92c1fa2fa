"""A fake of Aha!'s audits API (`GET /api/v1/audits`) as a plain ASGI app.

By default it answers in the shape of Aha!'s own response example ("Retrieve record history"):
`{"audits": [...], "pagination": {"total_records", "total_pages", "current_page"}}`; record types
in snake case (`feature`, `ideas/idea`); `id` and `user.id` strings; `auditable_id` and
`associated_id` numbers; `changes` a list of `{field_name, value}`; `contributors` on every
audit, each wrapped as `{"user": {...}}` (the author when nobody else took part). Other shapes
only on request: `type_style="class"` (Rails class names), `ids_as_numbers` (every id a number),
`record_ids_as_strings`, `contributors="flat"|"absent"`, `changes_as_mapping`.

Where the documentation is silent it takes the cautious side and says so: both time bounds
inclusive, pages in a stated `order` (default newest first: `created_at`, then `id`,
descending). Rate limit: 300 requests per minute (what Aha! reports, per source IP); a limit per
second and `Retry-After` on a 429 are unconfirmed, so neither is on unless asked for. Switches
make it answer 401, 404, bursts of 429, server errors, or call a hook before answering a page
(to crash a client mid-run).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson

Scope = MutableMapping[str, Any]


def class_name(record_type: Any) -> Any:
    """`ideas/idea_endorsement` -> `Ideas::IdeaEndorsement` (how Rails names the class)."""
    if not isinstance(record_type, str):
        return record_type
    return "::".join(
        "".join(word.capitalize() for word in part.split("_")) for part in record_type.split("/")
    )


def make_audit(index: int, created: datetime, record: int | None = None) -> dict[str, Any]:
    """An audit shaped like a webhook's (the fake stores that shape and renders the API's),
    with an id whose top 32 bits are its second."""
    second = int(created.timestamp())
    record = 7712852070702500000 + index if record is None else record
    return {
        "id": str((second << 32) | (index & 0xFFFFFFFF)),
        "audit_action": "update",
        "created_at": created.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "interesting": True,
        "user": {"id": "6514078897796815681", "name": "Priya Menon", "email": "p@example.com"},
        "auditable_type": "feature",
        "auditable_id": str(record),
        "associated_type": None,
        "associated_id": None,
        "description": f"updated feature DEMO-{index}",
        "auditable_url": f"https://acme.aha.io/features/DEMO-{index}",
        "changes": [{"field_name": "Name", "value": f"name {index} of {record}"}],
    }


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class FakeAhaApi:
    """Holds audits (in the webhook's shape) and serves them the way the REST API would."""

    def __init__(
        self,
        api_key: str = "aha-test-key",
        *,
        type_style: str = "snake",
        ids_as_numbers: bool = False,
        record_ids_as_strings: bool = False,
        contributors: str = "wrapped",
        changes_as_mapping: bool = False,
        order: str = "newest_first",
        default_per_page: int = 30,
        max_per_page: int = 200,
        per_second: float | None = None,
        per_minute: float | None = 300.0,
    ) -> None:
        if order not in ("newest_first", "oldest_first"):
            raise ValueError(f"order must be newest_first or oldest_first, not {order!r}")
        if contributors not in ("wrapped", "flat", "absent"):
            raise ValueError(f"contributors must be wrapped, flat or absent, not {contributors!r}")
        self.api_key = api_key
        self.type_style = type_style
        self.ids_as_numbers = ids_as_numbers
        self.record_ids_as_strings = record_ids_as_strings
        self.contributors = contributors
        self.changes_as_mapping = changes_as_mapping
        self.order = order
        self.default_per_page = default_per_page
        self.max_per_page = max_per_page
        self.per_second = per_second
        self.per_minute = per_minute
        self.unauthorized = False
        self.not_found = False
        self.burst_429 = 0
        self.retry_after: str | None = None
        self.fail_status: int | None = None
        self.fail_count = 0
        self.on_page: Callable[[dict[str, str]], None] | None = None
        self.requests: list[dict[str, str]] = []
        self._audits: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._second: list[float] = []
        self._minute: list[float] = []

    def add(self, *audits: dict[str, Any]) -> None:
        """Make audits (webhook `audit` objects) visible to the API."""
        with self._lock:
            self._audits.extend(copy.deepcopy(audit) for audit in audits)

    def page_requests(self) -> list[int]:
        """The `page` of every audits request answered 200, in order."""
        return [int(r.get("page", "1")) for r in self.requests if r.get("status") == "200"]

    def render(self, audit: dict[str, Any]) -> dict[str, Any]:
        """One audit (stored in the webhook's shape) as the API shows it."""
        shown = copy.deepcopy(audit)
        if self.type_style == "class":
            for name in ("auditable_type", "associated_type"):
                shown[name] = class_name(shown.get(name))
        record_ids_as_numbers = self.ids_as_numbers or not self.record_ids_as_strings
        for name in ("id", "auditable_id", "associated_id"):
            as_number = self.ids_as_numbers if name == "id" else record_ids_as_numbers
            if as_number and isinstance(shown.get(name), str) and shown[name].isdigit():
                shown[name] = int(shown[name])
        users = _contributors(shown)
        if self.contributors == "absent":
            shown.pop("contributors", None)
        else:
            if self.contributors == "wrapped":
                users = [{"user": user} for user in users]
            shown["contributors"] = users
        if self.ids_as_numbers:
            for user in [
                shown.get("user"),
                *(_inner(item) for item in shown.get("contributors") or ()),
            ]:
                if isinstance(user, dict) and str(user.get("id", "")).isdigit():
                    user["id"] = int(user["id"])
        if self.changes_as_mapping and isinstance(shown.get("changes"), list):
            shown["changes"] = {
                change["field_name"]: change["value"] for change in shown["changes"]
            }
        return shown

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = {
            key: values[-1] for key, values in parse_qs(scope["query_string"].decode()).items()
        }
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        status, payload, extra = self._answer(scope["path"], query, headers)
        with self._lock:
            self.requests.append({**query, "status": str(status)})
        body = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _limited(self) -> bool:
        now = time.monotonic()
        self._second = [at for at in self._second if now - at < 1.0]
        self._minute = [at for at in self._minute if now - at < 60.0]
        if (self.per_second and len(self._second) >= self.per_second) or (
            self.per_minute and len(self._minute) >= self.per_minute
        ):
            return True
        self._second.append(now)
        self._minute.append(now)
        return False

    def _answer(
        self, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        if self.not_found:
            return 404, {"error": "Not Found"}, []
        if headers.get("authorization") != f"Bearer {self.api_key}" or self.unauthorized:
            return 401, {"error": "Unauthorized"}, []
        if path != "/api/v1/audits":
            return 404, {"error": "Not Found"}, []
        with self._lock:
            if self.burst_429 > 0 or self._limited():
                self.burst_429 = max(0, self.burst_429 - 1)
                extra = [(b"retry-after", self.retry_after.encode())] if self.retry_after else []
                return 429, {"error": "Rate limit exceeded"}, extra
            if self.fail_status is not None and self.fail_count > 0:
                self.fail_count -= 1
                return self.fail_status, {"error": "Internal Server Error"}, []
            hook = self.on_page
        if hook is not None:
            hook(query)
        return 200, self._page(query), []

    def _page(self, query: dict[str, str]) -> dict[str, Any]:
        per_page = min(self.max_per_page, int(query.get("per_page", self.default_per_page)))
        page = max(1, int(query.get("page", "1")))
        with self._lock:
            stored = [audit for audit in self._audits if self._matches(audit, query)]
        stored.sort(key=_position, reverse=self.order == "newest_first")
        audits = [self.render(audit) for audit in stored]
        total_pages = max(1, math.ceil(len(audits) / per_page))
        return {
            "audits": audits[(page - 1) * per_page : page * per_page],
            "pagination": {
                "total_records": len(audits),
                "total_pages": total_pages,
                "current_page": page,
            },
        }

    def _matches(self, audit: dict[str, Any], query: dict[str, str]) -> bool:
        created = _time(audit["created_at"])
        if "created_since" in query and created < _time(query["created_since"]):
            return False
        if "created_before" in query and created > _time(query["created_before"]):
            return False
        for name in ("auditable_type", "associated_type"):
            if name in query and query[name] not in (audit.get(name), class_name(audit.get(name))):
                return False
        for name in ("auditable_id", "associated_id", "audit_action"):
            if name in query and query[name] != str(audit.get(name)):
                return False
        if "user_id" in query:
            user = audit.get("user") or {}
            if query["user_id"] != str(user.get("id")):
                return False
        return True


def _position(audit: dict[str, Any]) -> tuple[datetime, int, str]:
    """Where an audit stands in the listing: by `created_at`, then by id."""
    ident = str(audit.get("id"))
    return _time(audit["created_at"]), int(ident) if ident.isdigit() else 0, ident


def _contributors(audit: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored audit's contributors as flat records; the author alone when it lists none."""
    listed = [item for item in audit.get("contributors") or () if isinstance(item, dict)]
    if listed:
        return [_inner(item) for item in listed]
    author = audit.get("user")
    return [copy.deepcopy(author)] if isinstance(author, dict) else []


def _inner(item: Any) -> Any:
    return item["user"] if isinstance(item, dict) and isinstance(item.get("user"), dict) else item
