"""Apache Kafka (single-node KRaft) from the official jars on Maven Central."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

DEFAULT_VERSION = "4.1.1"
POM = Path(__file__).with_name("pom.xml")
_MARKER = ".complete"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class KafkaSetupError(Exception):
    """Fetching the jars or formatting the storage failed."""


def kafka_version() -> str:
    """The Kafka version to run: ``$AHA_SIEM_KAFKA_VERSION`` or the pinned default."""
    return os.environ.get("AHA_SIEM_KAFKA_VERSION", "").strip() or DEFAULT_VERSION


def cache_root() -> Path:
    """``$AHA_SIEM_CACHE``, else ``$XDG_CACHE_HOME/aha-siem``, else ``~/.cache/aha-siem``."""
    explicit = os.environ.get("AHA_SIEM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "aha-siem"


def libs_dir(version: str | None = None) -> Path:
    """Where the jars of one Kafka version live."""
    return cache_root() / f"kafka-{version or kafka_version()}" / "libs"


def libs_complete(version: str | None = None) -> bool:
    """True when a previous fetch of this version finished (marker written last)."""
    return jars_complete(libs_dir(version).parent, "kafka_2.13-*.jar")


def jars_complete(home: Path, expect: str) -> bool:
    """Whether `home/libs` holds a finished Maven fetch: the marker, and a jar matching `expect`."""
    return (home / _MARKER).is_file() and any((home / "libs").glob(expect))


class MavenFetchError(Exception):
    """`mvn dependency:copy-dependencies` failed; the message ends with Maven's last lines."""


def fetch_jars(home: Path, pom: Path, properties: dict[str, str], expect: str) -> Path:
    """Copy the runtime dependencies of `pom` into `home/libs` once, and return that folder.

    Two test sessions may fetch at once: the second waits on a lock and then finds the marker,
    which is written last. Raises MavenFetchError, or FileNotFoundError without `mvn`.
    """
    libs = home / "libs"
    if jars_complete(home, expect):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FileNotFoundError("mvn")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_complete(home, expect):
            return libs
        (home / _MARKER).unlink(missing_ok=True)
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom)]
        cmd += [f"-D{name}={value}" for name, value in properties.items()]
        cmd += ["dependency:copy-dependencies", f"-DoutputDirectory={partial}"]
        cmd += ["-DincludeScope=runtime"]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0 or not any(partial.glob(expect)):
            shutil.rmtree(partial, ignore_errors=True)
            out = _ANSI.sub("", proc.stdout + proc.stderr).strip().splitlines()
            raise MavenFetchError(f"mvn exit {proc.returncode}:\n" + "\n".join(out[-40:]))
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        (home / _MARKER).write_text(" ".join(properties.values()) + "\n")
    return libs


def java_bin() -> str | None:
    """``$JAVA_HOME/bin/java`` if set and present, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def available() -> bool:
    """Kafka can run here: a JVM, and either cached jars or Maven to fetch them."""
    return java_bin() is not None and (libs_complete() or shutil.which("mvn") is not None)


def ensure_libs(version: str | None = None) -> Path:
    """Fetch Kafka's runtime jars once into the cache and return the libs folder."""
    version = version or kafka_version()
    libs = libs_dir(version)
    try:
        return fetch_jars(libs.parent, POM, {"kafka.version": version}, "kafka_2.13-*.jar")
    except FileNotFoundError:
        raise KafkaSetupError(
            f"Kafka {version} jars are not cached in {libs.parent} and `mvn` is not on PATH; "
            "install Maven (or a JDK + Maven), or use --kind tansu, or set KAFKA_BOOTSTRAP"
        ) from None
    except MavenFetchError as error:
        raise KafkaSetupError(
            f"fetching Kafka {version} from Maven Central failed ({error})"
        ) from None


def random_cluster_id() -> str:
    """A cluster id shaped like Kafka's ``Uuid.randomUuid().toString()``."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka rejects ids that look like a CLI flag; it re-draws them too.
        if not text.startswith("-"):
            return text


def properties(
    state_dir: Path,
    port: int,
    controller_port: int,
    proxied: tuple[int, int] | None = None,
) -> dict[str, str]:
    """The broker+controller configuration of one dev node.

    ``proxied`` is (listen port, advertised port): a second plaintext listener whose metadata
    names another port, so a client bootstrapped through a proxy on that port keeps every later
    connection on the proxy (Kafka answers with the address of the listener it was asked on).
    """
    data = (state_dir / "data").resolve()
    listeners = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    if proxied is not None:
        listeners.append(f"PROXIED://127.0.0.1:{proxied[0]}")
        advertised.append(f"PROXIED://127.0.0.1:{proxied[1]}")
        protocols.append("PROXIED:PLAINTEXT")
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(protocols),
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "8",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # The project creates its topics explicitly and Faust declares its own through the
        # admin API, so a typo in a topic name fails loudly instead of creating a topic.
        "auto.create.topics.enable": "false",
    }


def render_properties(props: dict[str, str]) -> str:
    """Java properties text; only backslashes can occur here that need escaping."""
    lines = ["# generated by forwarder.devbroker; rewritten on every start"]
    lines += [f"{key}={value}".replace("\\", "\\\\") for key, value in props.items()]
    return "\n".join(lines) + "\n"


def log4j2_config(log_file: Path) -> str:
    """A log4j2 properties config: INFO to a size-rolled file, noisy loggers at WARN."""
    path = str(log_file.resolve()).replace("\\", "/")
    quiet = {
        "controller": "org.apache.kafka.controller",
        "kcontroller": "kafka.controller",
        "raft": "org.apache.kafka.raft",
        "request": "kafka.request.logger",
        "reqchannel": "kafka.network.RequestChannel$",
        "statechange": "state.change.logger",
        "metadata": "org.apache.kafka.image.loader",
    }
    lines = [
        "status = warn",
        "name = aha-siem-devbroker",
        "appender.file.type = RollingFile",
        "appender.file.name = FILE",
        f"appender.file.fileName = {path}",
        f"appender.file.filePattern = {path}.%i",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "appender.file.policies.type = Policies",
        "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
        "appender.file.policies.size.size = 50MB",
        "appender.file.strategy.type = DefaultRolloverStrategy",
        "appender.file.strategy.max = 3",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = FILE",
    ]
    for key, name in quiet.items():
        lines += [f"logger.{key}.name = {name}", f"logger.{key}.level = WARN"]
    return "\n".join(lines) + "\n"


BROKER_JVM_OPTS = (
    "-Xms1g",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
)
# A short-lived tool: C1 only starts about a second faster on 2 cores.
TOOL_JVM_OPTS = ("-Xmx256m", "-XX:TieredStopAtLevel=1")


def java_command(
    libs: Path, log4j_file: Path, jvm_opts: tuple[str, ...], main: str, *args: str
) -> list[str]:
    """The JVM command line for a Kafka main class."""
    java = java_bin()
    if java is None:
        raise KafkaSetupError(
            "`java` is not on PATH (and JAVA_HOME is not set); Kafka needs JDK 17+"
        )
    return [
        java,
        *jvm_opts,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j_file.resolve()}",
        "-cp",
        f"{libs.resolve()}/*",
        main,
        *args,
    ]


def prepare(
    state_dir: Path, port: int, controller_port: int, proxied: tuple[int, int] | None = None
) -> tuple[list[str], Path]:
    """Fetch jars, write configs, format storage once; return (broker command, log file)."""
    libs = ensure_libs()
    conf_dir = state_dir / "kafka"
    conf_dir.mkdir(parents=True, exist_ok=True)
    props_file = conf_dir / "server.properties"
    log4j_file = conf_dir / "log4j2.properties"
    log_file = conf_dir / "server.log"
    props_file.write_text(render_properties(properties(state_dir, port, controller_port, proxied)))
    log4j_file.write_text(log4j2_config(log_file))

    data = state_dir / "data"
    # Formatted once so topics survive restarts; restarting on other ports works too
    # (checked: the lone voter leads itself whatever endpoint was recorded at format).
    if not (data / "meta.properties").is_file():
        data.mkdir(parents=True, exist_ok=True)
        cmd = java_command(
            libs, log4j_file, TOOL_JVM_OPTS, "kafka.tools.StorageTool",
            "format", "--standalone", "-t", random_cluster_id(), "-c", str(props_file.resolve()),
        )  # fmt: skip
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        (conf_dir / "format.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip().splitlines()
            raise KafkaSetupError(
                f"kafka-storage format failed (exit {proc.returncode}):\n" + "\n".join(out[-40:])
            )
    return java_command(
        libs, log4j_file, BROKER_JVM_OPTS, "kafka.Kafka", str(props_file.resolve())
    ), log_file
