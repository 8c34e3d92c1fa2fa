"""The `aha-siem` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from forwarder import __version__, logs
from forwarder.config import Config, ConfigError, hash_token, load


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=os.environ.get("AHA_SIEM_CONFIG"),
        help="YAML config file (default: $AHA_SIEM_CONFIG, else built-in defaults)",
    )


def _load(args: argparse.Namespace) -> Config:
    config = load(args.config)
    logs.setup(config.log_level)
    return config


def cmd_ingest(args: argparse.Namespace) -> int:
    from forwarder.ingest.server import serve

    serve(_load(args))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from forwarder.pipeline.worker import run

    run(_load(args), args.config, sinks=not args.no_sinks)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    from forwarder.pipeline.worker import run_sink

    run_sink(_load(args), args.name, args.metrics_host, args.metrics_port)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from forwarder.pipeline.replay import replay

    config = _load(args)
    return asyncio.run(
        replay(config, args.sink, since=args.since, dry_run=args.dry_run, limit=args.limit)
    )


def cmd_backfill(args: argparse.Namespace) -> int:
    from forwarder.backfill.commands import cmd_backfill as run_backfill

    return run_backfill(_load(args), args)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from forwarder.backfill.commands import cmd_reconcile as run_reconcile

    return run_reconcile(_load(args), args)


def cmd_dev(args: argparse.Namespace) -> int:
    from forwarder.dev import run_dev

    logs.setup("info")
    return run_dev(
        state_dir=args.state_dir,
        base_config=args.config,
        port=args.port,
        metrics_port=args.metrics_port,
        broker_port=args.broker_port,
        broker_kind=args.broker,
    )


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load(args.file)
    rules = ""
    if config.detections.enabled:
        from forwarder.pipeline.worker import check_rules

        rules = f", {check_rules(config)} detection rule(s)"
    print(
        f"{args.file}: ok ({len(config.ingest.tokens)} token(s), {len(config.sinks)} sink(s)"
        f"{rules}, bootstrap {config.kafka.bootstrap_servers})"
    )
    return 0


def cmd_token_new(args: argparse.Namespace) -> int:
    token = secrets.token_urlsafe(32)
    print("# Put this under ingest.tokens; give Aha! the URL https://YOUR-HOST/v1/aha/<token>")
    print(f"- name: {args.name}")
    print(f"  sha256: {hash_token(token)}")
    if args.account:
        print(f"  account: {args.account}")
    print(f"# token (shown once, stored nowhere): {token}")
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from forwarder.kafka_client import ensure_topics, project_topics
    from forwarder.pipeline.app import changelog_topics, create_app

    config = _load(args)
    # The worker's table changelogs too, so a worker without the right to create topics runs.
    changelogs = changelog_topics(create_app(config, CollectorRegistry()))
    created = asyncio.run(ensure_topics(config, extra=changelogs))
    for name in [*project_topics(config), *changelogs]:
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from forwarder.render import render

    config = load(args.config)
    try:
        render(
            args.files,
            args.format,
            options=config.formats,
            token_id=args.token_id,
            account=args.account,
        )
    except ValueError as error:
        print(f"aha-siem render: {error}", file=sys.stderr)
        return 2
    return 0


def _port_pair(raw: str) -> tuple[int, int]:
    listen, sep, advertised = raw.partition(":")
    if not sep or not listen.isdigit() or not advertised.isdigit():
        raise argparse.ArgumentTypeError(f"expected LISTEN:ADVERTISED ports, got {raw!r}")
    return int(listen), int(advertised)


def cmd_broker(args: argparse.Namespace) -> int:
    from forwarder import devbroker

    if args.action == "start":
        info = devbroker.start(
            args.state_dir, port=args.port, kind=args.kind, proxied=args.proxied_listener
        )
        print(
            f"ready {info.kind} {info.bootstrap}"
            + (f" (log: {info.log_file})" if info.log_file else "")
        )
    elif args.action == "stop":
        print("stopped" if devbroker.stop(args.state_dir) else "not running")
    else:
        status = devbroker.status(args.state_dir)
        if status is None:
            print("not running")
            return 1
        print(f"running {status.kind} {status.bootstrap} pid {status.pid}")
    return 0


def _timestamp(raw: str) -> datetime:
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {raw!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aha-siem", description="Forward Aha! Roadmaps audit webhooks to SIEMs through Kafka."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="run the webhook ingest shim (ASGI on uvicorn)")
    _config_arg(ingest)
    ingest.set_defaults(func=cmd_ingest)

    worker = commands.add_parser(
        "worker", help="run the Faust worker (normalize), with one process per sink"
    )
    _config_arg(worker)
    worker.add_argument(
        "--no-sinks",
        action="store_true",
        help="normalize only; run the sinks elsewhere with `aha-siem sink NAME`",
    )
    worker.set_defaults(func=cmd_worker)

    sink = commands.add_parser(
        "sink", help="run one sink (its own Faust app and consumer group on the events topic)"
    )
    _config_arg(sink)
    sink.add_argument("name", help="the sink's name in the config")
    sink.add_argument("--metrics-host", default="0.0.0.0", help="address of its /metrics")
    sink.add_argument("--metrics-port", type=int, default=0, help="port of its /metrics (0: none)")
    sink.set_defaults(func=cmd_sink)

    replay = commands.add_parser(
        "replay", help="send a sink's dead-lettered events back through the sink"
    )
    _config_arg(replay)
    replay.add_argument("--sink", required=True, help="the sink whose DLQ to replay")
    replay.add_argument(
        "--since",
        type=_timestamp,
        help="only events dead-lettered at or after this time (ISO-8601, e.g. 2026-11-27T10:00Z)",
    )
    replay.add_argument("--limit", type=int, default=None, help="stop after this many events")
    replay.add_argument(
        "--dry-run", action="store_true", help="read and encode, send nothing, commit nothing"
    )
    replay.set_defaults(func=cmd_replay)

    from forwarder.backfill.commands import add_arguments_backfill, add_arguments_reconcile

    backfill = commands.add_parser(
        "backfill", help="bring a time range of audits back from Aha!'s REST API into the raw topic"
    )
    _config_arg(backfill)
    add_arguments_backfill(backfill)
    backfill.set_defaults(func=cmd_backfill)

    reconcile = commands.add_parser(
        "reconcile", help="every few minutes, inject audits Aha! has that the raw topic lacks"
    )
    _config_arg(reconcile)
    add_arguments_reconcile(reconcile)
    reconcile.set_defaults(func=cmd_reconcile)

    dev = commands.add_parser(
        "dev", help="run broker, ingest and worker with a file sink on this machine"
    )
    _config_arg(dev)
    dev.add_argument(
        "--state-dir", type=Path, default=Path(".run/dev"), help="where dev keeps its state"
    )
    dev.add_argument("--port", type=int, default=8080, help="ingest port")
    dev.add_argument("--metrics-port", type=int, default=9108, help="worker /metrics port")
    dev.add_argument("--broker-port", type=int, default=9092, help="embedded broker port")
    dev.add_argument(
        "--broker", choices=["auto", "kafka", "tansu"], default="auto", help="embedded broker kind"
    )
    dev.set_defaults(func=cmd_dev)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config file (and AHA_SIEM_* env)")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_config_check)

    token = commands.add_parser("token", help="webhook tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    new = token_commands.add_parser("new", help="make a token and the config entry with its hash")
    new.add_argument("name")
    new.add_argument("--account", help="Aha! account name (organization.name)")
    new.set_defaults(func=cmd_token_new)

    topics = commands.add_parser("topics", help="Kafka topics")
    topics_commands = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_commands.add_parser("create", help="create the project's topics if missing")
    _config_arg(create)
    create.set_defaults(func=cmd_topics_create)

    from forwarder.ingest.quarantine import add_parser as add_spool_parser

    add_spool_parser(commands, _config_arg)

    from forwarder.detections.cli import add_parser as add_detections_parser

    add_detections_parser(commands)

    from forwarder.siem.cli import add_parser as add_siem_parser

    add_siem_parser(commands, _config_arg)

    from forwarder.formats import format_names

    render = commands.add_parser(
        "render", help="render webhook bodies (files or stdin, JSON or NDJSON) in an output format"
    )
    _config_arg(render)
    render.add_argument("-f", "--format", default="ecs", choices=format_names())
    render.add_argument("--token-id", default="render", help="token name to attribute bodies to")
    render.add_argument("--account", help="Aha! account (organization.name)")
    render.add_argument("files", nargs="*", type=Path, help="body files; none or - reads stdin")
    render.set_defaults(func=cmd_render)

    broker = commands.add_parser("broker", help="the embedded development broker")
    broker.add_argument("action", choices=["start", "stop", "status"])
    broker.add_argument("--state-dir", type=Path, default=Path(".run/kafka"))
    broker.add_argument("--port", type=int, default=9092)
    broker.add_argument("--kind", choices=["auto", "kafka", "tansu"], default="auto")
    broker.add_argument(
        "--proxied-listener",
        type=_port_pair,
        metavar="LISTEN:ADVERTISED",
        help="a second listener on port LISTEN whose metadata names port ADVERTISED, for a proxy "
        "there (fault-injection tests: clients bootstrapped through it stay on the proxy)",
    )
    broker.set_defaults(func=cmd_broker)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `aha-siem`."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(f"aha-siem: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
