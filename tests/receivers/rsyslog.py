"""A real rsyslogd for tests: UDP, TCP, TLS and mutual-TLS inputs on free ports of 127.0.0.1.

Each input writes what it receives to its own file, one message per line, with the template
`%rawmsg%`: the message exactly as it arrived, framing removed (octet count, trailing LF). Control
characters are kept as they are (`parser.escapeControlCharactersOnReceive="off"`), so a received
line can be compared byte for byte with what was sent. A second file per input holds what
rsyslog's parser made of each message (`parsed()`: HOSTNAME, TAG, program name, MSG).

    with Rsyslog(tmp_path) as receiver:
        ... send to receiver.tcp_port ...
        lines = await receiver.wait_for_lines("tcp", 3)

Needs the Debian packages rsyslog and rsyslog-gnutls (`RSYSLOGD` names another binary).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import trustme

INPUTS = ("udp", "tcp", "tls", "mtls")
# Large enough for every test message; the sink's own limit is tested separately.
MAX_MESSAGE_SIZE = 256 * 1024
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def rsyslogd_path() -> str | None:
    """The rsyslogd binary to run, or None when rsyslog is not installed."""
    return os.environ.get("RSYSLOGD") or shutil.which("rsyslogd", path=_SEARCH_PATH)


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP right now."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def _listening(port: int, table: str, state: str | None) -> bool:
    # /proc/net/{tcp,udp}: "sl local_address rem_address st ..." with addresses as HEX:PORT.
    try:
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        local, st = fields[1], fields[3]
        if int(local.rsplit(":", 1)[1], 16) == port and (state is None or st == state):
            return True
    return False


class Rsyslog:
    """An rsyslogd process with its own config, certificates, output files and ports."""

    def __init__(
        self,
        root: Path,
        *,
        ca: trustme.CA | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        binary = rsyslogd_path()
        if binary is None:
            raise RuntimeError("rsyslogd is not installed: apt-get install rsyslog rsyslog-gnutls")
        self.binary = binary
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_message_size = max_message_size
        self.ca = ca or trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("forwarder.test")
        self.ca_file = self.root / "ca.pem"
        self.cert_file = self.root / "server.pem"
        self.key_file = self.root / "server.key"
        self.client_cert_file = self.root / "client.pem"
        self.client_key_file = self.root / "client.key"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        server.private_key_pem.write_to_path(str(self.key_file))
        client.cert_chain_pems[0].write_to_path(str(self.client_cert_file))
        client.private_key_pem.write_to_path(str(self.client_key_file))
        self.ports = {name: free_port() for name in INPUTS}
        self.config_file = self.root / "rsyslog.conf"
        self.pid_file = self.root / "rsyslogd.pid"
        self.log_file = self.root / "rsyslogd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def udp_port(self) -> int:
        """Port of the imudp input."""
        return self.ports["udp"]

    @property
    def tcp_port(self) -> int:
        """Port of the plain imtcp input (octet counting and LF framing, told apart per frame)."""
        return self.ports["tcp"]

    @property
    def tls_port(self) -> int:
        """Port of the TLS imtcp input (server certificate only)."""
        return self.ports["tls"]

    @property
    def mtls_port(self) -> int:
        """Port of the TLS imtcp input that requires a client certificate signed by `ca`."""
        return self.ports["mtls"]

    def output(self, name: str) -> Path:
        """The file input `name` (udp, tcp, tls, mtls) writes its messages to."""
        return self.root / f"{name}.out"

    def parsed_output(self, name: str) -> Path:
        """The file input `name` writes rsyslog's reading of each message to."""
        return self.root / f"{name}.parsed"

    def _write_config(self) -> None:
        rulesets = "\n".join(
            f'ruleset(name="{name}") {{ action(type="omfile" file="{self.output(name)}" '
            f'template="raw" flushOnTXEnd="on") '
            f'action(type="omfile" file="{self.parsed_output(name)}" '
            f'template="parsed" flushOnTXEnd="on") }}'
            for name in INPUTS
        )
        tls = 'streamDriver.name="gtls" streamDriver.mode="1"'
        config = f"""
global(
  workDirectory="{self.root}"
  maxMessageSize="{self.max_message_size}"
  parser.escapeControlCharactersOnReceive="off"
  defaultNetstreamDriverCAFile="{self.ca_file}"
  defaultNetstreamDriverCertFile="{self.cert_file}"
  defaultNetstreamDriverKeyFile="{self.key_file}"
)
module(load="imudp")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\\n")
template(name="parsed" type="string" string="%hostname%\\t%syslogtag%\\t%programname%\\t%msg%\\n")
{rulesets}
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="tls"
      {tls} streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{self.mtls_port}" ruleset="mtls"
      {tls} streamDriver.authMode="x509/certvalid")
"""
        self.config_file.write_text(config)

    def start(self, timeout: float = 20.0) -> None:
        """Start rsyslogd and return once every input listens."""
        if self._process is not None:
            raise RuntimeError("rsyslogd is already running")
        log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [self.binary, "-n", "-f", str(self.config_file), "-i", str(self.pid_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._all_listening():
            if self._process.poll() is not None:
                self._process = None
                output = self.log_file.read_text()
                hint = "\n(TLS needs the package rsyslog-gnutls)" if "gtls" in output else ""
                raise RuntimeError(f"rsyslogd exited at start:\n{output}{hint}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not listen in time:\n{self.log_file.read_text()}")
            time.sleep(0.05)

    def _all_listening(self) -> bool:
        tcp_listen = "0A"
        return _listening(self.udp_port, "udp", None) and all(
            _listening(self.ports[name], "tcp", tcp_listen) for name in ("tcp", "tls", "mtls")
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop rsyslogd (SIGTERM, then SIGKILL) and return once it is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)  # a paused process handles SIGTERM only once resumed
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def pause(self) -> None:
        """Freeze rsyslogd (SIGSTOP): it stops reading, so senders meet back-pressure."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused rsyslogd run again (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same ports and files."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether this helper's rsyslogd is running."""
        return self._process is not None and self._process.poll() is None

    def lines(self, name: str) -> list[bytes]:
        """What input `name` received so far: one entry per message, in arrival order."""
        try:
            data = self.output(name).read_bytes()
        except FileNotFoundError:
            return []
        # A line is only complete with its LF; rsyslog may be half-way through writing one.
        return data.split(b"\n")[:-1]

    def parsed(self, name: str) -> list[tuple[str, str, str, bytes]]:
        """rsyslog's reading of each message input `name` received: (HOSTNAME, TAG with its
        colon, program name, MSG), in arrival order."""
        try:
            data = self.parsed_output(name).read_bytes()
        except FileNotFoundError:
            return []
        readings = []
        for line in data.split(b"\n")[:-1]:
            hostname, tag, program, msg = line.split(b"\t", 3)
            readings.append((hostname.decode(), tag.decode(), program.decode(), msg))
        return readings

    async def wait_for_lines(self, name: str, count: int, timeout: float = 15.0) -> list[bytes]:
        """The messages of input `name` once there are at least `count` (or what came in time)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines(name)
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            await asyncio.sleep(0.05)

    def __enter__(self) -> Rsyslog:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
