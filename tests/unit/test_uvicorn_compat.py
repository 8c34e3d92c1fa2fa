"""Fails when uvicorn changes the internals forwarder/uvicorn_compat.py relies on."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from forwarder.uvicorn_compat import header_guard_protocol

# Every method the guard overrides or calls, with the parameters it passes.
OVERRIDDEN = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"],
    "on_message_begin": ["self"],
    "on_url": ["self", "url"],
    "on_header": ["self", "name", "value"],
    "on_headers_complete": ["self"],
    "on_body": ["self", "body"],
    "on_message_complete": ["self"],
    "on_response_complete": ["self"],
}


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes; no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _connect(protocol_class: type[asyncio.Protocol]) -> tuple[Any, FakeTransport]:
    config = uvicorn.Config(_app, log_config=None, lifespan="off")
    protocol: Any = protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_the_overridden_methods_exist_with_the_same_parameters(name: str) -> None:
    method = getattr(HttpToolsProtocol, name)
    assert list(inspect.signature(method).parameters) == OVERRIDDEN[name]


def test_the_constructor_takes_what_uvicorn_passes_a_protocol_class() -> None:
    parameters = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert parameters[:4] == ["self", "config", "server_state", "app_state"]


async def test_the_parser_state_the_guard_reads_is_where_it_expects() -> None:
    protocol, transport = _connect(HttpToolsProtocol)
    assert protocol.transport is transport
    assert protocol.loop is asyncio.get_running_loop()
    protocol.data_received(b"POST /v1/aha/x HTTP/1.1\r\nHost: a  \r\nX-Two: b\r\nX-")
    assert protocol.url == b"/v1/aha/x"
    # Names lowered, trailing blanks cut: what the guard counts against the size limit.
    assert protocol.headers == [(b"host", b"a"), (b"x-two", b"b")]
    protocol.connection_lost(None)


async def test_a_request_within_the_limits_is_served() -> None:
    protocol, transport = _connect(header_guard_protocol(5.0, lambda reason: None))
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 204 ")
    protocol.connection_lost(None)


async def test_too_many_header_fields_are_answered_431_with_a_lingering_close() -> None:
    refused: list[str] = []
    protocol, transport = _connect(header_guard_protocol(5.0, refused.append, max_headers=3))
    protocol.data_received(b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 4 + b"\r\n")
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert refused == ["header_too_large"]
    assert transport.eof and not transport.closed
    protocol.connection_lost(None)


async def test_headers_larger_than_the_limit_are_answered_431() -> None:
    refused: list[str] = []
    protocol, transport = _connect(header_guard_protocol(5.0, refused.append, max_header_bytes=100))
    protocol.data_received(b"GET / HTTP/1.1\r\nX-A: " + b"a" * 60 + b"\r\nX-B: " + b"b" * 60)
    # Both fields are parsed only when the next line starts.
    assert transport.written == b""
    protocol.data_received(b"\r\nX-C")
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert refused == ["header_too_large"]
    protocol.connection_lost(None)


async def test_headers_that_do_not_arrive_in_time_close_the_connection() -> None:
    refused: list[str] = []
    protocol, transport = _connect(header_guard_protocol(0.05, refused.append))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost:")
    await asyncio.sleep(0.2)
    assert transport.closed
    assert refused == ["header_timeout"]
    protocol.connection_lost(None)
