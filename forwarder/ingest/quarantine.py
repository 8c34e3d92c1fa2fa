"""`aha-siem spool quarantine`: list, show and re-inject the records Kafka refused for good."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from forwarder.config import Config
from forwarder.ingest.spool import QuarantinedRecord, quarantined_paths, read_quarantined


def _entries(config: Config, names: list[str]) -> list[QuarantinedRecord]:
    directory = config.ingest.spool.directory
    paths = quarantined_paths(directory)
    if names:
        wanted = set(names)
        paths = [path for path in paths if path.name in wanted or str(path) in wanted]
        missing = wanted - {path.name for path in paths} - {str(path) for path in paths}
        if missing:
            raise SystemExit(f"not in the quarantine: {', '.join(sorted(missing))}")
    return [read_quarantined(path) for path in paths]


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def list_command(config: Config, args: argparse.Namespace) -> int:
    """One line per quarantined record: file, when, topic, size, error."""
    entries = _entries(config, [])
    for entry in entries:
        print(
            f"{entry.path.name}\t{_when(entry.quarantined_at)}\t{entry.record.topic}\t"
            f"{len(entry.record.value)} bytes\t{entry.error}"
        )
    print(
        f"{len(entries)} record(s) in {config.ingest.spool.directory / 'quarantine'}",
        file=sys.stderr,
    )
    return 0


def show_command(config: Config, args: argparse.Namespace) -> int:
    """The records as JSON: topic, key, headers, error; the body with --body."""
    for entry in _entries(config, args.files):
        record = entry.record
        shown: dict[str, object] = {
            "file": entry.path.name,
            "quarantined_at": _when(entry.quarantined_at),
            "error": entry.error,
            "topic": record.topic,
            "key": record.key.decode("utf-8", "replace"),
            "headers": {name: value.decode("utf-8", "replace") for name, value in record.headers},
            "bytes": len(record.value),
        }
        if args.body:
            shown["body"] = record.value.decode("utf-8", "replace")
        sys.stdout.buffer.write(orjson.dumps(shown) + b"\n")
    return 0


async def _reinject(config: Config, entries: list[QuarantinedRecord], topic: str | None) -> int:
    from forwarder.kafka_client import KafkaBodyProducer

    producer = KafkaBodyProducer(config, role="reinject")
    await producer.start()
    failed = 0
    try:
        for entry in entries:
            record = entry.record
            target = topic or record.topic
            try:
                await producer.send(target, record.value, record.key, list(record.headers))
            except Exception as error:
                failed += 1
                print(f"{entry.path.name}: kept, {type(error).__name__}: {error}", file=sys.stderr)
                continue
            entry.path.unlink()
            print(f"{entry.path.name}: produced to {target}")
    finally:
        await producer.stop()
    return 1 if failed else 0


def reinject_command(config: Config, args: argparse.Namespace) -> int:
    """Produce quarantined records again (after raising the topic's limit) and remove them."""
    entries = _entries(config, args.files)
    if not entries:
        print("quarantine is empty", file=sys.stderr)
        return 0
    return asyncio.run(_reinject(config, entries, args.topic))


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    """`aha-siem spool quarantine list|show|reinject`."""
    spool = commands.add_parser("spool", help="the ingest's local spool")
    spool_commands = spool.add_subparsers(dest="spool_command", required=True)
    quarantine = spool_commands.add_parser(
        "quarantine", help="records Kafka refused for good (too large, invalid topic)"
    )
    actions = quarantine.add_subparsers(dest="quarantine_command", required=True)
    listing = actions.add_parser("list", help="one line per record: file, when, topic, size, error")
    listing.set_defaults(quarantine=list_command)
    show = actions.add_parser("show", help="records as JSON lines")
    show.add_argument("files", nargs="*", help="file names from `list` (default: all)")
    show.add_argument("--body", action="store_true", help="include the body")
    show.set_defaults(quarantine=show_command)
    reinject = actions.add_parser(
        "reinject", help="produce records again (e.g. after raising max.message.bytes)"
    )
    reinject.add_argument("files", nargs="*", help="file names from `list` (default: all)")
    reinject.add_argument("--topic", help="produce to this topic instead of the record's own")
    reinject.set_defaults(quarantine=reinject_command)
    for parser in (listing, show, reinject):
        config_arg(parser)
        parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from forwarder.cli import _load

    return int(args.quarantine(_load(args), args))


__all__ = ["add_parser"]
