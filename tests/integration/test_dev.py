"""`aha-siem dev` (what `make run` runs): comes up, its printed curl lands an event, Ctrl-C stops all."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Stdout up to the first line matching `pattern`."""
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()  # type: ignore[union-attr]
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen += lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        if re.search(pattern, seen):
            return seen
    raise AssertionError(f"no {pattern!r} within {timeout}s; output so far:\n{seen}")


def test_dev_prints_a_curl_that_lands_an_event_and_ctrl_c_stops_everything(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    state = tmp_path / "dev"
    port, metrics_port = free_port(), free_port()
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PYTHONUNBUFFERED": "1",
        # A shared cluster may have seen the sample before: topics and group of this run only.
        "AHA_SIEM_TOPICS__RAW": f"dev{run}.raw",
        "AHA_SIEM_TOPICS__INVALID": f"dev{run}.invalid",
        "AHA_SIEM_TOPICS__EVENTS": f"dev{run}.events",
        "AHA_SIEM_TOPICS__DLQ_PREFIX": f"dev{run}.dlq.",
        "AHA_SIEM_WORKER__APP_ID": f"dev-{run}",
    }
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forwarder",
            "dev",
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "dev.stderr", "wb"),  # noqa: SIM115 - closed with the process
        text=True,
        env=env,
        start_new_session=True,  # so a failed test can stop the whole tree
    )
    try:
        try:
            banner = read_until(dev, r"Press Ctrl-C", timeout=120)
        except AssertionError as error:
            raise AssertionError(
                f"{error}\nstderr:\n{(tmp_path / 'dev.stderr').read_text()[-3000:]}"
            ) from None
        curl = re.search(r"(curl .*?/v1/aha/\S+)", banner.replace("\\\n", " "), re.S)
        assert curl, banner
        answer = subprocess.run(
            curl.group(1), shell=True, capture_output=True, text=True, timeout=30
        )
        assert orjson.loads(answer.stdout)["status"] == "accepted", answer

        events_file = state / "events.ndjson"
        assert str(events_file) in banner
        deadline = time.monotonic() + 60
        lines: list[bytes] = []
        while time.monotonic() < deadline and not lines:
            lines = events_file.read_bytes().splitlines() if events_file.exists() else []
            time.sleep(0.3)
        assert lines, "no event reached the file sink"
        event = orjson.loads(lines[-1])
        assert event["event"]["id"] == "7712852070579044363"
        assert event["organization"]["id"] == "dev"

        children = subprocess.run(
            ["pgrep", "-P", str(dev.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2
        dev.send_signal(signal.SIGINT)
        assert dev.wait(60) == 0
        for pid in children:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text()
            )
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
