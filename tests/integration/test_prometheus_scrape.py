"""A real Prometheus scrapes a running ingest and worker; every dashboard and alert query must
name metrics and labels that exist in what it scraped.

Method: webhooks are posted first (accepted ones, an exact copy, an unknown token, an invalid
body) and the worker's sinks deliver them, so the series that appear only once events flow
exist. A `prometheus` binary then scrapes both processes every second with the alert rules
loaded. Every PromQL expression of the Grafana dashboards (with Grafana's `$__rate_interval`
and friends replaced) and of `deploy/prometheus/alerts.yml` is evaluated through
`/api/v1/query` and must evaluate without error. Its selectors are then taken apart with a
small tokenizer (Prometheus 2.42 has no parse API): every metric name must have series in
`/api/v1/label/__name__/values`; every label matcher must name a label those series carry
(`/api/v1/series`), and an equality or regex matcher must match at least one scraped value;
every `by`/`without`/`on`/`ignoring` label must exist on one of the expression's metrics.
Metrics that appear only when something fails (`ONLY_ON_FAILURE`) need only to be declared by
the targets (`# HELP`/`# TYPE` lines, seen in `/api/v1/metadata`). Metrics still being built are
listed in `PENDING_METRICS` and skipped while absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.aha_api import FakeAhaApi
from tests.fakes.server import AsgiServer
from tests.helpers import sample_paths
from tests.integration.conftest import Stack, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"

# Metrics that the alerts or dashboards use before the code exposing them has landed. Empty this
# set as they land; while one is absent from the scrape its checks are skipped.
PENDING_METRICS: frozenset[str] = frozenset()

# Metrics of a process the scraped stack does not run (detections are off by default);
# tests/integration/test_alerts.py checks the dashboard's queries on them against a running one.
OFF_BY_DEFAULT = frozenset({"aha_siem_detections_alerts_total", "aha_siem_detections_errors_total"})

# Series that exist only after a failure a healthy test run cannot cause: their families must
# still be declared by the scraped processes.
ONLY_ON_FAILURE = frozenset(
    {
        "aha_siem_ingest_kafka_produce_errors_total",
        "aha_siem_ingest_invalid_dropped_total",
        "aha_siem_sink_dead_lettered_total",
        "aha_siem_sink_retries_total",
        "aha_siem_hec_ack_fallbacks_total",
    }
)

# Grafana's variables, as Grafana would fill them for a short range.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${__range}": "5m",
}

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"offset", "bool", "inf", "nan", "atan2"}
    # aggregations, which may be followed by `by (...)` rather than by their parenthesis
    | {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass
class Selector:
    """One vector selector of an expression: a metric name and its label matchers."""

    metric: str
    matchers: list[tuple[str, str, str]]


def parse_expression(expr: str) -> tuple[list[Selector], set[str]]:
    """The vector selectors of a PromQL expression, and the labels its groupings name."""
    selectors: list[Selector] = []
    grouping: set[str] = set()
    text = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            end = text.index('"', i + 1)
            while text[end - 1] == "\\":
                end = text.index('"', end + 1)
            i = end + 1
            continue
        match = _IDENT.match(text, i)
        if not match or (i and (text[i - 1].isalnum() or text[i - 1] in "_.")):
            i += 1
            continue
        word = match.group()
        i = match.end()
        rest = text[i:].lstrip()
        if word in {"by", "without", "on", "ignoring", "group_left", "group_right"}:
            if rest.startswith("("):
                inside = rest[1 : rest.index(")")]
                grouping.update(name.strip() for name in inside.split(",") if name.strip())
                i = text.index(")", i) + 1
            continue
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue  # a keyword or a function call
        matchers: list[tuple[str, str, str]] = []
        if rest.startswith("{"):
            start = text.index("{", i)
            end = text.index("}", start)
            matchers = [
                (name, op, value) for name, op, value in _MATCHER.findall(text[start + 1 : end])
            ]
            i = end + 1
        selectors.append(Selector(word, matchers))
    return selectors, grouping


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((f"{path.name}: {panel['title']}", expr))
    return found


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [
        (f"alert {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]


def test_the_tokenizer_finds_selectors_matchers_and_groupings() -> None:
    selectors, grouping = parse_expression(
        'histogram_quantile(0.99, sum by (le, sink) (rate(a_bucket{route="webhook",'
        ' status=~"2.."}[5m]))) > 1 and on() count(up{job="x"} offset 4h) > 0'
    )
    assert [(s.metric, s.matchers) for s in selectors] == [
        ("a_bucket", [("route", "=", "webhook"), ("status", "=~", "2..")]),
        ("up", [("job", "=", "x")]),
    ]
    assert grouping == {"le", "sink"}


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus; CI has it)")
    tmp = tmp_path_factory.mktemp("prometheus")
    ingest = stack.url.removeprefix("http://")
    worker = stack.metrics_url.removeprefix("http://").removesuffix("/metrics")
    # The reconciler, against a fake Aha! API, so its alerts are proven on real series too.
    aha = FakeAhaApi()
    aha_server = AsgiServer(aha).__enter__()
    tree = yaml.safe_load(stack.config_path.read_text())
    reconcile_port = free_port()
    tree["aha"] = {
        "checkpoint_dir": str(tmp / "checkpoints"),
        "metrics_host": "127.0.0.1",
        "metrics_port": reconcile_port,
        "accounts": [
            {
                "name": "acme",
                "api_key": aha.api_key,
                "base_url": aha_server.url,
                "token_id": "acme-prod",
                "reconcile": {"enabled": True, "interval_seconds": 5, "settle_seconds": 0},
            }
        ],
    }
    reconcile_config = tmp / "reconcile.yaml"
    reconcile_config.write_text(yaml.safe_dump(tree))
    reconcile_log = (tmp / "reconcile.log").open("wb")
    reconciler = subprocess.Popen(
        [sys.executable, "-m", "forwarder", "reconcile", "--config", str(reconcile_config)],
        stdout=reconcile_log,
        stderr=subprocess.STDOUT,
        env={key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"},
    )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "aha-siem-ingest", "static_configs": [{"targets": [ingest]}]},
            {"job_name": "aha-siem-worker", "static_configs": [{"targets": [worker]}]},
            {
                "job_name": "aha-siem-reconcile",
                "static_configs": [{"targets": [f"127.0.0.1:{reconcile_port}"]}],
            },
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp / "prometheus.log").read_text()[-4000:]
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise TimeoutError("prometheus not ready in 60s")

        def scraped() -> bool:
            targets = server.get("/api/v1/targets")["activeTargets"]
            return len(targets) == 3 and all(t["health"] == "up" for t in targets)

        try:
            wait_until(scraped, "every target scraped", timeout=90)
        except TimeoutError:
            raise AssertionError(json.dumps(server.get("/api/v1/targets"), indent=1)) from None
        yield server
    finally:
        for running in (process, reconciler):
            running.terminate()
            try:
                running.wait(20)
            except subprocess.TimeoutExpired:
                running.kill()
        log.close()
        reconcile_log.close()
        aha_server.__exit__(None, None, None)


def post_webhooks(stack: Stack) -> int:
    """Accepted bodies, one exact copy, an unknown token and an invalid body; the accepted count."""
    bodies = [path.read_bytes() for path in sample_paths() if path.parent.name != "collation"]
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=10) as client:
        for body in [*bodies, bodies[0]]:
            response = client.post(stack.webhook_url(), content=body, headers=headers)
            assert response.status_code == 202, response.text
        response = client.post(stack.webhook_url("not-a-token"), content=bodies[0], headers=headers)
        assert response.status_code == 401
        response = client.post(stack.webhook_url(), content=b'{"no": "event"', headers=headers)
        assert response.status_code == 400
    return len(bodies)


def wait_until(condition: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not seen in {timeout}s")


def test_dashboard_and_alert_queries_name_scraped_metrics_and_labels(
    stack: Stack, prometheus: Prometheus
) -> None:
    accepted = post_webhooks(stack)
    sinks = [sink.name for sink in stack.config.sinks]

    def delivered() -> bool:
        result = prometheus.get("/api/v1/query", query="aha_siem_sink_events_sent_total")
        sent = {item["metric"]["sink"]: float(item["value"][1]) for item in result["result"]}
        return all(sent.get(sink, 0) >= accepted - 1 for sink in sinks)

    wait_until(delivered, "every sink's deliveries in Prometheus")
    # Every job scraped up, and enough scrapes since the events for rate() to see them move.
    up = prometheus.get("/api/v1/query", query="up")["result"]
    assert {item["metric"]["job"]: item["value"][1] for item in up} == {
        "aha-siem-ingest": "1",
        "aha-siem-worker": "1",
        "aha-siem-reconcile": "1",
    }
    time.sleep(3)

    names = set(prometheus.get("/api/v1/label/__name__/values"))
    declared = set(prometheus.get("/api/v1/metadata"))
    problems: list[str] = []
    landed = sorted((PENDING_METRICS & names) - ONLY_ON_FAILURE)
    if landed:
        warnings.warn(f"now exposed, remove from PENDING_METRICS: {landed}", stacklevel=1)

    for where, expr in [*dashboard_expressions(), *alert_expressions()]:
        prometheus.get("/api/v1/query", query=expr)  # evaluates: a syntax or type error fails
        selectors, grouping = parse_expression(expr)
        labels_seen: set[str] = set()
        for selector in selectors:
            metric = selector.metric
            if metric not in names:
                if metric in PENDING_METRICS | OFF_BY_DEFAULT:
                    continue
                # A family's declared name may lack the sample suffix (OpenMetrics style).
                family = re.sub(r"_(bucket|sum|count|total)$", "", metric)
                if metric in ONLY_ON_FAILURE and (metric in declared or family in declared):
                    continue
                problems.append(f"{where}: no metric {metric}")
                continue
            series = prometheus.get("/api/v1/series", **{"match[]": metric})
            label_values: dict[str, set[str]] = {}
            for item in series:
                for label, value in item.items():
                    label_values.setdefault(label, set()).add(value)
            labels_seen.update(label_values)
            for label, op, value in selector.matchers:
                if label not in label_values:
                    problems.append(f"{where}: {metric} has no label {label}")
                elif op == "=" and value not in label_values[label]:
                    problems.append(f"{where}: no {metric} with {label}={value!r}")
                elif op == "=~" and not any(
                    re.fullmatch(value, seen) for seen in label_values[label]
                ):
                    problems.append(f"{where}: no {metric} with {label}=~{value!r}")
        pending_only = all(
            s.metric in PENDING_METRICS | ONLY_ON_FAILURE | OFF_BY_DEFAULT and s.metric not in names
            for s in selectors
        )
        if labels_seen and not pending_only:
            for label in grouping - labels_seen:
                problems.append(f"{where}: groups by {label}, which none of its metrics has")
    assert problems == []
