"""A dependency-free Kafka readiness probe: one Metadata request over a plain socket.

Synchronous on purpose: ``start()`` may be called from inside a running event loop
(pytest-asyncio, ``aha-siem dev``), where an asyncio client could not be driven.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

# Metadata v4 is the oldest version Kafka 4.x still serves (KIP-896 removed v0-v3),
# and the newest without flexible (tagged-field) encoding, so it stays simple to parse.
_METADATA_KEY = 3
_METADATA_VERSION = 4
_CLIENT_ID = b"aha-siem-devbroker"


class ProbeError(Exception):
    """The peer answered, but not with a well-formed Kafka Metadata response."""


@dataclass(frozen=True)
class ClusterMetadata:
    """What a Metadata response says about the cluster."""

    brokers: tuple[tuple[int, str, int], ...]  # (node id, host, port)
    cluster_id: str | None
    controller_id: int


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """Split ``"h1:9092,kafka://h2:9093"`` into (host, port) pairs."""
    out: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        if "://" in item:
            item = item.split("://", 1)[1]
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"bootstrap address {item!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("empty bootstrap address")
    return out


def _request(correlation_id: int) -> bytes:
    header = struct.pack(">hhih", _METADATA_KEY, _METADATA_VERSION, correlation_id, len(_CLIENT_ID))
    # topics: empty array (not null) asks for no topics; allow_auto_topic_creation: false
    body = struct.pack(">ib", 0, 0)
    payload = header + _CLIENT_ID + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._data):
            raise ProbeError("truncated Metadata response")
        (value,) = struct.unpack_from(fmt, self._data, self._pos)
        self._pos += size
        return int(value)

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        raw = self._data[self._pos : self._pos + length]
        if len(raw) != length:
            raise ProbeError("truncated Metadata response")
        self._pos += length
        return raw.decode("utf-8", "replace")


def metadata(host: str, port: int, timeout: float = 2.0) -> ClusterMetadata:
    """Send one Metadata request to ``host:port`` and parse the broker list.

    Raises ``OSError`` when nothing answers and ``ProbeError`` on a malformed answer.
    """
    correlation_id = 0x5EED
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_request(correlation_id))
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if size < 4 or size > 64 * 1024 * 1024:
            raise ProbeError(f"implausible response size {size}")
        reader = _Reader(_recv_exact(sock, size))
    if reader.take(">i") != correlation_id:
        raise ProbeError("correlation id mismatch")
    reader.take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(reader.take(">i")):
        node_id = reader.take(">i")
        broker_host = reader.string() or ""
        broker_port = reader.take(">i")
        reader.string()  # rack
        brokers.append((node_id, broker_host, broker_port))
    cluster_id = reader.string()
    controller_id = reader.take(">i")
    return ClusterMetadata(tuple(brokers), cluster_id, controller_id)


def is_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when any bootstrap address answers Metadata with at least one live broker."""
    for host, port in parse_bootstrap(bootstrap):
        try:
            if metadata(host, port, timeout).brokers:
                return True
        except (OSError, ProbeError):
            continue
    return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
