"""The alert rules: valid for promtool, tested per alert, documented, and naming real metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import exposed_metric_names
from tests.integration.test_prometheus_scrape import PENDING_METRICS

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; CI installs it)",
)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    for block in re.split(r"^## ", RUNBOOKS.read_text(), flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        sections[github_anchor(heading)] = body
    return sections


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_promtool_accepts_the_rules_and_the_example_config() -> None:
    checked = run("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = run("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = run("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"


def test_every_alert_is_labelled_annotated_and_has_a_runbook_section() -> None:
    sections = runbook_sections()
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert (ROOT / path).resolve() == RUNBOOKS, name
        assert anchor in sections, f"{name}: no section #{anchor} in docs/runbooks.md"
        body = sections[anchor]
        for part in ("**Means:**", "**Check:**", "**Fix:**"):
            assert part in body, f"{name}: runbook section lacks {part}"
    # And no runbook for an alert that no longer exists.
    assert set(sections) == {github_anchor(name) for name in names}


def test_alerts_name_only_metrics_the_processes_expose() -> None:
    known = exposed_metric_names() | PENDING_METRICS
    for rule in alert_rules():
        expr = rule["expr"]
        names = set(re.findall(r"\baha_siem_[a-z0-9_]+", expr))
        assert names or "up{" in expr, rule["alert"]
        assert names <= known, (rule["alert"], names - known)


_RULE_HEADER = """\
# deploy/prometheus/alerts.yml as a prometheus-operator resource. Generated: after changing
# alerts.yml, run `.venv/bin/python -m tests.unit.test_alerts` (a test fails while it differs).
# runbook_url is relative to the repository root.
"""


def render_prometheus_rule() -> str:
    """deploy/kubernetes/prometheusrule.yaml as alerts.yml makes it."""
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "aha-siem",
            "namespace": "aha-siem",
            "labels": {"app.kubernetes.io/name": "aha-siem-forwarder"},
        },
        "spec": {"groups": yaml.safe_load(ALERTS.read_text())["groups"]},
    }
    return _RULE_HEADER + yaml.safe_dump(resource, sort_keys=False, width=100)


def test_the_prometheus_rule_resource_carries_the_same_rules() -> None:
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule(), (
        "deploy/kubernetes/prometheusrule.yaml is stale: run .venv/bin/python -m tests.unit.test_alerts"
    )


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(render_prometheus_rule())
