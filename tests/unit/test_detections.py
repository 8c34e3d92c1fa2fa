"""The Sigma rules: each converts for every target, and each is proven on example webhook bodies
normalized by the real pipeline code and searched by an independent engine (pySigma's SQLite
backend over the events flattened into a table)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

import forwarder.detections

pytest.importorskip("sigma", reason="pySigma comes with the dev extra")

from sigma.backends.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaTransformationError
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule

from forwarder.cli import main
from forwarder.core.normalize import Provenance, normalize_raw
from forwarder.detections import cli as detections_cli
from forwarder.detections.export import (
    CORRELATION_UNSUPPORTED,
    RULES_DIR,
    TARGETS,
    convert_one,
    file_name,
    file_text,
    fresh,
    load_rules,
    rule_name,
)
from forwarder.detections.pipeline import AhaKustoBackend, kusto_pipeline
from tests.golden import assert_golden

EXAMPLES = RULES_DIR.parent / "tests"
NOW = "2026-11-28T03:00:00.000Z"
TABLE = "logs"

COLLECTION = load_rules()
RULES = {rule_name(rule): rule for rule in COLLECTION.rules}
CORRELATIONS = {name for name, rule in RULES.items() if isinstance(rule, SigmaCorrelationRule)}
# Backends without correlation support, documented in docs/detections.md.
NO_CORRELATION = {"elasticsearch-lucene", "kusto"}


# --- the independent engine -------------------------------------------------------------------


def _flatten(node: Any, prefix: str = "") -> list[dict[str, Any]]:
    """The rows of one event: dotted paths to scalars, one row per combination of list items,
    so that a condition on `aha.audit.changes.field_name` and `.value` reads one change."""
    if isinstance(node, dict):
        parts = [_flatten(value, f"{prefix}{key}.") for key, value in node.items()]
        return [
            {key: value for row in combo for key, value in row.items()}
            for combo in itertools.product(*parts)
        ]
    if isinstance(node, list):
        rows = [row for item in node for row in _flatten(item, prefix)]
        return rows or [{}]
    if isinstance(node, bool):
        node = "true" if node else "false"
    return [{prefix[:-1]: node}]


def _rule_fields(rule: SigmaRule) -> set[str]:
    fields: set[str] = set()

    def walk(item: SigmaDetection | SigmaDetectionItem) -> None:
        if isinstance(item, SigmaDetectionItem):
            if item.field:
                fields.add(item.field)
        else:
            for child in item.detection_items:
                walk(child)

    for detection in rule.detection.detections.values():
        walk(detection)
    return fields


def _all_fields() -> set[str]:
    fields = {"@timestamp", "event.id"}
    for rule in COLLECTION.rules:
        if isinstance(rule, SigmaRule):
            fields |= _rule_fields(rule)
        else:
            fields |= set(rule.group_by or [])
    return fields


def _normalize(body: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    provenance = Provenance(
        received_at=NOW,
        source="webhook",
        token_id="acme-prod",
        body_sha256=hashlib.sha256(raw).hexdigest(),
        account="acme",
    )
    return normalize_raw(raw, provenance, now=NOW)


def _table(events: list[dict[str, Any]]) -> sqlite3.Connection:
    rows = [row for event in events for row in _flatten(event)]
    columns = sorted(_all_fields() | {key for row in rows for key in row})
    db = sqlite3.connect(":memory:")
    db.execute(
        f"CREATE TABLE {TABLE} ("
        + ", ".join(f'"{column}" TEXT COLLATE NOCASE' for column in columns)
        + ")"
    )
    for row in rows:
        names = list(row)
        db.execute(
            f"INSERT INTO {TABLE} ({', '.join(f'{chr(34)}{n}{chr(34)}' for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})",
            [row[name] for name in names],
        )
    return db


def _engine() -> sqliteBackend:
    return sqliteBackend(table=TABLE, timestamp_field="@timestamp", event_id_field="event.id")


def _matched_ids(rule: SigmaRule, events: list[dict[str, Any]]) -> set[str]:
    (query,) = _engine().convert(fresh(rule))
    db = _table(events)
    return {row[0] for row in db.execute(f'SELECT DISTINCT "event.id" FROM ({query})')}


def _alerts(rule: SigmaCorrelationRule, events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    (query,) = _engine().convert(fresh(rule))
    db = _table(events)
    return list(db.execute(f"SELECT group_keys, metric_value FROM ({query})"))


def _bodies(path: Path) -> list[dict[str, Any]]:
    """A file holds one webhook body, or a list of them (a burst for a correlation rule)."""
    doc = json.loads(path.read_text())
    return doc if isinstance(doc, list) else [doc]


def _examples(name: str, kind: str) -> list[Path]:
    return sorted((EXAMPLES / name / kind).glob("*.json"))


def _cases(kind: str, correlations: bool) -> list[Any]:
    return [
        pytest.param(name, path, id=f"{name}/{kind}/{path.stem}")
        for name in sorted(RULES)
        if (name in CORRELATIONS) == correlations
        for path in _examples(name, kind)
    ]


# --- the rule set ------------------------------------------------------------------------------


def test_every_rule_has_positive_and_negative_examples() -> None:
    folders = {path.name for path in EXAMPLES.iterdir() if path.is_dir()}
    assert folders == set(RULES)
    for name in RULES:
        assert _examples(name, "positive"), name
        assert _examples(name, "negative"), name


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_follows_the_projects_conventions(name: str) -> None:
    rule = RULES[name]
    assert rule.source is not None and Path(str(rule.source.path)).stem == name
    assert rule.author == "aha-siem-forwarder"
    assert rule.id and rule.date and rule.description and rule.references and rule.level
    assert rule.status is not None
    if isinstance(rule, SigmaRule):
        assert rule.logsource.product == "aha" and rule.logsource.service == "audit"
    # A rule resting on a record type or field name Aha! does not document says so.
    if rule.status.name.lower() == "experimental":
        assert "Experimental:" in rule.description


# pySigma's validators that fetch MITRE data from the network; the tags are checked below.
_ONLINE_VALIDATORS = {"attacktag", "d3_fendtag"}
_TACTICS = {
    "persistence",
    "privilege-escalation",
    "defense-evasion",
    "credential-access",
    "initial-access",
    "impact",
    "exfiltration",
}


def test_rules_pass_pysigmas_validators() -> None:
    from sigma.validation import SigmaValidator
    from sigma.validators.core import validators

    offline = [cls for name, cls in validators.items() if name not in _ONLINE_VALIDATORS]
    issues = SigmaValidator(offline).validate_rules(load_rules())
    assert issues == []


@pytest.mark.parametrize("name", sorted(RULES))
def test_attack_tags_name_a_tactic_or_technique(name: str) -> None:
    for tag in RULES[name].tags:
        assert tag.namespace == "attack", tag
        assert tag.name in _TACTICS or re.fullmatch(r"t\d{4}(\.\d{3})?", tag.name), tag


def test_example_audit_ids_are_unique() -> None:
    ids = [
        body["audit"]["id"]
        for path in sorted(EXAMPLES.rglob("*.json"))
        for body in _bodies(path)
        if "audit" in body
    ]
    assert len(ids) == len(set(ids))


# --- conversion --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_converts_for_every_target(name: str, target: str) -> None:
    converted = convert_one(RULES[name], target)
    if name in CORRELATIONS and target in NO_CORRELATION:
        assert converted.queries == []
        assert converted.unsupported == CORRELATION_UNSUPPORTED
        return
    assert converted.unsupported is None
    assert converted.queries and all(query.strip() for query in converted.queries)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_exported_queries_match_the_golden_files(name: str, target: str) -> None:
    """A change of a rule, a pipeline or a pySigma backend shows as a diff to review."""
    converted = convert_one(RULES[name], target)
    assert_golden(f"detections/{target}/{file_name(converted)}", file_text(converted))


def test_splunk_reads_changes_by_splunks_array_path_within_the_sourcetype() -> None:
    (query,) = convert_one(RULES["aha_privilege_granted"], "splunk").queries
    assert query.startswith('sourcetype="aha:audit:ecs" ')
    assert '"aha.audit.changes{}.field_name" IN ("*role*"' in query


def test_esql_reads_the_data_streams() -> None:
    (query,) = convert_one(RULES["aha_destroy_burst_by_user"], "elasticsearch-esql").queries
    assert query.startswith("from logs-aha.audit-* ")
    assert "by timebucket, user.email" in query and "event_count >= 20" in query


def test_kusto_reads_sentinel_columns_and_the_event() -> None:
    (query,) = convert_one(RULES["aha_integration_user_iam_change"], "kusto").queries
    assert query.startswith("AhaAudit_CL\n| extend ")
    assert "AuditableType = tostring(Event.aha.audit.auditable.type)" in query
    assert "isempty(UserId)" in query and 'Message contains "integration"' in query
    assert query.endswith("| summarize arg_min(TimeGenerated, *) by EventKey")


def test_kusto_refuses_a_field_it_does_not_project() -> None:
    rule = SigmaCollection.from_yaml(
        """
title: t
logsource: {product: aha, service: audit}
detection:
  selection: {host.name: x}
  condition: selection
"""
    )
    with pytest.raises(SigmaTransformationError, match="not projected by the Kusto pipeline"):
        AhaKustoBackend(kusto_pipeline()).convert(rule)


def test_export_writes_each_rule_and_names_what_a_target_cannot_express(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detections", "export", "--target", "kusto", "--output", str(tmp_path)]) == 0
    names = {path.name for path in tmp_path.iterdir()}
    expected = {f"{name}.kql" for name in RULES if name not in CORRELATIONS}
    expected |= {f"{name}.kql.unsupported" for name in CORRELATIONS}
    assert names == expected
    for name in CORRELATIONS:
        assert (tmp_path / f"{name}.kql.unsupported").read_text() == (
            f"kusto: {CORRELATION_UNSUPPORTED}\n"
        )
        assert f"{name}: not supported by kusto" in capsys.readouterr().err


def test_export_names_a_folder_without_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detections", "export", "--target", "splunk", "--rules", str(tmp_path)]) == 2
    assert f"{tmp_path}: no Sigma rules (*.yml); give the folder with --rules DIR" in (
        capsys.readouterr().err
    )


def test_export_prints_every_rule_without_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detections", "export", "--target", "elasticsearch-lucene"]) == 0
    out = capsys.readouterr().out
    for name in RULES:
        assert f"# {name}\n" in out
    assert (
        "# not supported by elasticsearch-lucene: Backend does not support correlation rules."
        in out
    )


def test_export_without_pysigma_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "forwarder.detections.export", raising=False)
    monkeypatch.delattr(forwarder.detections, "export", raising=False)
    for module in [name for name in sys.modules if name == "sigma" or name.startswith("sigma.")]:
        monkeypatch.setitem(sys.modules, module, None)
    assert main(["detections", "export", "--target", "splunk"]) == 2
    assert detections_cli.INSTALL_HINT in capsys.readouterr().err
    assert detections_cli.INSTALL_HINT == "pip install 'aha-siem-forwarder[detections]'"


# --- rules proven on events --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "path"), _cases("positive", correlations=False))
def test_rule_matches_its_positive_examples(name: str, path: Path) -> None:
    events = [_normalize(body) for body in _bodies(path)]
    rule = RULES[name]
    assert isinstance(rule, SigmaRule)
    assert _matched_ids(rule, events) == {event["event"]["id"] for event in events}


@pytest.mark.parametrize(("name", "path"), _cases("negative", correlations=False))
def test_rule_ignores_its_negative_examples(name: str, path: Path) -> None:
    events = [_normalize(body) for body in _bodies(path)]
    rule = RULES[name]
    assert isinstance(rule, SigmaRule)
    assert _matched_ids(rule, events) == set()


@pytest.mark.parametrize(("name", "path"), _cases("positive", correlations=True))
def test_correlation_fires_on_a_burst_above_its_threshold(name: str, path: Path) -> None:
    rule = RULES[name]
    assert isinstance(rule, SigmaCorrelationRule)
    alerts = _alerts(rule, [_normalize(body) for body in _bodies(path)])
    assert alerts
    assert {json.loads(keys)["user.email"] for keys, _ in alerts} == {"priya.menon@example.com"}
    threshold = rule.condition.count
    assert all(metric >= threshold for _, metric in alerts)


@pytest.mark.parametrize(("name", "path"), _cases("negative", correlations=True))
def test_correlation_stays_quiet_below_its_threshold(name: str, path: Path) -> None:
    rule = RULES[name]
    assert isinstance(rule, SigmaCorrelationRule)
    assert _alerts(rule, [_normalize(body) for body in _bodies(path)]) == []


def test_the_engine_sees_the_whole_rule_set_on_the_shipped_samples() -> None:
    """The samples are ordinary roadmap work: only the destroy of a release is of interest,
    and only to the base rule of the burst correlation."""
    samples = Path(__file__).resolve().parents[2] / "forwarder" / "samples"
    events = [_normalize(json.loads(path.read_text())) for path in sorted(samples.rglob("*.json"))]
    hits = {
        name: _matched_ids(rule, events)
        for name, rule in RULES.items()
        if isinstance(rule, SigmaRule)
    }
    destroyed = {
        event["event"]["id"] for event in events if event["event"].get("type") == ["deletion"]
    }
    assert hits.pop("aha_record_destroyed") == destroyed and destroyed
    assert all(not ids for ids in hits.values()), hits
