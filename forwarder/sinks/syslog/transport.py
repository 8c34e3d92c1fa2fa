"""Connections to a syslog receiver: a TCP or TLS stream, or a connected UDP socket.

A syslog receiver never answers on these transports, so anything it sends (EOF included) can only
mean it is going away; the stream watches for that so a batch is not written into a connection
the receiver already closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

CHUNK_BYTES = 64 * 1024
_FLUSH_POLL_SECONDS = 0.005
_CLOSE_SECONDS = 2.0
_MIN_SETTLE_SECONDS = 0.02


async def let_io_run() -> None:
    """Give the event loop a few turns, so a close or an error the peer already sent is seen.

    One turn polls the sockets and queues their callbacks; the next runs them (EOF fed to the
    stream reader, an ICMP error to the datagram protocol); a third lets their waiters wake.
    """
    for _ in range(3):
        await asyncio.sleep(0)


def chunks(frames: Sequence[bytes], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The frames joined into writes of about `size` octets (a frame is never split)."""
    pending: list[bytes] = []
    length = 0
    for frame in frames:
        pending.append(frame)
        length += len(frame)
        if length >= size:
            yield b"".join(pending)
            pending, length = [], 0
    if pending:
        yield b"".join(pending)


class StreamConnection:
    """One TCP or TLS connection; `send` returns once the batch has left this process."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._peer_closed = False
        self.peer_error: OSError | None = None
        self._watcher = asyncio.create_task(self._watch_peer(), name="syslog-peer-watch")

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        timeout: float,
    ) -> StreamConnection:
        """Connect (and shake hands, for TLS) within `timeout` seconds."""
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            tls = {
                "ssl": ssl_context,
                "server_hostname": server_hostname or host,
                "ssl_handshake_timeout": timeout,
            }
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, **tls)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # A receiver whose host vanished is found out by keepalive, not only by a full buffer.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        connection = cls(reader, writer)
        # A receiver can refuse a connection it already accepted: a TLS 1.3 server checks the
        # client certificate after the handshake is over for the client, rsyslog drops senders
        # it does not allow. Its close arrives within a round trip; a batch written before it
        # would be lost without a word. Opening took at least one round trip: wait as long.
        await asyncio.sleep(min(max(loop.time() - started, _MIN_SETTLE_SECONDS), timeout))
        await let_io_run()
        if not connection.usable:
            await connection.abort()
            if connection.peer_error is not None:
                raise connection.peer_error
            raise ConnectionResetError(
                "the receiver closed the connection right after accepting it"
                + (" (is a client certificate required or not trusted?)" if tls else "")
            )
        return connection

    async def _watch_peer(self) -> None:
        try:
            while await self._reader.read(CHUNK_BYTES):
                pass  # nothing is expected; read it so the EOF behind it is seen
        except OSError as error:
            # A TLS alert (certificate required, unknown CA) names why the receiver hung up.
            self.peer_error = error
        self._peer_closed = True

    @property
    def usable(self) -> bool:
        """False once the receiver closed or reset the connection, or it was closed here."""
        return not (
            self._peer_closed
            or self._reader.at_eof()
            or self._reader.exception() is not None
            or self._writer.is_closing()
        )

    async def send(self, frames: Sequence[bytes], timeout: float) -> None:
        """Write the frames in order, waiting on back-pressure; each 64 KiB within `timeout`."""
        for chunk in chunks(frames):
            if not self.usable:
                # asyncio drops writes to a lost connection without a word: say it here.
                raise ConnectionResetError("the receiver closed the connection")
            self._writer.write(chunk)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        async with asyncio.timeout(timeout):
            # drain() only waits down to the low-water mark: wait until nothing is left here.
            while self._writer.transport.get_write_buffer_size() > 0:
                if not self.usable:
                    raise ConnectionResetError("the receiver closed the connection")
                await asyncio.sleep(_FLUSH_POLL_SECONDS)
        await let_io_run()
        if not self.usable:
            raise ConnectionResetError("the receiver closed the connection during the batch")

    async def close(self) -> None:
        """Close politely (TLS close_notify), or abort if the peer does not answer in time."""
        await self._stop_watching()
        self._writer.close()
        try:
            async with asyncio.timeout(_CLOSE_SECONDS):
                await self._writer.wait_closed()
        except (OSError, TimeoutError):
            self._writer.transport.abort()

    async def abort(self) -> None:
        """Drop the connection at once, unsent data and all (after a failure)."""
        await self._stop_watching()
        self._writer.transport.abort()

    async def _stop_watching(self) -> None:
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.error: OSError | None = None
        self.lost = False
        self.writable = asyncio.Event()
        self.writable.set()

    def error_received(self, exc: Exception) -> None:
        # On a connected UDP socket this is mostly the ICMP "port unreachable" of an earlier send.
        if isinstance(exc, OSError):
            self.error = exc

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if isinstance(exc, OSError):
            self.error = exc
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class DatagramConnection:
    """A connected UDP socket: one message per datagram, errors only as ICMP hints."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _DatagramProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def open(cls, host: str, port: int, *, timeout: float) -> DatagramConnection:
        """Resolve the receiver and connect a UDP socket to it (nothing is sent)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_datagram_endpoint(
                _DatagramProtocol, remote_addr=(host, port)
            )
        return cls(transport, protocol)

    @property
    def usable(self) -> bool:
        """False once an error was reported (the receiver is likely not listening)."""
        return self.pending_error is None and not self._protocol.lost

    @property
    def pending_error(self) -> OSError | None:
        """The last error the socket reported, if any."""
        return self._protocol.error

    async def send(self, frames: Sequence[bytes], timeout: float) -> None:
        """Send one datagram per frame, waiting when the socket buffer is full."""
        for frame in frames:
            if self._protocol.error is not None:
                raise self._protocol.error
            if self._protocol.lost:
                raise ConnectionResetError("the UDP socket was closed")
            self._transport.sendto(frame)
            if not self._protocol.writable.is_set():
                async with asyncio.timeout(timeout):
                    await self._protocol.writable.wait()
        await let_io_run()
        if self._protocol.error is not None:
            raise self._protocol.error

    async def close(self) -> None:
        """Close the socket."""
        self._transport.close()

    async def abort(self) -> None:
        """Close the socket, dropping what is still buffered."""
        self._transport.abort()


Connection = StreamConnection | DatagramConnection
