"""Serve a plain ASGI app on a real socket (uvicorn in a thread), optionally over TLS."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn


class AsgiServer:
    """`with AsgiServer(app) as server:` then talk to `server.url` over real TCP."""

    def __init__(
        self,
        app: Any,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._config = uvicorn.Config(
            app,
            host=host,
            port=0,
            log_level="warning",
            lifespan="off",
            access_log=False,
            ssl_certfile=str(certfile) if certfile else None,
            ssl_keyfile=str(keyfile) if keyfile else None,
        )
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-server")
        self.scheme = "https" if certfile else "http"
        self.host = host
        self.port = 0

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def __enter__(self) -> AsgiServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(10)


async def read_body(receive: Any) -> bytes:
    """The whole body of an ASGI HTTP request."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
