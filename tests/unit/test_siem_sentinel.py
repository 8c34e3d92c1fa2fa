"""Microsoft Sentinel's setup in siem/sentinel/: the committed ARM template and parser are what
the generator makes from table.json, dcr.json and the Sigma rules today, every rule has an
analytics rule, and the parser and rules read fields that real events carry."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sigma", reason="pySigma comes with the dev extra")

from sigma.correlations import SigmaCorrelationRule
from sigma.rule import SigmaRule

from forwarder.cli import main
from forwarder.detections.export import load_rules, rule_name
from forwarder.detections.pipeline import KUSTO_FIELDS
from forwarder.siem import sentinel
from tests.event_bodies import normalized_events

DIR = sentinel.SENTINEL_DIR
TEMPLATE = json.loads((DIR / sentinel.TEMPLATE_FILE).read_text())
TABLE = json.loads((DIR / "table.json").read_text())
DCR = json.loads((DIR / "dcr.json").read_text())
RULES = load_rules().rules
# Sentinel's tactic names (the alertRules API's AttackTactic values).
SENTINEL_TACTICS = {
    "Reconnaissance", "ResourceDevelopment", "InitialAccess", "Execution", "Persistence",
    "PrivilegeEscalation", "DefenseEvasion", "CredentialAccess", "Discovery", "LateralMovement",
    "Collection", "Exfiltration", "CommandAndControl", "Impact", "PreAttack",
    "ImpairProcessControl", "InhibitResponseFunction",
}  # fmt: skip


def _of_type(kind: str) -> list[dict[str, Any]]:
    return [r for r in TEMPLATE["resources"] if r["type"] == kind]


def _alert_rules() -> dict[str, dict[str, Any]]:
    found = {}
    for resource in _of_type("Microsoft.OperationalInsights/workspaces/providers/alertRules"):
        (rule_id,) = re.findall(r"'([0-9a-f-]{36})'", resource["name"])
        found[rule_id] = resource
    return found


def test_the_committed_files_are_what_the_generator_makes_today(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generated = sentinel.generate()
    for name, text in generated.items():
        assert (DIR / name).read_text() == text, (
            f"siem/sentinel/{name} is stale: run `aha-siem siem sentinel-template`"
        )
    assert main(["siem", "sentinel-template", "--check"]) == 0

    copy = tmp_path / "sentinel"
    shutil.copytree(DIR, copy)
    (copy / sentinel.PARSER_FILE).write_text("AhaAudit_CL\n")
    assert main(["siem", "sentinel-template", "--check", "--output", str(copy)]) == 1
    assert f"{copy / sentinel.PARSER_FILE} differs" in capsys.readouterr().out
    assert main(["siem", "sentinel-template", "--output", str(copy)]) == 0
    assert sentinel.stale(generated, copy) == []


def test_every_sigma_rule_has_a_scheduled_analytics_rule() -> None:
    rules = _alert_rules()
    assert set(rules) == {str(rule.id) for rule in RULES}
    for rule in RULES:
        resource = rules[str(rule.id)]
        properties = resource["properties"]
        assert resource["kind"] == "Scheduled"
        assert properties["displayName"] == rule.title
        assert rule_name(rule) in properties["description"]
        assert properties["severity"] in {"Informational", "Low", "Medium", "High"}
        # Sentinel's limits for a scheduled rule.
        assert len(properties["query"]) <= 10_000
        assert len(properties["displayName"]) <= 256
        assert len(properties["description"]) <= 5_000
        assert set(properties["tactics"]) <= SENTINEL_TACTICS
        assert all(re.fullmatch(r"T\d{4}", t) for t in properties["techniques"])
        attack = [t.name for t in rule.tags if t.namespace == "attack"]
        assert bool(properties["tactics"] or properties["techniques"]) == bool(attack)


def test_single_event_rules_see_each_row_once_and_map_their_entities() -> None:
    rules = _alert_rules()
    for rule in RULES:
        if isinstance(rule, SigmaCorrelationRule):
            continue
        properties = rules[str(rule.id)]["properties"]
        query = properties["query"]
        assert query.startswith("AhaAudit_CL\n| where ingestion_time() > ago(10m)\n")
        assert properties["queryFrequency"] == "PT10M"
        assert query.endswith("| summarize arg_min(TimeGenerated, *) by EventKey")
        for entity in properties["entityMappings"]:
            for mapping in entity["fieldMappings"]:
                assert f"{mapping['columnName']} = " in query


def _burst_groups(query: str, events: list[dict[str, Any]], base: SigmaRule) -> set[str]:
    """The groups the correlation query's sliding window fires for, read back from the query
    (the offset of `prev()` and the span) and applied to the events its base rule matches."""
    from tests.unit.test_detections import _matched_ids

    back = int(re.findall(r"prev\(EventTime, (\d+)\)", query)[0])
    minutes = int(re.findall(r"EventTime - WindowStart <= (\d+)m", query)[0])
    matched = _matched_ids(base, events)
    rows = sorted(
        (e["user"]["email"], datetime.fromisoformat(e["@timestamp"]))
        for e in events
        if e["event"]["id"] in matched and (e.get("user") or {}).get("email")
    )
    return {
        group
        for index, (group, when) in enumerate(rows)
        if index >= back
        and rows[index - back][0] == group
        and when - rows[index - back][1] <= timedelta(minutes=minutes)
    }


def test_the_correlation_query_fires_on_its_rules_examples_only() -> None:
    from tests.unit.test_detections import EXAMPLES, _bodies, _normalize

    rules = _alert_rules()
    for rule in RULES:
        if not isinstance(rule, SigmaCorrelationRule):
            continue
        query = rules[str(rule.id)]["properties"]["query"]
        (base,) = [ref.rule for ref in rule.rules or []]
        assert isinstance(base, SigmaRule)
        for kind, expected in (("positive", True), ("negative", False)):
            paths = sorted((EXAMPLES / rule_name(rule) / kind).glob("*.json"))
            assert paths
            for path in paths:
                events = [_normalize(body) for body in _bodies(path)]
                assert bool(_burst_groups(query, events, base)) is expected, path.name


def test_the_correlation_rule_counts_as_its_sigma_rule_says() -> None:
    rules = _alert_rules()
    correlations = [rule for rule in RULES if isinstance(rule, SigmaCorrelationRule)]
    assert correlations
    for rule in correlations:
        properties = rules[str(rule.id)]["properties"]
        query = properties["query"]
        columns = [KUSTO_FIELDS[field].column for field in rule.group_by or []]
        minutes = rule.timespan.seconds // 60
        count = rule.condition.count  # type: ignore[union-attr]
        same = " and ".join(f"prev({column}, {count - 1}) == {column}" for column in columns)
        assert f"| extend WindowStart = iff({same}, prev(EventTime, {count - 1})" in query
        assert f"EventTime - WindowStart <= {minutes}m" in query
        assert query.endswith(f"by {', '.join(columns)}")
        # The rule it counts, converted as the single-event rule is.
        (base,) = [ref.rule for ref in rule.rules or []]
        base_query = rules[str(base.id)]["properties"]["query"]
        where = next(line for line in base_query.splitlines() if line.startswith("| where A"))
        assert where in query
        # The period covers a window, the grace for late audits and one run.
        assert properties["queryPeriod"] == sentinel.iso_duration(
            timedelta(minutes=minutes) + sentinel.CORRELATION_GRACE + sentinel.CORRELATION_FREQUENCY
        )


def test_the_template_embeds_the_table_and_the_rule_as_shipped() -> None:
    (table,) = _of_type("Microsoft.OperationalInsights/workspaces/tables")
    assert table["properties"] == TABLE["properties"]
    (dcr,) = _of_type("Microsoft.Insights/dataCollectionRules")
    assert dcr["kind"] == DCR["kind"]
    expected = json.loads(json.dumps(DCR["properties"]))
    for destination in expected["destinations"]["logAnalytics"]:
        destination["workspaceResourceId"] = "[variables('workspaceResourceId')]"
    assert dcr["properties"] == expected
    # The stream the sink sends declares the table's columns, so `transformKql` is `source`.
    table_columns = [(c["name"], c["type"]) for c in TABLE["properties"]["schema"]["columns"]]
    stream = DCR["properties"]["streamDeclarations"]["Custom-AhaAudit"]["columns"]
    assert [(c["name"], c["type"]) for c in stream] == table_columns


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, path + "[]")
    elif isinstance(node, str):
        yield path, node


def test_arm_expressions_name_only_declared_parameters_and_resources() -> None:
    expressions = [
        (path, text)
        for path, text in _strings(TEMPLATE)
        if text.startswith("[") and not text.startswith("[[")
    ]
    assert expressions
    allowed = re.compile(
        r"\.(resources\[\]\.(name|condition|location|dependsOn\[\]|properties\.enabled"
        r"|properties\.destinations\.logAnalytics\[\]\.workspaceResourceId)"
        r"|parameters\.\w+\.defaultValue|variables\.\w+|outputs\.\w+\.value)"
    )
    for path, text in expressions:
        assert allowed.fullmatch(path), f"an ARM expression where a literal belongs: {path}"
        for name in re.findall(r"parameters\('(\w+)'\)", text):
            assert name in TEMPLATE["parameters"], text
        for name in re.findall(r"variables\('(\w+)'\)", text):
            assert name in TEMPLATE["variables"], text
    table_id = (
        "[resourceId('Microsoft.OperationalInsights/workspaces/tables', "
        "parameters('workspaceName'), 'AhaAudit_CL')]"
    )
    for resource in TEMPLATE["resources"][1:]:
        assert resource["dependsOn"] == [table_id]
        assert resource["apiVersion"]


def _paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from _paths(value, path)
    elif isinstance(node, list):
        for item in node:
            yield from _paths(item, prefix)


def test_the_parser_reads_fields_real_events_carry_and_makes_the_asim_columns() -> None:
    seen: set[str] = set()
    for event in normalized_events().values():
        seen |= set(_paths(event))
    parser = sentinel.PARSER
    read = set(re.findall(r"\bEvent\.([\w.]+)", parser))
    assert read and read <= seen, read - seen
    for column in re.findall(r"\bChanges\[0\]\.(\w+)", parser):
        assert f"aha.audit.changes.{column}" in seen
    made = set(re.findall(r"^\s+(\w+) = ", parser, re.MULTILINE))
    assert set(sentinel.ASIM_COLUMNS) <= made
    (saved,) = _of_type("Microsoft.OperationalInsights/workspaces/savedSearches")
    assert saved["properties"]["query"] == parser
    assert saved["properties"]["functionAlias"] == "AhaAudit"
