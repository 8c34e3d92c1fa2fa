"""``python -m forwarder.devbroker start|stop|status``: manage the local dev/test broker."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import KINDS, BrokerError, BrokerInfo, start, status, stop

DEFAULT_STATE_DIR = Path(".run/kafka")


def _describe(info: BrokerInfo) -> str:
    parts = [info.kind, info.bootstrap]
    if info.pid is not None:
        parts.append(f"pid {info.pid}")
    text = " ".join(parts)
    return f"{text} (log: {info.log_file})" if info.log_file else text


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, act, and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m forwarder.devbroker",
        description="Start, stop or inspect the local Kafka-compatible broker for development and tests. "
        "KAFKA_BOOTSTRAP=host:port makes `start` use that cluster instead.",
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s"
    )
    parser.add_argument("--port", type=int, default=9092, help="client port (default: %(default)s)")
    parser.add_argument(
        "--controller-port", type=int, default=None, help="Kafka controller port (default: port+1)"
    )
    parser.add_argument("--kind", choices=KINDS, default="auto", help="default: %(default)s")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "start":
            began = time.monotonic()
            info = start(
                args.state_dir,
                port=args.port,
                kind=args.kind,
                timeout=args.timeout,
                controller_port=args.controller_port,
            )
            print(f"ready {_describe(info)} in {time.monotonic() - began:.1f}s")
        elif args.command == "stop":
            print("stopped" if stop(args.state_dir, timeout=args.timeout) else "not running")
        else:
            found = status(args.state_dir)
            if found is None:
                print("not running")
                return 3
            print(f"running {_describe(found)}")
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
