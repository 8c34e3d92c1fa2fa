"""Would the account's filtered activity webhook have sent this audit? Pure, over one audit.

Aha!'s activity webhook can be limited (account level: workspaces, record types, fields;
workspace level: record types, fields; both: users). Its support page names the choices but not
how they are matched; the rules here, and which of them are assumed, are in docs/backfill.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forwarder.backfill.config import FiltersConfig
from forwarder.backfill.wrap import snake_type
from forwarder.core.users import contributors

# Why an audit is left out; bounded, a metric label.
WORKSPACE = "workspace"
WORKSPACE_UNKNOWN = "workspace_unknown"
RECORD_TYPE = "record_type"
FIELD = "field"
USER = "user"
REASONS = (WORKSPACE, WORKSPACE_UNKNOWN, RECORD_TYPE, FIELD, USER)

# A record's reference: the workspace prefix, then the number, with a record-kind letter
# (`R` release, `I` idea, `E` epic, ...) or a parent number between them: DEMO-28,
# DEMO-R-7, DEMO-I-15, DEMO-41-2.
_REFERENCE = re.compile(r"(?<![A-Za-z0-9-])([A-Z][A-Z0-9]*)-(?:[A-Z]+-)?\d+(?:-\d+)?(?![\w-])")


def workspace_of(audit: Mapping[str, Any]) -> str | None:
    """The reference prefix of the audit's workspace, from the last part of `auditable_url`
    (the record, or for a comment the record it is on), else from `description`."""
    url = audit.get("auditable_url")
    if isinstance(url, str):
        tail = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        found = _REFERENCE.fullmatch(tail)
        if found:
            return found.group(1)
    description = audit.get("description")
    if isinstance(description, str):
        found = _REFERENCE.search(description)
        if found:
            return found.group(1)
    return None


def _fold(value: Any) -> str:
    return str(value).strip().casefold()


@dataclass(frozen=True)
class AuditFilter:
    """The configured filters, ready to match audits in the webhook's shape."""

    workspaces: frozenset[str]
    record_types: frozenset[str]
    fields: frozenset[str]
    users: frozenset[str]
    inject_unknown_workspace: bool

    @classmethod
    def of(cls, config: FiltersConfig) -> AuditFilter:
        """The filter of an account's `filters` section."""
        return cls(
            workspaces=frozenset(config.workspaces),
            record_types=frozenset(snake_type(item) for item in config.record_types),
            fields=frozenset(map(_fold, config.fields)),
            users=frozenset(map(_fold, config.users)),
            inject_unknown_workspace=config.unknown_workspace == "inject",
        )

    def rejects(self, audit: Mapping[str, Any]) -> str | None:
        """Why the filtered webhook would not have sent the audit; None when it would have."""
        if self.workspaces:
            workspace = workspace_of(audit)
            if workspace is None:
                if not self.inject_unknown_workspace:
                    return WORKSPACE_UNKNOWN
            elif workspace not in self.workspaces:
                return WORKSPACE
        if self.record_types and audit.get("auditable_type") not in self.record_types:
            return RECORD_TYPE
        if self.fields and not any(
            isinstance(change, Mapping) and _fold(change.get("field_name")) in self.fields
            for change in _changes(audit)
        ):
            return FIELD
        if self.users and not any(
            _fold(user.get(key)) in self.users
            for user in [audit.get("user"), *contributors(audit)]
            if isinstance(user, Mapping)
            for key in ("id", "email")
            if user.get(key) not in (None, "")
        ):
            return USER
        return None


def _changes(audit: Mapping[str, Any]) -> list[Any]:
    changes = audit.get("changes")
    if changes is None:
        return []
    return changes if isinstance(changes, list) else [changes]
