"""One HTTP server for the ingest benchmark: `python -m bench.serve {ingest,noop} PORT [CONFIG]`.

Both apps run on the same uvicorn settings as `forwarder.ingest.server.serve`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import uvicorn

from forwarder.config import load
from forwarder.ingest.app import Receive, Scope, Send
from forwarder.ingest.server import build_app

_ACCEPTED = orjson.dumps({"status": "accepted"})


async def noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body and answers 202 with a tiny JSON: the cost of the server alone."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            break
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_ACCEPTED))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": _ACCEPTED})


def main(argv: list[str]) -> None:
    """Serve `ingest` (the real app, producing to Kafka) or `noop` on 127.0.0.1:PORT."""
    logging.basicConfig(level=logging.WARNING)
    kind, port = argv[0], int(argv[1])
    app: Any = build_app(load(argv[2], environ={})) if kind == "ingest" else noop_app
    uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_keep_alive=30,
        )
    ).run()


if __name__ == "__main__":
    main(sys.argv[1:])
