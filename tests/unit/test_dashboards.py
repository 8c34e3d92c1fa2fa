from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import exposed_metric_names

DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"


def test_every_dashboard_query_names_a_metric_the_processes_expose() -> None:
    known = exposed_metric_names() | {"up"}  # up: Prometheus's own, per target
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
