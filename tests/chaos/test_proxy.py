"""The chaos proxy itself, against a TCP echo server: every mode does what the scenarios assume."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import ChaosProxy

pytestmark = pytest.mark.chaos


@pytest.fixture
def echo() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def connect(proxy: ChaosProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=3)


def assert_reset(sock: socket.socket) -> None:
    """The proxy closed this connection (a time-out would mean it is still open)."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(16) == b""


def test_forward_and_delay(echo: int) -> None:
    with ChaosProxy(("127.0.0.1", echo)) as proxy, connect(proxy) as client:
        client.sendall(b"one")
        assert client.recv(16) == b"one"
        proxy.delay(0.3)
        began = time.monotonic()
        client.sendall(b"two")
        assert client.recv(16) == b"two"
        # Each direction waits: a round trip takes twice the delay.
        assert time.monotonic() - began >= 0.6
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == 6


def test_blackhole_holds_bytes_and_new_connections_until_resumed(echo: int) -> None:
    with ChaosProxy(("127.0.0.1", echo)) as proxy, connect(proxy) as client:
        proxy.blackhole()
        client.sendall(b"held")
        with connect(proxy) as late:
            late.sendall(b"late")
            client.settimeout(0.5)
            with pytest.raises(TimeoutError):
                client.recv(16)
            proxy.resume()
            client.settimeout(3)
            assert client.recv(16) == b"held"
            assert late.recv(16) == b"late"


def test_cut_resets_open_connections_and_keeps_listening(echo: int) -> None:
    with ChaosProxy(("127.0.0.1", echo)) as proxy, connect(proxy) as client:
        client.sendall(b"x")
        assert client.recv(16) == b"x"
        proxy.cut()
        assert_reset(client)
        with connect(proxy) as again:
            again.sendall(b"z")
            assert again.recv(16) == b"z"
        assert proxy.stats.cuts == 1


def test_refuse_then_forward_listens_on_the_same_port(echo: int) -> None:
    with ChaosProxy(("127.0.0.1", echo)) as proxy:
        port = proxy.port
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            connect(proxy)
        proxy.forward()
        assert proxy.port == port
        with connect(proxy) as client:
            client.sendall(b"back")
            assert client.recv(16) == b"back"


def test_reply_answers_each_request_with_canned_bytes(echo: int) -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"
    with ChaosProxy(("127.0.0.1", echo)) as proxy, connect(proxy) as client:
        client.sendall(b"open")
        assert client.recv(16) == b"open"
        proxy.reply(answer)
        with connect(proxy) as asking:
            asking.sendall(b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}")
            received = b""
            while chunk := asking.recv(1024):
                received += chunk
            assert received == answer
        assert proxy.stats.replies == 1
        # Open connections were reset when the mode was set.
        assert_reset(client)
