"""`aha-siem backfill` on the real broker: killed mid-run, then resumed from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from forwarder import records
from forwarder.config import parse
from tests.fakes.aha_api import FakeAhaApi, make_audit
from tests.fakes.server import AsgiServer
from tests.integration.kafka_io import read_topic

pytestmark = pytest.mark.integration

SINCE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
UNTIL = SINCE + timedelta(days=1)


def backfill(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
    env["AHA_SIEM_AHA__ACCOUNTS__0__API_KEY"] = "aha-test-key"
    return subprocess.Popen(
        [sys.executable, "-m", "forwarder", "backfill", "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def test_a_killed_backfill_resumes_and_sends_each_audit_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    fake = FakeAhaApi(per_second=None, per_minute=None)
    step = (UNTIL - SINCE) / 150
    audits = [make_audit(index, SINCE + step * index) for index in range(150)]
    fake.add(*audits)
    run = uuid.uuid4().hex[:8]
    with AsgiServer(fake) as server:
        tree: dict[str, Any] = {
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "topics": {
                "raw": f"t{run}.aha.audit.raw",
                "invalid": f"t{run}.aha.audit.invalid",
                "events": f"t{run}.aha.audit.events",
                "partitions": 2,
            },
            "ingest": {"tokens": [{"name": "acme-prod", "sha256": "a" * 64, "account": "acme"}]},
            "aha": {
                "checkpoint_dir": str(tmp_path / "checkpoints"),
                "accounts": [
                    {
                        "name": "acme",
                        "base_url": server.url,
                        "per_page": 20,
                        "max_retries": 0,
                        "rate_limit": {"requests_per_second": 20, "burst": 20},
                    }
                ],
            },
        }
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(tree))
        config = parse(tree)
        args = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]

        # Crash for real: SIGKILL while the fourth page is being asked for.
        process: dict[str, subprocess.Popen[str]] = {}

        def kill_on_fourth_page(query: dict[str, str]) -> None:
            if query.get("page") == "4":
                process["first"].send_signal(signal.SIGKILL)
                process["first"].wait(30)

        fake.on_page = kill_on_fourth_page
        process["first"] = backfill(config_path, *args)
        process["first"].wait(120)
        assert process["first"].returncode == -signal.SIGKILL, process["first"].communicate()
        saved = list((tmp_path / "checkpoints").glob("acme-*.json"))
        assert len(saved) == 1
        state = orjson.loads(saved[0].read_bytes())
        assert (state["page"], state["injected"]) == (4, 60)

        # Resume without reading the raw topic: only the checkpoint stands between us and
        # sending pages 1-3 again.
        fake.on_page = None
        fake.requests.clear()
        second = backfill(config_path, *args, "--resend-seen")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        assert fake.page_requests()[0] == 4
        assert "resumed from" in out and "injected: 150" in out
        assert not saved[0].exists()

    found = await read_topic(kafka_bootstrap, config.topics.raw, expected=150, timeout=60)
    ids = Counter(orjson.loads(record.value)["audit"]["id"] for record in found)
    assert ids == Counter(audit["id"] for audit in audits)
    for record in found:
        body = orjson.loads(record.value)
        assert record.headers["source"] == "backfill"
        assert record.headers["token-id"] == "acme-prod"
        assert record.key == records.record_key(body, record.headers["body-sha256"])
        # The webhook's audit, plus the contributors the API lists on every audit (the author).
        listed = body["audit"].pop("contributors")
        assert body["audit"] in audits
        assert listed == [body["audit"]["user"]]
