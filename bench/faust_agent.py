"""`python -m bench.faust_agent CONFIG COUNT_FILE`: a bare Faust agent that consumes and acks.

The ceiling of a Faust-based sink: the sink apps' own Faust settings (`new_faust_app`), an agent
on the events topic with raw serializers that does nothing but let Faust ack each event. Every
`_EVERY` events (and at a pause) it writes how many it has seen to COUNT_FILE, for the bench to
poll like a sink's receiver.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import faust

from forwarder.config import load
from forwarder.pipeline.app import new_faust_app

_EVERY = 200


def main(config_path: str, count_path: str) -> None:
    """Run the agent until SIGTERM."""
    config = load(Path(config_path))
    datadir = config.worker.data_dir / "bare"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = new_faust_app(
        config, f"{config.worker.app_id}-bare", role="bare", store="memory://", datadir=datadir
    )
    topic = app.topic(config.topics.events, key_serializer="raw", value_serializer="raw")
    fd = os.open(count_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    seen = 0

    def write() -> None:
        os.pwrite(fd, f"{seen:>12}".encode(), 0)

    async def consume(stream: faust.StreamT) -> None:
        nonlocal seen
        async for _ in stream.events():
            seen += 1
            if seen % _EVERY == 0:
                write()

    app.agent(topic, name="bare")(consume)

    @app.timer(interval=0.05)
    async def report() -> None:
        write()

    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
