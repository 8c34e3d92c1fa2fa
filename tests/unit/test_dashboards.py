from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from forwarder.backfill.metrics import ReconcileMetrics
from forwarder.metrics import IngestMetrics, SinkMetrics, SpoolMetrics, WorkerMetrics
from forwarder.pipeline.children import SinkProcesses
from forwarder.pipeline.sensors import faust_metrics

DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"


def exposed_names() -> set[str]:
    registry = CollectorRegistry()
    IngestMetrics(registry)
    SpoolMetrics(registry)
    WorkerMetrics(registry)
    SinkMetrics(registry)
    faust_metrics(registry)
    ReconcileMetrics(registry)
    SinkProcesses([], None, registry)  # the worker's restart counter; starts nothing
    names: set[str] = {"up"}  # Prometheus's own, per scrape target
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def test_every_dashboard_query_names_a_metric_the_processes_expose() -> None:
    known = exposed_names()
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                names = set(
                    re.findall(r"\b(?:aha_siem_[a-z0-9_]+|up)\b(?=\s*[{\[)])", target["expr"])
                )
                assert names, (path.name, panel["title"])
                assert names <= known, (path.name, panel["title"], names - known)
                assert target["datasource"]["uid"] == "${datasource}"
