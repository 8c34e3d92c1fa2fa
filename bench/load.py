"""Load generators: `wrk` with a Lua script when installed, else an asyncio httpx client.

`python -m bench.load URL SECONDS CONNECTIONS` is the httpx fallback, run in its own process;
both print one result as JSON: requests, seconds, p50_ms, p99_ms, errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import sample_bodies

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "seconds": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def generator_name() -> str:
    """`wrk <version>` when wrk is on PATH, else `httpx`."""
    if shutil.which("wrk") is None:
        return "httpx"
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"wrk\s+(\S+)", out)
    return f"wrk {found.group(1)}" if found else "wrk"


def _lua_long_string(body: bytes) -> str:
    level = 1
    while f"]{'=' * level}]".encode() in body:
        level += 1
    return f"[{'=' * level}[{body.decode()}]{'=' * level}]"


def write_wrk_script(path: Path) -> Path:
    """A wrk script that POSTs the sample bodies in turn and prints its summary as JSON."""
    bodies = ",\n  ".join(_lua_long_string(body) for body in sample_bodies())
    path.write_text(
        f"local bodies = {{\n  {bodies}\n}}\nlocal i = 0\n"
        'local headers = {["Content-Type"] = "application/json"}\n'
        "request = function()\n  i = i % #bodies + 1\n"
        '  return wrk.format("POST", nil, headers, bodies[i])\nend\n' + _DONE
    )
    return path


def run(url: str, seconds: float, connections: int, wrk_script: Path | None) -> dict[str, Any]:
    """One load run against `url` in a separate process; the generator's JSON result."""
    if wrk_script is not None:
        threads = str(min(os.cpu_count() or 1, 4))
        cmd = ["wrk", "-t", threads, "-c", str(connections), "-d", f"{seconds:g}s"]
        cmd += ["--timeout", "5s", "-s", str(wrk_script), url]
    else:
        cmd = [sys.executable, "-m", "bench.load", url, str(seconds), str(connections)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            result: dict[str, Any] = json.loads(line[len("BENCH ") :])
            result["rps"] = (result["requests"] - result["errors"]) / result["seconds"]
            return result
    raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stdout}{proc.stderr}")


async def _httpx_load(url: str, seconds: float, connections: int) -> dict[str, Any]:
    import httpx

    bodies = sample_bodies()
    latencies: list[float] = []
    errors = 0
    headers = {"content-type": "application/json"}
    # One client (one keep-alive connection) per simulated user: a single shared pool scales
    # badly with 64 concurrent requests and would measure httpx rather than the server.
    clients = [httpx.AsyncClient(timeout=5.0) for _ in range(connections)]
    started = time.perf_counter()
    deadline = started + seconds

    async def user(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal errors
        i = offset
        async with client:
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += 1
                sent = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    ok = response.status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - sent)
                errors += not ok

    await asyncio.gather(*(user(client, n) for n, client in enumerate(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else 0

    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "errors": errors,
    }


if __name__ == "__main__":
    import uvloop

    url, seconds, connections = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    print("BENCH " + json.dumps(uvloop.run(_httpx_load(url, seconds, connections))))
