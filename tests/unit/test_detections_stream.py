"""The streaming engine (forwarder/detections/engine.py) agrees with pySigma's SQLite backend, the
engine that proves the rules, on every example; correlation windows alert once per burst and
survive being stored and read back; alerts are ECS alerts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sigma", reason="pySigma comes with the dev extra")

from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.rule import SigmaRule

from forwarder.detections import engine
from forwarder.detections.export import RULES_DIR
from forwarder.formats import encoder_for, format_names
from forwarder.formats.options import FormatsConfig
from tests.unit.test_detections import (
    CORRELATIONS,
    EXAMPLES,
    RULES,
    _alerts,
    _bodies,
    _matched_ids,
    _normalize,
)

RULESET = engine.load(RULES_DIR)
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.json"))
SAMPLES = sorted((Path(__file__).resolve().parents[2] / "forwarder" / "samples").rglob("*.json"))
NOW = 1_796_000_000.0


def _events(path: Path) -> list[dict[str, Any]]:
    if path.parent.name in {"positive", "negative"}:
        return [_normalize(body) for body in _bodies(path)]
    return [_normalize(json.loads(path.read_text()))]


def _streamed(correlation: engine.Correlation, events: list[dict[str, Any]]) -> list[Any]:
    """Alerts of a correlation over events in their order, each window stored and read back
    between two events as the worker's table does."""
    stored: dict[bytes, bytes] = {}
    fired = []
    for event in events:
        if not any(rule.info.name in correlation.bases for rule in RULESET.match(event)):
            continue
        group = engine.group_of(correlation, event)
        at = engine.event_time(event)
        if group is None or at is None:
            continue
        key = engine.state_key(correlation, group)
        window = engine.Window.decode(stored.get(key))
        _, burst = engine.add(correlation, window, at, event["event"]["id"])
        stored[key] = window.encode()
        if burst is not None:
            fired.append((group, burst))
    return fired


def test_every_rule_compiles() -> None:
    assert {rule.info.name for rule in RULESET.detections} == {
        name for name in RULES if name not in CORRELATIONS
    }
    assert {rule.info.name for rule in RULESET.correlations} == CORRELATIONS


@pytest.mark.parametrize(
    "path",
    [*EXAMPLE_FILES, *SAMPLES],
    ids=[str(p.relative_to(p.parents[2])) for p in [*EXAMPLE_FILES, *SAMPLES]],
)
def test_stream_engine_agrees_with_the_sqlite_backend(path: Path) -> None:
    """Every single-event rule on every example body of every rule and on the shipped samples:
    the same events match, event by event, in both engines."""
    events = _events(path)
    for detection in RULESET.detections:
        rule = RULES[detection.info.name]
        assert isinstance(rule, SigmaRule)
        streamed = {event["event"]["id"] for event in events if detection in RULESET.match(event)}
        assert streamed == _matched_ids(rule, events), detection.info.name


@pytest.mark.parametrize(
    "path",
    [path for name in sorted(CORRELATIONS) for path in sorted((EXAMPLES / name).rglob("*.json"))],
    ids=lambda path: f"{path.parent.parent.name}/{path.parent.name}/{path.stem}",
)
def test_stream_correlation_agrees_with_the_sqlite_backend(path: Path) -> None:
    """Alerts for exactly the groups the SQLite backend's correlation finds, once per burst."""
    name = path.parent.parent.name
    rule = RULES[name]
    assert isinstance(rule, SigmaCorrelationRule)
    correlation = RULESET.by_name(name)
    assert isinstance(correlation, engine.Correlation)
    events = _events(path)
    expected = {json.loads(keys)["user.email"] for keys, _ in _alerts(rule, events)}
    fired = _streamed(correlation, events)
    assert {group[0] for group, _ in fired} == expected
    if path.parent.name == "positive":
        assert len(fired) == 1  # one burst, one alert
        (_, burst) = fired[0]
        assert len(burst.events) == correlation.threshold
        assert burst.end - burst.start <= correlation.timespan
    else:
        assert fired == []


def _burst_rule(threshold: int = 3, timespan: str = "10m") -> engine.Correlation:
    collection = SigmaCollection.from_yaml(
        f"""
title: base
name: base
logsource: {{product: aha, service: audit}}
detection:
  selection: {{aha.audit.action: destroy}}
  condition: selection
---
title: burst
name: burst
correlation:
  type: event_count
  rules: [base]
  group-by: [user.email]
  timespan: {timespan}
  condition: {{gte: {threshold}}}
"""
    )
    collection.resolve_rule_references()
    return engine.compile_collection(collection).correlations[0]


def test_a_window_alerts_once_and_again_only_after_its_span() -> None:
    rule = _burst_rule(threshold=3)
    window = engine.Window()
    outcomes = []
    for i, at in enumerate([0, 60, 120, 180, 240, 599, 600, 660, 720]):
        outcome, burst = engine.add(rule, window, float(at), f"e{i}")
        outcomes.append((outcome, burst is not None))
    assert outcomes == [
        ("counted", False),
        ("counted", False),
        ("counted", True),  # 3 within 10 minutes
        ("covered", False),  # the rest of that span belongs to the alert sent
        ("covered", False),
        ("covered", False),
        ("counted", False),  # a new span starts at the first alert's start + 10 minutes
        ("counted", False),
        ("counted", True),
    ]
    assert window.alerts == 2


def test_a_redelivered_event_is_not_counted_twice() -> None:
    rule = _burst_rule(threshold=3)
    window = engine.Window()
    engine.add(rule, window, 0.0, "a")
    assert engine.add(rule, window, 0.0, "a") == ("duplicate", None)
    outcome, burst = engine.add(rule, window, 10.0, "b")
    assert (outcome, burst) == ("counted", None)
    assert engine.add(rule, window, 20.0, "c")[1] is not None


def test_a_window_counts_events_out_of_order_and_drops_late_ones() -> None:
    rule = _burst_rule(threshold=3, timespan="1m")
    window = engine.Window()
    engine.add(rule, window, 100.0, "a")
    assert engine.add(rule, window, 30.0, "old") == ("late", None)
    engine.add(rule, window, 150.0, "b")
    outcome, burst = engine.add(rule, window, 90.0, "c")  # earlier than b, within the minute
    assert outcome == "counted" and burst is not None
    assert [event_id for _, event_id in burst.events] == ["c", "a", "b"]


def test_window_state_is_versioned_and_round_trips() -> None:
    rule = _burst_rule(threshold=2)
    window = engine.Window()
    engine.add(rule, window, 1.5, "a")
    assert engine.Window.decode(window.encode()) == window
    engine.add(rule, window, 2.5, "b")
    again = engine.Window.decode(window.encode())
    assert again == window and again.covered_until == 601.5
    assert json.loads(window.encode())["v"] == engine.STATE_VERSION
    with pytest.raises(ValueError, match="version 99"):
        engine.Window.decode(b'{"v": 99, "events": []}')


def test_unsupported_rules_are_refused_with_their_name() -> None:
    lt = SigmaCollection.from_yaml(
        """
title: base
name: base
logsource: {product: aha, service: audit}
detection:
  selection: {aha.audit.action: destroy}
  condition: selection
---
title: quiet
name: quiet
correlation: {type: event_count, rules: [base], group-by: [user.email], timespan: 1h,
              condition: {lt: 2}}
"""
    )
    lt.resolve_rule_references()
    with pytest.raises(engine.UnsupportedRule, match="quiet: correlation condition lt"):
        engine.compile_collection(lt)
    keywords = SigmaCollection.from_yaml(
        """
title: kw
name: kw
logsource: {product: aha, service: audit}
detection:
  keywords: [secret]
  condition: keywords
"""
    )
    with pytest.raises(engine.UnsupportedRule, match="kw: keyword detections"):
        engine.compile_collection(keywords)


def test_value_modifiers_follow_sigma() -> None:
    collection = SigmaCollection.from_yaml(
        """
title: mods
name: mods
logsource: {product: aha, service: audit}
detection:
  a: {message|re: '^updated .* DEMO-\\d+$'}
  b: {source.ip|cidr: 10.0.0.0/8}
  c: {aha.audit.interesting: true}
  d: {message|startswith: 'Deleted'}
  condition: (a and b and c) or d
"""
    )
    (rule,) = engine.compile_collection(collection).detections
    base = {"message": "updated feature DEMO-28", "source": {"ip": "10.1.2.3"}}
    base["aha"] = {"audit": {"interesting": True}}
    rows = engine.rows
    wanted = engine.field_prefixes(rule.fields)
    assert any(rule.predicate(row) for row in rows(base, wanted))
    outside = {**base, "source": {"ip": "192.168.0.1"}}
    assert not any(rule.predicate(row) for row in rows(outside, wanted))
    assert any(rule.predicate(row) for row in rows({"message": "DELETED feature"}, wanted))


def test_an_event_alert_is_an_ecs_alert_with_attack_and_the_event() -> None:
    event = _normalize(
        json.loads(
            (
                EXAMPLES / "aha_privilege_granted/positive/project_user_role_raised_to_owner.json"
            ).read_text()
        )
    )
    (detection,) = [d for d in RULESET.match(event) if d.info.name == "aha_privilege_granted"]
    alert = engine.event_alert(detection, event, NOW)
    assert alert["event"]["kind"] == "alert"
    assert alert["event"]["severity"] == 73
    assert alert["event"]["action"] == "aha_privilege_granted"
    assert alert["event"]["category"] == event["event"]["category"]
    assert alert["rule"]["name"] == "aha_privilege_granted"
    assert alert["rule"]["id"] == "f50bd39d-b545-429e-a464-a570b4eef25f"
    assert alert["rule"]["reference"] == "https://www.aha.io/api/resources/audits"
    assert alert["threat"]["framework"] == "MITRE ATT&CK"
    assert alert["threat"]["tactic"]["id"] == ["TA0003", "TA0004"]
    assert alert["threat"]["technique"]["id"] == ["T1098"]
    assert alert["threat"]["technique"]["name"] == ["Account Manipulation"]
    assert alert["related"]["user"] == event["related"]["user"]
    assert alert["aha"]["alert"]["event_ids"] == [event["event"]["id"]]
    assert alert["aha"]["audit"] == event["aha"]["audit"]
    assert alert["@timestamp"] == event["@timestamp"]
    # The same rule on the same event is the same alert: a redelivery shows as a duplicate.
    assert engine.event_alert(detection, event, NOW + 5)["event"]["id"] == alert["event"]["id"]


def test_a_burst_alert_names_the_user_the_window_and_the_subtechnique() -> None:
    path = EXAMPLES / "aha_destroy_burst_by_user/positive/twenty_in_five_minutes.json"
    correlation = RULESET.by_name("aha_destroy_burst_by_user")
    assert isinstance(correlation, engine.Correlation)
    ((group, burst),) = _streamed(correlation, _events(path))
    alert = engine.burst_alert(correlation, group, burst, NOW)
    assert alert["event"]["kind"] == "alert"
    assert alert["user"] == {"email": "priya.menon@example.com"}
    assert alert["related"]["user"] == ["priya.menon@example.com"]
    assert alert["aha"]["alert"]["event_count"] == 20
    assert len(set(alert["aha"]["alert"]["event_ids"])) == 20
    assert alert["event"]["start"] <= alert["event"]["end"] == alert["@timestamp"]
    assert alert["threat"]["technique"]["id"] == ["T1485"]
    assert alert["threat"]["tactic"]["name"] == ["Impact"]
    tampering = RULESET.by_name("aha_integration_tampering")
    assert tampering is not None
    threat = engine.threat(tampering.info)
    assert threat is not None
    assert threat["technique"]["id"] == ["T1562"]
    assert threat["technique"]["subtechnique"]["id"] == ["T1562.008"]
    assert threat["technique"]["subtechnique"]["reference"] == [
        "https://attack.mitre.org/techniques/T1562/008/"
    ]


@pytest.mark.parametrize("name", format_names())
def test_alerts_encode_in_every_output_format(name: str) -> None:
    """A sink with `input: alerts` may use any format: both kinds of alert encode, and a CEF or
    LEEF line names the rule as its event class."""
    event = _normalize(
        json.loads(
            (EXAMPLES / "aha_privilege_granted/positive/user_made_administrator.json").read_text()
        )
    )
    (detection,) = [d for d in RULESET.match(event) if d.info.name == "aha_privilege_granted"]
    correlation = RULESET.by_name("aha_destroy_burst_by_user")
    assert isinstance(correlation, engine.Correlation)
    burst = engine.Burst(((NOW - 60, "1"), (NOW, "2")))
    alerts = [
        engine.event_alert(detection, event, NOW),
        engine.burst_alert(correlation, ["priya.menon@example.com"], burst, NOW),
    ]
    encode = encoder_for(name, FormatsConfig())
    for alert in alerts:
        line = encode(alert)
        assert line
        if name.endswith("cef"):
            assert f"|{alert['rule']['name']}|" in line.decode()


def test_the_window_includes_both_ends_as_the_sqlite_backend_does() -> None:
    """RANGE BETWEEN 600 PRECEDING AND CURRENT ROW: events exactly `timespan` apart share a
    window; a millisecond more and they do not."""
    rule = _burst_rule(threshold=2)
    assert engine.add(rule, engine.Window(), 0.0, "a")[1] is None
    window = engine.Window()
    engine.add(rule, window, 0.0, "a")
    assert engine.add(rule, window, 600.0, "b")[1] is not None
    window = engine.Window()
    engine.add(rule, window, 0.0, "a")
    assert engine.add(rule, window, 600.001, "b")[1] is None


def test_a_gt_condition_alerts_one_event_later_than_gte() -> None:
    collection = SigmaCollection.from_yaml(
        """
title: base
name: base
logsource: {product: aha, service: audit}
detection:
  selection: {aha.audit.action: destroy}
  condition: selection
---
title: burst
name: burst
correlation: {type: event_count, rules: [base], group-by: [user.email], timespan: 5m,
              condition: {gt: 3}}
"""
    )
    collection.resolve_rule_references()
    (correlation,) = engine.compile_collection(collection).correlations
    assert (correlation.threshold, correlation.timespan) == (4, 300.0)
