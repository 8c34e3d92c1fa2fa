"""The Sigma rules evaluated on one ECS event at a time, for the worker's streaming alerts.

pySigma parses the rules (`SigmaCollection`) and resolves their conditions into trees of
`field = value` leaves, with every modifier (`contains`, `startswith`, `re`, `cidr`, ...) already
applied to the values; this module only compiles those trees to Python predicates. The field
names are the ECS event's own, as in the export (forwarder/detections/pipeline.py translates them
only for targets that store the event differently), and an event is read as pySigma's SQLite
backend reads it in the tests: one row per change (per item of any list a rule names), a rule
matching when all its condition holds on one row, strings compared without regard to case.

Correlation rules (`event_count` over a `timespan`, grouped by fields) are counted by
`Counter.add` over a `Window` per rule and group: a pure step the worker's table keeps
(forwarder/pipeline/alerts.py). The window slides as the SQLite backend's does (events within
`timespan` of one another, both ends included); once it alerts, the events of that window and
of the `timespan` from its first event are covered by that alert, so one burst is one alert.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionItem,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationConditionOperator,
    SigmaCorrelationRule,
    SigmaCorrelationType,
)
from sigma.rule import SigmaRule
from sigma.types import (
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SpecialChars,
)

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]

LEVELS = ("informational", "low", "medium", "high", "critical")


class UnsupportedRule(ValueError):
    """A rule the streaming engine cannot evaluate; the message names the rule and why."""


@dataclass(frozen=True)
class RuleInfo:
    """What an alert says about the rule that raised it."""

    name: str
    id: str
    title: str
    description: str
    level: str
    status: str
    references: tuple[str, ...]
    author: str
    tactics: tuple[str, ...]
    """ATT&CK tactics from the tags (`attack.persistence` -> `persistence`)."""
    techniques: tuple[str, ...]
    """ATT&CK techniques and sub-techniques from the tags, upper case (`T1098.001`)."""


@dataclass(frozen=True)
class Detection:
    """One single-event rule compiled to a predicate over an event's rows."""

    info: RuleInfo
    predicate: Predicate
    fields: frozenset[str]


@dataclass(frozen=True)
class Correlation:
    """One `event_count` correlation rule."""

    info: RuleInfo
    bases: tuple[str, ...]
    group_by: tuple[str, ...]
    timespan: float
    """Seconds."""
    threshold: int
    """Events in one window that alert (`gte: N`, or `gt: N-1`)."""


# --- compiling the condition trees ---------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A scalar as the SQLite proof stores it: text, booleans as true/false, null as None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _string_pattern(value: SigmaString, rule: str) -> re.Pattern[str]:
    parts = []
    for part in value.s:
        if isinstance(part, str):
            parts.append(re.escape(part))
        elif part is SpecialChars.WILDCARD_MULTI:
            parts.append(".*")
        elif part is SpecialChars.WILDCARD_SINGLE:
            parts.append(".")
        else:
            raise UnsupportedRule(f"{rule}: placeholder {part!r} in a value is not supported")
    flags = re.DOTALL if isinstance(value, SigmaCasedString) else re.DOTALL | re.IGNORECASE
    return re.compile("".join(parts), flags)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_COMPARE: dict[Any, Callable[[float, float], bool]] = {
    SigmaCompareExpression.CompareOperators.LT: lambda a, b: a < b,
    SigmaCompareExpression.CompareOperators.LTE: lambda a, b: a <= b,
    SigmaCompareExpression.CompareOperators.GT: lambda a, b: a > b,
    SigmaCompareExpression.CompareOperators.GTE: lambda a, b: a >= b,
}


def _leaf(name: str, value: Any, rule: str) -> Predicate:
    """`field = value` for one pySigma value type."""
    if isinstance(value, SigmaExpansion):
        alternatives = [_leaf(name, item, rule) for item in value.values]
        return lambda row: any(test(row) for test in alternatives)
    if isinstance(value, SigmaNull):
        return lambda row: row.get(name) is None
    if isinstance(value, SigmaExists):
        wanted = bool(value.exists)
        return lambda row: (row.get(name) is not None) == wanted
    if isinstance(value, SigmaString):
        pattern = _string_pattern(value, rule)

        def string(row: Row) -> bool:
            text = _text(row.get(name))
            return text is not None and pattern.fullmatch(text) is not None

        return string
    if isinstance(value, SigmaBool):
        wanted_text = "true" if value.boolean else "false"
        return lambda row: (_text(row.get(name)) or "").lower() == wanted_text
    if isinstance(value, SigmaNumber):
        number = float(value.number)
        return lambda row: _number(row.get(name)) == number
    if isinstance(value, SigmaRegularExpression):
        flags = 0
        for flag in value.flags:
            flags |= SigmaRegularExpression.sigma_to_python_flags[flag]
        regex = re.compile(str(value.regexp), flags)

        def regular(row: Row) -> bool:
            text = _text(row.get(name))
            return text is not None and regex.search(text) is not None

        return regular
    if isinstance(value, SigmaCompareExpression):
        compare = _COMPARE.get(value.op)
        if compare is None:
            raise UnsupportedRule(f"{rule}: comparison {value.op} is not supported")
        bound = float(value.number.number)

        def compared(row: Row) -> bool:
            number = _number(row.get(name))
            return number is not None and compare(number, bound)

        return compared
    if isinstance(value, SigmaCIDRExpression):
        network = value.network

        def in_network(row: Row) -> bool:
            try:
                return ipaddress.ip_address(str(row.get(name))) in network
            except ValueError:
                return False

        return in_network
    if isinstance(value, SigmaFieldReference):
        other = value.field

        def referenced(row: Row) -> bool:
            mine, theirs = _text(row.get(name)), _text(row.get(other))
            if mine is None or theirs is None:
                return False
            mine, theirs = mine.casefold(), theirs.casefold()
            if value.starts_with:
                return mine.startswith(theirs)
            if value.ends_with:
                return mine.endswith(theirs)
            return mine == theirs

        return referenced
    raise UnsupportedRule(f"{rule}: value type {type(value).__name__} is not supported")


def _compile(node: Any, rule: str, fields: set[str]) -> Predicate:
    if isinstance(node, ConditionFieldEqualsValueExpression):
        fields.add(node.field)
        if isinstance(node.value, SigmaFieldReference):
            fields.add(node.value.field)
        return _leaf(node.field, node.value, rule)
    if isinstance(node, ConditionValueExpression):
        raise UnsupportedRule(
            f"{rule}: keyword detections (values without a field) are not supported"
        )
    if isinstance(node, ConditionNOT):
        (inner,) = [_compile(arg, rule, fields) for arg in node.args]
        return lambda row: not inner(row)
    if isinstance(node, ConditionAND | ConditionOR):
        parts = [_compile(arg, rule, fields) for arg in node.args]
        if isinstance(node, ConditionAND):
            return lambda row: all(part(row) for part in parts)
        return lambda row: any(part(row) for part in parts)
    if isinstance(node, ConditionItem):
        raise UnsupportedRule(f"{rule}: condition {type(node).__name__} is not supported")
    raise UnsupportedRule(f"{rule}: condition {node!r} is not supported")


def _info(rule: SigmaRule | SigmaCorrelationRule) -> RuleInfo:
    name = rule.name or str(rule.id)
    tactics, techniques = [], []
    for tag in rule.tags:
        if tag.namespace != "attack":
            continue
        if re.fullmatch(r"t\d{4}(\.\d{3})?", tag.name):
            techniques.append(tag.name.upper())
        elif not re.fullmatch(r"[gs]\d{4}", tag.name):  # groups and software are no tactic
            tactics.append(tag.name)
    return RuleInfo(
        name=name,
        id=str(rule.id),
        title=rule.title,
        description=" ".join((rule.description or "").split()),
        level=str(rule.level) if rule.level is not None else "medium",
        status=str(rule.status) if rule.status is not None else "experimental",
        references=tuple(rule.references),
        author=rule.author or "",
        tactics=tuple(tactics),
        techniques=tuple(techniques),
    )


def compile_rule(rule: SigmaRule) -> Detection:
    """One rule's conditions (pySigma's parsed trees, OR-ed) as one predicate."""
    info = _info(rule)
    fields: set[str] = set()
    conditions = [
        _compile(condition.parse(), info.name, fields)
        for condition in rule.detection.parsed_condition
    ]
    return Detection(info, lambda row: any(test(row) for test in conditions), frozenset(fields))


def compile_correlation(rule: SigmaCorrelationRule) -> Correlation:
    """An `event_count` rule with a `gte` or `gt` condition; anything else is named and refused."""
    info = _info(rule)
    if rule.type != SigmaCorrelationType.EVENT_COUNT:
        raise UnsupportedRule(f"{info.name}: correlation type {rule.type} is not supported")
    condition = rule.condition
    if not isinstance(condition, SigmaCorrelationCondition):
        raise UnsupportedRule(f"{info.name}: extended correlation conditions are not supported")
    if condition.op == SigmaCorrelationConditionOperator.GTE:
        threshold = int(condition.count)
    elif condition.op == SigmaCorrelationConditionOperator.GT:
        threshold = int(condition.count) + 1
    else:
        # A count below a bound is an absence, which an event-driven counter cannot see.
        raise UnsupportedRule(
            f"{info.name}: correlation condition {condition.op.name.lower()} is not supported "
            "(only gte and gt)"
        )
    if rule.timespan is None:
        raise UnsupportedRule(f"{info.name}: a correlation needs a timespan")
    bases = tuple(ref.rule.name or str(ref.rule.id) for ref in rule.rules or [])
    return Correlation(
        info, bases, tuple(rule.group_by or ()), float(rule.timespan.seconds), threshold
    )


# --- the rule set over events ----------------------------------------------------------------------


def field_prefixes(names: Iterable[str]) -> frozenset[str]:
    """Every dotted prefix of the names: the paths `rows` walks into."""
    wanted: set[str] = set()
    for name in names:
        parts = name.split(".")
        wanted.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return frozenset(wanted)


def rows(event: Mapping[str, Any], wanted: frozenset[str]) -> list[dict[str, Any]]:
    """The event's rows over the wanted fields: one per combination of list items, so that a
    condition on two fields of `aha.audit.changes` reads one change (as the SQLite proof)."""

    def walk(node: Any, prefix: str) -> list[dict[str, Any]]:
        if isinstance(node, Mapping):
            parts = [
                walk(value, f"{prefix}{key}.")
                for key, value in node.items()
                if f"{prefix}{key}" in wanted
            ]
            return [
                {key: value for row in combo for key, value in row.items()}
                for combo in itertools.product(*parts)
            ]
        if isinstance(node, list):
            return [row for item in node for row in walk(item, prefix)] or [{}]
        return [{prefix[:-1]: node}]

    return walk(event, "")


@dataclass(frozen=True)
class RuleSet:
    """The compiled rules: single-event detections and the correlations counting them."""

    detections: tuple[Detection, ...]
    correlations: tuple[Correlation, ...]
    wanted: frozenset[str] = field(default=frozenset())

    def match(self, event: Mapping[str, Any]) -> list[Detection]:
        """The detections that hold on `event` (raises what a rule's evaluation raised)."""
        event_rows = rows(event, self.wanted)
        return [rule for rule in self.detections if any(rule.predicate(row) for row in event_rows)]

    def counting(self, matched: Iterable[Detection]) -> list[Correlation]:
        """The correlations that count an event matched by `matched`."""
        names = {rule.info.name for rule in matched}
        return [c for c in self.correlations if names.intersection(c.bases)]

    def by_name(self, name: str) -> Detection | Correlation | None:
        """A rule by its `name`."""
        rules: list[Detection | Correlation] = [*self.detections, *self.correlations]
        return next((rule for rule in rules if rule.info.name == name), None)


def compile_collection(collection: SigmaCollection) -> RuleSet:
    """Every rule of a collection (references resolved); an unsupported rule is refused."""
    detections, correlations = [], []
    for rule in collection.rules:
        if isinstance(rule, SigmaCorrelationRule):
            correlations.append(compile_correlation(rule))
        elif isinstance(rule, SigmaRule):
            detections.append(compile_rule(rule))
    names = {rule.info.name for rule in detections}
    for correlation in correlations:
        missing = [base for base in correlation.bases if base not in names]
        if missing:
            raise UnsupportedRule(f"{correlation.info.name}: unknown rules {missing}")
    fields = {name for rule in detections for name in rule.fields}
    fields |= {"@timestamp", "event.id"} | {n for c in correlations for n in c.group_by}
    return RuleSet(tuple(detections), tuple(correlations), field_prefixes(fields))


def load(directory: Path) -> RuleSet:
    """The `*.yml` rules of a folder, compiled (raises RuleError or UnsupportedRule)."""
    from forwarder.detections.export import load_rules

    return compile_collection(load_rules(directory))


# --- correlation windows -----------------------------------------------------------------------


def group_of(correlation: Correlation, event: Mapping[str, Any]) -> list[str] | None:
    """The event's group values (lower case, as the SQLite backend groups); None when any is
    missing: the backend leaves such events out of every group."""
    (first,) = rows(event, field_prefixes(correlation.group_by))[:1] or [{}]
    values = [_text(first.get(name)) for name in correlation.group_by]
    if any(value is None for value in values):
        return None
    return [value.lower() for value in values if value is not None]


def event_time(event: Mapping[str, Any]) -> float | None:
    """The event's `@timestamp` in Unix seconds (milliseconds kept), None if unreadable."""
    raw = event.get("@timestamp")
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp(), 3)


STATE_VERSION = 1


@dataclass
class Window:
    """What one correlation remembers of one group: the events that may still make a burst and
    the end of the span its last alert covers. Kept in the worker's table, so it is versioned."""

    events: list[tuple[float, str]] = field(default_factory=list)
    """(time, event id), oldest first; only the last `timespan` is kept."""
    covered_until: float = float("-inf")
    """Events before this time belong to an alert already sent."""
    alerts: int = 0

    def encode(self) -> bytes:
        """The table's value."""
        return orjson.dumps(
            {
                "v": STATE_VERSION,
                "events": self.events,
                "covered_until": self.covered_until if self.alerts else None,
                "alerts": self.alerts,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> Window:
        """A stored value (None: a group never seen)."""
        if raw is None:
            return cls()
        doc = orjson.loads(raw)
        if doc.get("v") != STATE_VERSION:
            raise ValueError(f"correlation state version {doc.get('v')!r} is not known")
        covered = doc.get("covered_until")
        return cls(
            events=[(float(ts), str(event_id)) for ts, event_id in doc["events"]],
            covered_until=float("-inf") if covered is None else float(covered),
            alerts=int(doc.get("alerts", 0)),
        )


@dataclass(frozen=True)
class Burst:
    """A window that reached the threshold: what its alert reports."""

    events: tuple[tuple[float, str], ...]

    @property
    def start(self) -> float:
        """Time of its first event."""
        return self.events[0][0]

    @property
    def end(self) -> float:
        """Time of its last event."""
        return self.events[-1][0]


def add(
    correlation: Correlation, window: Window, at: float, event_id: str
) -> tuple[str, Burst | None]:
    """Count one event into `window` (changed in place): its outcome and a burst to alert on.

    Outcomes: `counted`, `duplicate` (this event id is in the window already: a redelivery),
    `covered` (inside the span of an alert already sent), `late` (older than the window).
    """
    if at < window.covered_until:
        return "covered", None
    if any(known == event_id for _, known in window.events):
        return "duplicate", None
    newest = max([at, *(ts for ts, _ in window.events)])
    if at < newest - correlation.timespan:
        return "late", None
    events = sorted([*window.events, (at, event_id)])
    window.events = [item for item in events if item[0] >= newest - correlation.timespan]
    start = 0
    for end, (end_ts, _) in enumerate(window.events):
        while end_ts - window.events[start][0] > correlation.timespan:
            start += 1
        if end - start + 1 >= correlation.threshold:
            burst = Burst(tuple(window.events[start : end + 1]))
            window.covered_until = burst.start + correlation.timespan
            window.events = [item for item in window.events if item[0] >= window.covered_until]
            window.alerts += 1
            return "counted", burst
    return "counted", None


def state_key(correlation: Correlation, group: list[str]) -> bytes:
    """The table key (and the partition key of the matches) of one rule and group."""
    return orjson.dumps([correlation.info.name, *group])


# --- alerts ------------------------------------------------------------------------------------

ALERT_NAMESPACE = uuid.UUID("0f6d1c9e-5b0a-4d57-9a43-6f1d2c1e7a11")
RULESET = "aha-siem-forwarder"

# Level to ECS `event.severity` / `event.risk_score`, as Elastic's detection rules map Sigma's.
SEVERITY = {"informational": 1, "low": 21, "medium": 47, "high": 73, "critical": 99}

TACTICS = {
    "reconnaissance": ("TA0043", "Reconnaissance"),
    "resource-development": ("TA0042", "Resource Development"),
    "initial-access": ("TA0001", "Initial Access"),
    "execution": ("TA0002", "Execution"),
    "persistence": ("TA0003", "Persistence"),
    "privilege-escalation": ("TA0004", "Privilege Escalation"),
    "defense-evasion": ("TA0005", "Defense Evasion"),
    "credential-access": ("TA0006", "Credential Access"),
    "discovery": ("TA0007", "Discovery"),
    "lateral-movement": ("TA0008", "Lateral Movement"),
    "collection": ("TA0009", "Collection"),
    "command-and-control": ("TA0011", "Command and Control"),
    "exfiltration": ("TA0010", "Exfiltration"),
    "impact": ("TA0040", "Impact"),
}

# Names of the techniques the project's rules use (MITRE's data is not fetched at run time).
TECHNIQUES = {
    "T1078": "Valid Accounts",
    "T1078.004": "Cloud Accounts",
    "T1098": "Account Manipulation",
    "T1098.001": "Additional Cloud Credentials",
    "T1136": "Create Account",
    "T1485": "Data Destruction",
    "T1531": "Account Access Removal",
    "T1556": "Modify Authentication Process",
    "T1562": "Impair Defenses",
    "T1562.008": "Disable or Modify Cloud Logs",
}


def _technique_url(technique: str) -> str:
    return "https://attack.mitre.org/techniques/" + technique.replace(".", "/") + "/"


def threat(info: RuleInfo) -> dict[str, Any] | None:
    """ECS `threat.*` from the rule's ATT&CK tags; None for a rule without any."""
    if not info.tactics and not info.techniques:
        return None
    doc: dict[str, Any] = {"framework": "MITRE ATT&CK"}
    tactics = [TACTICS[name] for name in info.tactics if name in TACTICS]
    if tactics:
        doc["tactic"] = {
            "id": [tactic_id for tactic_id, _ in tactics],
            "name": [name for _, name in tactics],
            "reference": [f"https://attack.mitre.org/tactics/{tid}/" for tid, _ in tactics],
        }
    parents = list(dict.fromkeys(t.split(".")[0] for t in info.techniques))
    subs = [t for t in info.techniques if "." in t]
    if parents:
        technique: dict[str, Any] = {
            "id": parents,
            "name": [TECHNIQUES.get(t, t) for t in parents],
            "reference": [_technique_url(t) for t in parents],
        }
        if subs:
            technique["subtechnique"] = {
                "id": subs,
                "name": [TECHNIQUES.get(t, t) for t in subs],
                "reference": [_technique_url(t) for t in subs],
            }
        doc["technique"] = technique
    return doc


def _iso(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _base(info: RuleInfo, alert_id: str, timestamp: Any, now: float) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "@timestamp": timestamp,
        "ecs": {"version": "8.17.0"},
        "event": {
            "kind": "alert",
            "id": alert_id,
            # The rule: what a CEF or LEEF line of the alert names as its event class.
            "action": info.name,
            "created": _iso(now),
            "dataset": "aha.alerts",
            "module": "aha",
            "provider": RULESET,
            "severity": SEVERITY.get(info.level, 47),
            "risk_score": SEVERITY.get(info.level, 47),
        },
        "rule": {
            "id": info.id,
            "uuid": info.id,
            "name": info.name,
            "description": info.description,
            "category": info.title,
            "ruleset": RULESET,
            "author": [info.author] if info.author else [],
        },
        "observer": {"vendor": "Aha!", "product": "Aha! Roadmaps", "type": "saas"},
    }
    if info.references:
        # ECS `rule.reference` is one URL; all of them are under `aha.alert.references`.
        doc["rule"]["reference"] = info.references[0]
    threat_doc = threat(info)
    if threat_doc is not None:
        doc["threat"] = threat_doc
    return doc


def _alert_meta(info: RuleInfo, event_ids: list[str]) -> dict[str, Any]:
    return {
        "rule": info.name,
        "title": info.title,
        "level": info.level,
        "status": info.status,
        "references": list(info.references),
        "event_ids": event_ids,
        "event_count": len(event_ids),
    }


def event_alert(detection: Detection, event: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The ECS alert of one event matched by a single-event rule; its id is the same for the
    same rule and event, so a redelivered event gives a visible duplicate, never a new alert."""
    info = detection.info
    event_id = str((event.get("event") or {}).get("id"))
    alert_id = str(uuid.uuid5(ALERT_NAMESPACE, f"{info.id}:{event_id}"))
    doc = _base(info, alert_id, event.get("@timestamp"), now)
    doc["message"] = f"{info.title}: {event.get('message') or ''}".rstrip(": ")
    for name in ("user", "organization", "url"):
        if event.get(name) is not None:
            doc[name] = event[name]
    source = event.get("event") or {}
    for name in ("category", "type"):
        if source.get(name) is not None:
            doc["event"][name] = source[name]
    doc["related"] = {"user": list((event.get("related") or {}).get("user") or [])}
    aha = event.get("aha") or {}
    doc["aha"] = {
        "alert": _alert_meta(info, [event_id]),
        **{name: aha[name] for name in ("event", "audit") if name in aha},
    }
    return doc


def burst_alert(
    correlation: Correlation,
    group: list[str],
    burst: Burst,
    now: float,
    organization: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ECS alert of a correlation window; its id names the rule, group and first event."""
    info = correlation.info
    event_ids = [event_id for _, event_id in burst.events]
    alert_id = str(
        uuid.uuid5(ALERT_NAMESPACE, orjson.dumps([info.id, *group, event_ids[0]]).decode())
    )
    doc = _base(info, alert_id, _iso(burst.end), now)
    groups = dict(zip(correlation.group_by, group, strict=True))
    described = ", ".join(f"{name}={value}" for name, value in groups.items())
    doc["message"] = (
        f"{info.title}: {len(event_ids)} events within {int(correlation.timespan)} s ({described})"
    )
    doc["event"].update({"start": _iso(burst.start), "end": _iso(burst.end)})
    users = [value for name, value in groups.items() if name.startswith("user.")]
    doc["related"] = {"user": users}
    user = {
        name.split(".", 1)[1]: value for name, value in groups.items() if name.startswith("user.")
    }
    if user:
        doc["user"] = user
    if organization:
        doc["organization"] = dict(organization)
    meta = _alert_meta(info, event_ids)
    meta["group"] = groups
    meta["timespan_seconds"] = correlation.timespan
    meta["threshold"] = correlation.threshold
    doc["aha"] = {"alert": meta}
    return doc
