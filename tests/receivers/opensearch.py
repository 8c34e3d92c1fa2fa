"""A real OpenSearch node for tests: one node, HTTP on a free port of 127.0.0.1, no security.

Built from the official jars on Maven Central the way the Kafka harness is
(`forwarder.devbroker.kafka`): `opensearch_node/pom.xml` is fetched once with
`mvn dependency:copy-dependencies` into `~/.cache/aha-siem/opensearch-<version>/` (or
`$AHA_SIEM_CACHE`), and `opensearch_node/AhaOpenSearchNode.java`, a `Node` that carries the
Netty 4 transport as a classpath plugin, is compiled there with `javac` at first use. The node
runs with a 512 MB heap, `discovery.type=single-node` and its home, data and log in a folder of
its own; it starts in a few seconds.

    with OpenSearch(tmp_path) as node:
        httpx.get(f"{node.url}/_cluster/health")

Needs a JDK 17 (`java`, `javac`) and, until the jars are cached, Maven (`mvn`).
`AHA_SIEM_OPENSEARCH_VERSION` picks another 2.19.x (3.x needs Java 21).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx

from forwarder.devbroker.kafka import (
    MavenFetchError,
    cache_root,
    fetch_jars,
    jars_complete,
    java_bin,
)

DEFAULT_VERSION = "2.19.6"
NODE_SOURCES = Path(__file__).with_name("opensearch_node")
POM = NODE_SOURCES / "pom.xml"
NODE_SOURCE = NODE_SOURCES / "AhaOpenSearchNode.java"
NODE_CLASS = "AhaOpenSearchNode"
# A jar the last dependency added to the POM brings: a cache fetched before it is fetched again.
LIBS_EXPECT = "ingest-common-2*.jar"
JVM_OPTS = (
    "-Xms512m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    # As the distribution's jvm.options for Java 17 has them.
    "-Djava.locale.providers=SPI,COMPAT",
    "-Dio.netty.noUnsafe=true",
    "-Dio.netty.noKeySetOptimization=true",
    "-Dio.netty.recycler.maxCapacityPerThread=0",
    "-Dlog4j.shutdownHookEnabled=false",
    "-Dlog4j2.disable.jmx=true",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class OpenSearchSetupError(Exception):
    """Fetching the jars, compiling the node or starting it failed."""


def opensearch_version() -> str:
    """``$AHA_SIEM_OPENSEARCH_VERSION`` or the pinned default."""
    return os.environ.get("AHA_SIEM_OPENSEARCH_VERSION", "").strip() or DEFAULT_VERSION


def home_dir(version: str | None = None) -> Path:
    """The cache folder of one OpenSearch version: `libs/` and the compiled node."""
    return cache_root() / f"opensearch-{version or opensearch_version()}"


def libs_complete(version: str | None = None) -> bool:
    """True when a previous fetch of this version finished (marker written last)."""
    return jars_complete(home_dir(version), LIBS_EXPECT)


def javac_bin() -> str | None:
    """``$JAVA_HOME/bin/javac`` if set and present, else ``javac`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "javac", os.X_OK):
        return str(Path(home) / "bin" / "javac")
    return shutil.which("javac")


def missing() -> str | None:
    """Why no node can run here (no JDK, or no Maven and nothing cached), else None."""
    if java_bin() is None:
        return "`java` is not on PATH (and JAVA_HOME is not set): the OpenSearch node needs JDK 17"
    if javac_bin() is None:
        return "`javac` is not on PATH: the OpenSearch node is compiled at first use (a JDK 17)"
    if not libs_complete() and shutil.which("mvn") is None:
        return f"the OpenSearch jars are not cached in {home_dir()} and `mvn` is not on PATH"
    return None


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(_ANSI.sub("", text).strip().splitlines()[-lines:])


def ensure_libs(version: str | None = None) -> Path:
    """Fetch the node's runtime jars once into the cache and return the libs folder."""
    version = version or opensearch_version()
    properties = {"opensearch.version": version}
    try:
        return fetch_jars(home_dir(version), POM, properties, LIBS_EXPECT)
    except FileNotFoundError:
        raise OpenSearchSetupError(
            f"OpenSearch {version} jars not cached and `mvn` not on PATH"
        ) from None
    except MavenFetchError as error:
        raise OpenSearchSetupError(
            f"fetching OpenSearch {version} from Maven Central failed ({error})"
        ) from None


def ensure_node_class(version: str | None = None) -> Path:
    """Compile `AhaOpenSearchNode.java` against the jars once per source; the classes folder."""
    version = version or opensearch_version()
    libs = ensure_libs(version)
    source = NODE_SOURCE.read_bytes()
    home = home_dir(version)
    classes = home / f"classes-{hashlib.sha256(source).hexdigest()[:12]}"
    if (classes / f"{NODE_CLASS}.class").is_file():
        return classes
    javac = javac_bin()
    if javac is None:
        raise OpenSearchSetupError("`javac` is not on PATH: a JDK 17 is needed")
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (classes / f"{NODE_CLASS}.class").is_file():
            return classes
        partial = home / "classes.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        cmd = [
            javac, "--release", "17", "-encoding", "UTF-8", "-d", str(partial),
            "-cp", f"{libs.resolve()}/*", str(NODE_SOURCE),
        ]  # fmt: skip
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise OpenSearchSetupError(
                f"compiling {NODE_SOURCE.name} failed (javac exit {proc.returncode}):\n"
                + _tail(proc.stdout + proc.stderr)
            )
        partial.rename(classes)
    return classes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log4j2_config(log_file: Path) -> str:
    """The node's log4j2.properties: INFO to one file (OpenSearch reads it from its config dir)."""
    path = str(log_file.resolve()).replace("\\", "/")
    return "\n".join(
        [
            "status = error",
            "appender.file.type = File",
            "appender.file.name = file",
            f"appender.file.fileName = {path}",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d{ISO8601}][%-5p][%c{1.}] %marker%m%n",
            "rootLogger.level = info",
            "rootLogger.appenderRef.file.ref = file",
            # Every index creation and mapping update otherwise logs a line.
            "logger.metadata.name = org.opensearch.cluster.metadata",
            "logger.metadata.level = warn",
            "",
        ]
    )


class OpenSearch:
    """One OpenSearch node process with its own home folder and ports."""

    def __init__(self, root: Path, *, version: str | None = None) -> None:
        self.root = root.resolve()
        self.version = version or opensearch_version()
        self.log_file = self.root / "logs" / "opensearch.log"
        self.stdout_file = self.root / "stdout.log"
        self.port = 0
        self.transport_port = 0
        self.started_in: float | None = None
        """Seconds from spawning the JVM to a green or yellow cluster health."""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's HTTP address."""
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> dict[str, str]:
        """The node settings, passed as `key=value` arguments to `AhaOpenSearchNode`."""
        return {
            "cluster.name": "aha-siem-test",
            "node.name": "aha-siem-test",
            "path.home": str(self.root),
            "path.data": str(self.root / "data"),
            "path.logs": str(self.root / "logs"),
            "discovery.type": "single-node",
            "http.type": "netty4",
            "transport.type": "netty4",
            "network.host": "127.0.0.1",
            "http.port": str(self.port),
            "transport.port": str(self.transport_port),
            # One node: replicas could never be assigned, and health would stay yellow.
            "cluster.default_number_of_replicas": "0",
            # A nearly full disk of a shared machine must not turn indices read-only mid-test.
            "cluster.routing.allocation.disk.threshold_enabled": "false",
        }

    def command(self, classes: Path, libs: Path) -> list[str]:
        java = java_bin()
        if java is None:
            raise OpenSearchSetupError("`java` is not on PATH: a JDK 17 is needed")
        args = [f"{key}={value}" for key, value in self.settings().items()]
        classpath = f"{classes.resolve()}{os.pathsep}{libs.resolve()}/*"
        # The node exits by itself should this process die without stopping it.
        parent = f"-Daha.siem.parent.pid={os.getpid()}"
        return [java, *JVM_OPTS, parent, "-cp", classpath, NODE_CLASS, *args]

    def start(self, timeout: float = 180.0) -> None:
        """Start the node and return once its cluster health is green or yellow.

        A port taken between choosing it and binding it is chosen again (up to three times).
        """
        if self._process is not None:
            raise RuntimeError("the OpenSearch node is already running")
        classes = ensure_node_class(self.version)
        libs = ensure_libs(self.version)
        config = self.root / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "log4j2.properties").write_text(log4j2_config(self.log_file))
        for attempt in range(3):
            self.port, self.transport_port = free_port(), free_port()
            try:
                self._spawn(self.command(classes, libs), timeout)
                return
            except OpenSearchSetupError as error:
                if attempt == 2 or "BindException" not in str(error):
                    raise

    def _spawn(self, command: list[str], timeout: float) -> None:
        started = time.monotonic()
        with self.stdout_file.open("ab") as out:
            # Its own process group: stop() signals the JVM and anything it started.
            self._process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = started + timeout
        with httpx.Client(timeout=5) as client:
            while True:
                if self._process.poll() is not None:
                    code = self._process.returncode
                    self._process = None
                    raise OpenSearchSetupError(
                        f"the OpenSearch node exited with {code} at start:\n{self.output()}"
                    )
                try:
                    answer = client.get(f"{self.url}/_cluster/health")
                    if answer.status_code == 200 and answer.json().get("status") in (
                        "green",
                        "yellow",
                    ):
                        self.started_in = time.monotonic() - started
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise OpenSearchSetupError(
                        f"the OpenSearch node was not ready in {timeout:.0f}s:\n{self.output()}"
                    )
                time.sleep(0.2)

    def output(self, lines: int = 60) -> str:
        """The end of the node's log and of its stdout/stderr, for failure messages."""
        parts = []
        for path in (self.log_file, self.stdout_file):
            if path.is_file():
                parts.append(f"--- {path}\n{_tail(path.read_text(errors='replace'), lines)}")
        return "\n".join(parts)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node (SIGTERM to its process group, then SIGKILL) and wait until it is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        process.wait()

    def __enter__(self) -> OpenSearch:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
