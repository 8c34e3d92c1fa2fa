"""Backfill and reconciliation against a real ingest, worker and file sink (the `stack`).

Done when: with the ingest stopped for a while during a simulated stream of Aha! activity,
running the reconciliation brings every missed audit to the sinks, and nothing twice.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from forwarder.backfill import reconcile
from forwarder.backfill.config import (
    AhaAccountConfig,
    AhaConfig,
    FiltersConfig,
    RateLimitConfig,
    ReconcileConfig,
)
from forwarder.config import Config
from tests.fakes.aha_api import FakeAhaApi, make_audit
from tests.fakes.server import AsgiServer
from tests.integration.conftest import Stack, free_port, wait_http_ok

pytestmark = pytest.mark.integration

API_KEY = "aha-test-key"


@pytest.fixture(scope="module")
def aha() -> Iterator[tuple[FakeAhaApi, AsgiServer]]:
    fake = FakeAhaApi(API_KEY, per_second=None, per_minute=None)
    with AsgiServer(fake) as server:
        yield fake, server


def with_account(
    stack: Stack, server: AsgiServer, tmp: Path, filters: FiltersConfig | None = None
) -> Config:
    """The stack's config plus an Aha! account on the fake API, reconciling the last hour."""
    account = AhaAccountConfig(
        name="acme",
        api_key=SecretStr(API_KEY),
        base_url=server.url,
        per_page=7,
        rate_limit=RateLimitConfig(requests_per_second=20, burst=20),
        reconcile=ReconcileConfig(enabled=True, window_seconds=3600, settle_seconds=0),
        filters=filters or FiltersConfig(),
    )
    aha = AhaConfig(accounts=(account,), checkpoint_dir=tmp / "checkpoints", scan_margin_seconds=60)
    return stack.config.model_copy(update={"aha": aha})


def records(index: int) -> int:
    """A record id of its own per audit, so no audit is suppressed as collated."""
    return 7000000000000000000 + uuid.uuid4().int % 10**15 + index


def shipped_ids(events_file: Path) -> Counter[str]:
    if not events_file.exists():
        return Counter()
    lines = events_file.read_bytes().splitlines()
    return Counter(orjson.loads(line)["event"]["id"] for line in lines if line.strip())


def worker_events_in(stack: Stack) -> float:
    for line in httpx.get(stack.metrics_url, timeout=5).text.splitlines():
        if line.startswith("aha_siem_worker_events_in_total "):
            return float(line.split()[1])
    return 0.0


def wait_for(stack: Stack, ids: list[str], *, consumed: float, timeout: float = 90) -> Counter[str]:
    """Until every id reached the file sink and the worker consumed `consumed` raw records."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = shipped_ids(stack.events_file)
        if all(counts[i] for i in ids) and worker_events_in(stack) >= consumed:
            # One more batch interval, so a late duplicate would show.
            time.sleep(1.0)
            return shipped_ids(stack.events_file)
        time.sleep(0.3)
    counts = shipped_ids(stack.events_file)
    missing = [i for i in ids if not counts[i]]
    raise AssertionError(f"{len(missing)} audits never reached the sink: {missing[:5]}")


def post(url: str, audit: dict[str, Any]) -> bool:
    """Deliver like Aha!: one try, 5 s, whatever the answer."""
    try:
        return (
            httpx.post(
                url, content=orjson.dumps({"event": "audit", "audit": audit}), timeout=5
            ).status_code
            == 202
        )
    except httpx.HTTPError:
        return False


def test_backfill_over_webhooks_ships_each_audit_once(
    stack: Stack, aha: tuple[FakeAhaApi, AsgiServer], tmp_path: Path
) -> None:
    fake, server = aha
    now = datetime.now(UTC)
    audits = [make_audit(i, now - timedelta(minutes=30 - i), records(i)) for i in range(12)]
    delivered = audits[:8]  # the last four never arrived as webhooks
    before = worker_events_in(stack)
    for audit in delivered:
        assert post(stack.webhook_url(), audit)
    fake.add(*audits)
    config = with_account(stack, server, tmp_path)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
    env["AHA_SIEM_AHA__ACCOUNTS__0__API_KEY"] = API_KEY
    # --resend-seen sends the overlap too: only the worker's dedupe keeps it from the sink.
    done = subprocess.run(
        [
            sys.executable, "-m", "forwarder", "backfill", "-c", str(config_path),
            "--since", (now - timedelta(hours=1)).isoformat(), "--resend-seen",
        ],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "injected: 12" in done.stdout
    ids = [audit["id"] for audit in audits]
    counts = wait_for(stack, ids, consumed=before + len(delivered) + len(audits))
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


async def test_reconcile_after_an_ingest_outage_brings_every_missed_audit_once(
    stack: Stack, aha: tuple[FakeAhaApi, AsgiServer], tmp_path: Path
) -> None:
    fake, server = aha
    config = with_account(stack, server, tmp_path)
    # An ingest of our own on the stack's topics, so it can be stopped for a while.
    tree = yaml.safe_load(stack.config_path.read_text())
    tree["ingest"]["port"] = free_port()
    tree["ingest"]["spool"]["directory"] = str(tmp_path / "spool")
    ingest_config = tmp_path / "ingest.yaml"
    ingest_config.write_text(yaml.safe_dump(tree))
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
    base = f"http://127.0.0.1:{tree['ingest']['port']}"
    log_path = tmp_path / "ingest.log"

    def start_ingest() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "forwarder", "ingest", "--config", str(ingest_config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_http_ok(f"{base}/readyz", [process], {"ingest": log_path})
        return process

    before = worker_events_in(stack)
    ingest = start_ingest()
    url = f"{base}/v1/aha/{stack.token}"
    audits, delivered = [], []
    try:
        # A stream of Aha! activity; the ingest is down for the middle third of it.
        for i in range(30):
            if i == 10:
                ingest.terminate()
                ingest.wait(30)
            if i == 20:
                ingest = start_ingest()
            audit = make_audit(1000 + i, datetime.now(UTC), records(1000 + i))
            audits.append(audit)
            fake.add(audit)
            if post(url, audit):
                delivered.append(audit["id"])
            await asyncio.sleep(0.05)
    finally:
        ingest.terminate()
        ingest.wait(30)
    missed = [audit["id"] for audit in audits if audit["id"] not in delivered]
    assert len(missed) == 10  # Aha! does not retry: these are lost at the source

    registry = CollectorRegistry()
    accounts = list(config.aha.accounts)
    assert await reconcile.run(config, accounts, once=True, registry=registry) == 0

    def sample(name: str) -> float:
        return registry.get_sample_value(name, {"account": "acme"}) or 0.0

    # Earlier tests of this module added audits to the fake too; all of them are in the topic.
    assert sample("aha_siem_reconcile_missing_total") == len(missed)
    assert sample("aha_siem_reconcile_last_success_timestamp_seconds") > time.time() - 60
    assert (
        registry.get_sample_value(
            "aha_siem_reconcile_runs_total", {"account": "acme", "outcome": "success"}
        )
        == 1.0
    )
    ids = [audit["id"] for audit in audits]
    counts = wait_for(stack, ids, consumed=before + len(audits))
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)

    # A second run finds nothing missing and injects nothing.
    second = CollectorRegistry()
    assert await reconcile.run(config, accounts, once=True, registry=second) == 0
    assert second.get_sample_value("aha_siem_reconcile_missing_total", {"account": "acme"}) == 0
    checked = second.get_sample_value("aha_siem_reconcile_checked_total", {"account": "acme"})
    assert checked is not None and checked >= len(audits)
    await asyncio.sleep(2.0)
    assert worker_events_in(stack) == before + len(audits)
    counts = shipped_ids(stack.events_file)
    assert {i: counts[i] for i in ids} == dict.fromkeys(ids, 1)


def shipped_events(events_file: Path) -> list[dict[str, Any]]:
    if not events_file.exists():
        return []
    return [orjson.loads(line) for line in events_file.read_bytes().splitlines() if line.strip()]


async def test_reconcile_with_the_webhooks_filters_injects_only_what_the_webhook_would_send(
    stack: Stack, tmp_path: Path
) -> None:
    """Done when: with filters configured, reconcile against the fake API (documented shapes)
    injects only what a filtered webhook would have sent."""
    # The account's activity webhook sends workspace DEMO, features and requirements, changes
    # to Workflow status or Estimate, by Priya (e-mail) or Jonas (id).
    filters = FiltersConfig(
        workspaces=("DEMO",),
        record_types=("feature", "requirement"),
        fields=("Workflow status", "Estimate"),
        users=("p@example.com", "6514079921178334209"),
    )
    # make_audit's author is Priya, p@example.com.
    jonas = {"id": "6514079921178334209", "name": "Jonas Düring", "email": "j@example.com"}
    mallory = {"id": "42", "name": "Mallory", "email": "mallory@example.com"}
    status = {"field_name": "Workflow status", "value": "Ready &rarr; Done"}
    name = {"field_name": "Name", "value": "Renamed"}
    # (what the audit is, how it differs from a DEMO feature's status change by Priya, whether
    # the filtered webhook sends it, and whether it arrived), written out rather than computed.
    cases: list[tuple[str, dict[str, Any], bool, bool]] = [
        ("status by Priya", {}, True, True),
        ("status and name by Jonas", {"user": jonas, "changes": [status, name]}, True, False),
        (
            "estimate of a requirement",
            {"auditable_type": "requirement", "changes": [{"field_name": "Estimate", "value": 3}]},
            True,
            False,
        ),
        (
            "Mallory's, with Jonas merged in",
            {"user": mallory, "contributors": [mallory, jonas]},
            True,
            False,
        ),
        ("in workspace OPS", {"workspace": "OPS"}, False, False),
        ("a release", {"auditable_type": "release"}, False, False),
        ("only the name", {"changes": [name]}, False, False),
        ("by Mallory", {"user": mallory}, False, False),
        ("by the system", {"user": None}, False, False),
        (
            "no workspace to read",
            {"auditable_url": None, "description": "updated it"},
            False,
            False,
        ),
        ("estimate by Priya", {"changes": [{"field_name": "Estimate", "value": 8}]}, True, True),
    ]
    fake = FakeAhaApi(API_KEY, per_second=None, per_minute=None)
    before = worker_events_in(stack)
    audits: dict[str, dict[str, Any]] = {}
    sent, arrived = set(), set()
    for index, (label, changes, webhook_sends, delivered) in enumerate(cases):
        audit = make_audit(2000 + index, datetime.now(UTC), records(2000 + index))
        workspace = changes.pop("workspace", "DEMO")
        audit["auditable_url"] = f"https://acme.aha.io/features/{workspace}-{2000 + index}"
        audit["description"] = f"updated feature {workspace}-{2000 + index} {label}"
        audit["changes"] = [status]
        audit.update(changes)
        audits[audit["id"]] = audit
        if webhook_sends:
            sent.add(audit["id"])
            if delivered:
                assert post(stack.webhook_url(), audit)
                arrived.add(audit["id"])
    fake.add(*audits.values())
    missed = sent - arrived
    assert len(missed) == 3

    with AsgiServer(fake) as server:
        config = with_account(stack, server, tmp_path, filters)
        registry = CollectorRegistry()
        accounts = list(config.aha.accounts)
        assert await reconcile.run(config, accounts, once=True, registry=registry) == 0

        def sample(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, {"account": "acme", **labels}) or 0.0

        assert sample("aha_siem_reconcile_missing_total") == len(missed)
        assert sample("aha_siem_reconcile_checked_total") == len(cases)
        # The API's shape of the two that arrived by webhook is the same audit, not a revision.
        assert sample("aha_siem_reconcile_changed_total") == 0
        skipped = {
            reason: sample("aha_siem_reconcile_skipped_total", reason=reason)
            for reason in reconcile.SKIP_REASONS
        }
        assert skipped == {
            "seen": 2.0,
            "workspace": 1.0,
            "workspace_unknown": 1.0,
            "record_type": 1.0,
            "field": 1.0,
            "user": 2.0,
            "duplicate": 0.0,
            "refused": 0.0,
        }
        counts = wait_for(stack, sorted(sent), consumed=before + len(sent))
        # Every audit the webhook would have sent reached the sink once; none it would not have.
        assert {i: counts[i] for i in audits if counts[i]} == dict.fromkeys(sent, 1)
        # The injected ones are plain audits, not collations (the API lists the author as a
        # contributor of each); the one with Jonas merged in names him.
        events = {
            event["event"]["id"]: event
            for event in shipped_events(stack.events_file)
            if event["event"]["id"] in missed
        }
        assert set(events) == missed
        for audit_id, event in events.items():
            merged_in = audits[audit_id].get("contributors")
            assert ("collation" in event["aha"]) == bool(merged_in), audit_id
        assert all(
            {"Jonas Düring", "6514079921178334209"} <= set(event["related"]["user"])
            for audit_id, event in events.items()
            if audits[audit_id].get("contributors")
        )

        # A second run injects nothing; the excluded audits do not count as missing again.
        second = CollectorRegistry()
        assert await reconcile.run(config, accounts, once=True, registry=second) == 0
        assert second.get_sample_value("aha_siem_reconcile_missing_total", {"account": "acme"}) == 0
        assert second.get_sample_value(
            "aha_siem_reconcile_skipped_total", {"account": "acme", "reason": "seen"}
        ) == len(sent)
    await asyncio.sleep(2.0)
    assert worker_events_in(stack) == before + len(sent)
