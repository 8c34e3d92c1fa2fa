"""One HTTP server for the ingest benchmark: `python -m bench.serve {ingest,noop} PORT [CONFIG]`.

Both apps run on the ingest's own server settings (`forwarder.ingest.server.serve_app`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import uvloop

from forwarder.config import load, parse
from forwarder.ingest.app import Receive, Scope, Send
from forwarder.ingest.server import build_app, serve_app

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
    """Serve `ingest` (the real app, producing to Kafka) or `noop` on 127.0.0.1:PORT.

    Both run on `forwarder.ingest.server.serve_app`: the ingest's own uvicorn settings, header
    timeout protocol included, on uvloop.
    """
    logging.basicConfig(level=logging.WARNING)
    kind, port = argv[0], int(argv[1])
    tree = load(argv[2], environ={}).model_dump(mode="json")
    tree["ingest"].update(host="127.0.0.1", port=port)
    config = parse(tree)
    app: Any = build_app(config) if kind == "ingest" else noop_app
    uvloop.run(serve_app(config, app))


if __name__ == "__main__":
    main(sys.argv[1:])
