"""Every use of uvicorn's internals, each with the upstream behaviour it corrects.

uvicorn has no timeout for a request's headers (a client that sends them a byte at a time holds
a connection for ever: slowloris) and no limit on their size or count (httptools buffers them
whole). Both are added by subclassing its httptools protocol, an internal class
(`uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`): the subclass overrides its
connection and parser callbacks and reads its `url`, `headers`, `transport` and `loop`.

tests/unit/test_uvicorn_compat.py fails when uvicorn changes under these names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# How long a refused connection stays open for the client to read the 431.
LINGER_SECONDS = 2.0


def header_guard_protocol(
    seconds: float,
    on_refused: Callable[[str], None],
    *,
    max_header_bytes: int = 16 * 1024,
    max_headers: int = 100,
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the header limits uvicorn lacks (its `http=` setting).

    A connection slow to send a request's headers is closed (slowloris); a request line and
    headers larger than `max_header_bytes`, or with more than `max_headers` fields, is answered
    431 and the connection closed, before the headers are buffered whole. `on_refused` gets the
    reason: header_timeout or header_too_large.
    """

    class HeaderGuardProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None
        _in_headers = True
        _header_bytes = 0
        _header_count = 0
        _header_size = 0
        _refused = False

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expire(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                on_refused("header_timeout")
                self.transport.close()

        def _refuse(self, message: str) -> None:
            self._refused = True
            self._disarm()
            if self.transport.is_closing():
                return
            on_refused("header_too_large")
            body = orjson.dumps({"error": "header_too_large", "message": message})
            head = (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head + body)
            # A lingering close, as nginx does: closing with the client's unread bytes in our
            # buffer would send a reset that destroys the answer before the client reads it.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_headers:
                # Bytes already received without the headers completing: refuse before
                # httptools buffers more of them.
                if self._header_bytes > max_header_bytes:
                    self._refuse(f"request headers exceed {max_header_bytes} bytes")
                    return
                self._header_bytes += len(data)
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._header_bytes = 0
            self._header_count = 0
            self._header_size = 0

        def on_url(self, url: bytes) -> None:
            if self._refused:
                return
            super().on_url(url)
            if len(self.url) > max_header_bytes:
                self._refuse(f"request line exceeds {max_header_bytes} bytes")

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._refused:
                return
            self._header_count += 1
            if self._header_count > max_headers:
                self._refuse(f"more than {max_headers} header fields")
                return
            super().on_header(name, value)
            # Counted as stored (value without trailing blanks) plus ": " and CRLF, one field at
            # a time rather than summing every field again on each one.
            stored_name, stored_value = self.headers[-1]
            self._header_size += len(stored_name) + len(stored_value) + 4
            if len(self.url) + self._header_size > max_header_bytes:
                self._refuse(f"request headers exceed {max_header_bytes} bytes")

        def on_headers_complete(self) -> None:
            self._in_headers = False
            if self._refused:
                return
            self._disarm()
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderGuardProtocol
