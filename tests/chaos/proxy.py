"""A TCP proxy a test drives: forward, delay, blackhole, cut, refuse, or answer with canned bytes.

It runs an asyncio loop in a thread of its own, so a synchronous test can switch its mode while
real processes talk through it. Modes:

- `forward()` / `resume()`: bytes flow both ways (held bytes are delivered first, in order);
- `delay(seconds)`: each chunk is delivered `seconds` after it arrived, in order;
- `blackhole()`: connections stay open and new ones are accepted, but nothing is delivered (held,
  as a network partition would hold them, until `resume()` or `cut()`);
- `cut()`: every open connection is reset at once (the mode stays as it was);
- `refuse()`: the listening socket is closed and open connections are reset (connection refused);
- `reply(data)`: every new connection gets `data` once it has sent a request, then is closed
  (a garbage or abbreviated answer from the far end); open connections are reset when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class ProxyStats:
    """What went through the proxy since it started."""

    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cuts: int = 0
    replies: int = 0


@dataclass
class _Direction:
    """One direction of one connection: chunks waiting for their time and for the gate."""

    queue: asyncio.Queue[tuple[float, bytes]] = field(default_factory=asyncio.Queue)


class _Connection:
    def __init__(
        self,
        proxy: ChaosProxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()

    def abort(self) -> None:
        self.closed.set()
        for writer in (self.client_writer, self.upstream_writer):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: close sends a reset, as a broken network path would look.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()

    async def close(self) -> None:
        self.closed.set()
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


class ChaosProxy:
    """`with ChaosProxy(("127.0.0.1", port)) as proxy:` then point a client at `proxy.port`."""

    def __init__(self, upstream: tuple[str, int], *, port: int = 0, host: str = "127.0.0.1"):
        self.upstream = upstream
        self.host = host
        self.port = port
        self.stats = ProxyStats()
        self._mode = "forward"
        self._delay = 0.0
        self._reply = b""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._flowing: asyncio.Event | None = None

    # -- life cycle ------------------------------------------------------------------

    def __enter__(self) -> ChaosProxy:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Listen (on a free port unless one was given) and start the loop thread."""
        self._thread.start()
        self._call(self._setup)

    def close(self) -> None:
        """Reset every connection, stop listening and end the thread."""
        if not self._thread.is_alive():
            return
        self._call(self._teardown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def address(self) -> str:
        """`host:port` of the listening side."""
        return f"{self.host}:{self.port}"

    # -- modes -----------------------------------------------------------------------

    def forward(self) -> None:
        """Deliver everything, held bytes first; listen again after `refuse()`."""
        self._call(self._set_forward)

    resume = forward

    def delay(self, seconds: float) -> None:
        """Deliver each chunk `seconds` after it arrived."""

        async def apply() -> None:
            await self._set_forward()
            self._delay = seconds

        self._call(apply)

    def blackhole(self) -> None:
        """Accept and read, deliver nothing, until `resume()`."""

        async def apply() -> None:
            self._mode = "blackhole"
            assert self._flowing is not None
            self._flowing.clear()

        self._call(apply)

    def cut(self) -> None:
        """Reset every open connection now."""

        async def apply() -> None:
            self._abort_all()

        self._call(apply)

    def refuse(self) -> None:
        """Stop listening and reset open connections: connections are refused."""

        async def apply() -> None:
            self._mode = "refuse"
            if self._server is not None:
                self._server.close()
                self._server = None
            self._abort_all()

        self._call(apply)

    def reply(self, data: bytes) -> None:
        """Answer every new connection's first request with `data`, then close it."""

        async def apply() -> None:
            await self._set_forward()
            self._mode = "reply"
            self._reply = data
            self._abort_all()

        self._call(apply)

    @property
    def mode(self) -> str:
        """The current mode's name."""
        return self._mode

    # -- internals -------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(30)

    async def _setup(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _teardown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._abort_all()
        # Let every connection's tasks end here, not be destroyed pending with the loop.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _set_forward(self) -> None:
        self._mode = "forward"
        self._delay = 0.0
        assert self._flowing is not None
        self._flowing.set()
        if self._server is None:
            await self._listen()

    def _abort_all(self) -> None:
        if self._connections:
            self.stats.cuts += 1
        for connection in list(self._connections):
            connection.abort()
        self._connections.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == "refuse":
            writer.transport.abort()
            return
        self.stats.connections += 1
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        graceful = False
        try:
            if self._mode == "reply":
                await self._answer(connection)
            else:
                await self._pipe(connection)
            graceful = True
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(connection)
            if graceful and not connection.closed.is_set():
                await connection.close()
            else:
                connection.abort()

    async def _answer(self, connection: _Connection) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await connection.client_reader.readuntil(b"\r\n\r\n")
        self.stats.replies += 1
        connection.client_writer.write(self._reply)
        await connection.client_writer.drain()
        connection.client_writer.write_eof()
        # Read what the client still sends until it closes: closing on unread bytes would reset
        # the connection, and the client might lose the answer before it read it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while await connection.client_reader.read(65536):
                    pass

    async def _pipe(self, connection: _Connection) -> None:
        assert self._flowing is not None
        up, down = _Direction(), _Direction()
        reading_up = _task(self._read(connection.client_reader, up, "up"))
        connection.tasks.append(reading_up)
        # A blackholed path does not even reach the far end: connect once it flows again,
        # unless the connection was reset meanwhile.
        flowing = _task(self._flowing.wait())
        closed = _task(connection.closed.wait())
        await asyncio.wait([flowing, closed], return_when=asyncio.FIRST_COMPLETED)
        flowing.cancel()
        closed.cancel()
        if connection.closed.is_set():
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        connection.upstream_writer = upstream_writer
        tasks = [
            _task(self._read(upstream_reader, down, "down")),
            _task(self._write(up, upstream_writer)),
            _task(self._write(down, connection.client_writer)),
        ]
        connection.tasks.extend(tasks)
        # Done when both directions delivered their end of stream; a failure on either side
        # ends the whole connection, as a broken path would.
        done, _ = await asyncio.wait([reading_up, *tasks], return_when=asyncio.FIRST_EXCEPTION)
        if any(not task.cancelled() and task.exception() is not None for task in done):
            raise ConnectionResetError("one side of the connection failed")

    async def _read(self, reader: asyncio.StreamReader, direction: _Direction, name: str) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                await direction.queue.put((time.monotonic() + self._delay, b""))
                return
            if name == "up":
                self.stats.bytes_up += len(chunk)
            else:
                self.stats.bytes_down += len(chunk)
            await direction.queue.put((time.monotonic() + self._delay, chunk))

    async def _write(self, direction: _Direction, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while True:
            due, chunk = await direction.queue.get()
            await self._flowing.wait()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()


def _task(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.create_task(coroutine)
    # A reset connection fails its tasks; that is the point, not something to log.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return task
