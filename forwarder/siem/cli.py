"""`aha-siem siem`: install the SIEM-side setup shipped in `siem/`, or regenerate it."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from forwarder.config import ConfigError, load


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `siem setup elasticsearch` and `siem sentinel-template`."""
    siem = commands.add_parser("siem", help="SIEM-side setup (siem/): install or regenerate it")
    sub = siem.add_subparsers(dest="siem_command", required=True)

    setup = sub.add_parser("setup", help="install the setup a SIEM needs through its API")
    targets = setup.add_subparsers(dest="siem_target", required=True)
    elastic = targets.add_parser(
        "elasticsearch",
        help="PUT the ingest pipeline and index template (Elasticsearch or OpenSearch)",
        description="Credentials: the sink's (--sink NAME -c config.yaml), or with --url from "
        "ELASTICSEARCH_API_KEY, or ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD.",
    )
    config_arg(elastic)
    where = elastic.add_mutually_exclusive_group()
    where.add_argument("--url", help="cluster URL, e.g. https://es.example.com:9200")
    where.add_argument("--sink", help="an elasticsearch sink of the config: its URL, TLS, key")
    elastic.add_argument("--template", type=Path, default=None, help="index template JSON")
    elastic.add_argument("--pipeline", type=Path, default=None, help="ingest pipeline JSON")
    elastic.add_argument("--template-name", default=None, help="default: aha-audit")
    elastic.add_argument(
        "--pipeline-name", default=None, help="default: the sink's `pipeline`, else aha-audit"
    )
    elastic.add_argument(
        "--no-default-pipeline",
        action="store_true",
        help="leave index.default_pipeline out of the template (set the sink's `pipeline`)",
    )
    elastic.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    elastic.set_defaults(func=cmd_setup_elasticsearch)

    sentinel = sub.add_parser(
        "sentinel-template",
        help="write siem/sentinel/ (ARM template, parser, analytics rules) from the sources",
    )
    sentinel.add_argument(
        "--output", type=Path, default=None, help="folder (default: siem/sentinel)"
    )
    sentinel.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the files differ"
    )
    sentinel.set_defaults(func=cmd_sentinel_template)


def _fail(message: str) -> int:
    print(f"aha-siem siem: {message}", file=sys.stderr)
    return 2


def cmd_setup_elasticsearch(args: argparse.Namespace) -> int:
    """Apply the pipeline, then the template; name the resource and the cluster's reason."""
    from forwarder.siem import elasticsearch as es
    from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig

    connection: ElasticsearchSinkConfig | None = None
    try:
        if args.sink:
            config = load(args.config)
            sink = next((item for item in config.sinks if item.name == args.sink), None)
            if not isinstance(sink, ElasticsearchSinkConfig):
                known = [s.name for s in config.sinks if isinstance(s, ElasticsearchSinkConfig)]
                raise ConfigError(
                    f"--sink: no elasticsearch sink named {args.sink!r} "
                    f"(elasticsearch sinks: {', '.join(known) or 'none configured'})"
                )
            connection = sink
        elif args.url:
            connection = es.connection_from_env(args.url, os.environ)
        elif not args.dry_run:
            return _fail("setup elasticsearch: give --url URL or --sink NAME (or --dry-run)")
        pipeline_name = args.pipeline_name or (
            connection.pipeline if connection and connection.pipeline else es.PIPELINE_NAME
        )
        items = es.resources(
            template=args.template or es.INDEX_TEMPLATE,
            pipeline=args.pipeline or es.INGEST_PIPELINE,
            template_name=args.template_name or es.TEMPLATE_NAME,
            pipeline_name=pipeline_name,
            default_pipeline=not args.no_default_pipeline,
        )
    except (es.SetupError, ConfigError) as error:
        return _fail(str(error))
    if connection is not None and args.sink:
        patterns = items[-1].body.get("index_patterns") or []
        if not any(fnmatch.fnmatchcase(connection.index, p) for p in patterns):
            print(
                f"aha-siem siem: warning: the sink's index {connection.index!r} matches none of "
                f"the template's index_patterns {patterns}: the template will not apply to it",
                file=sys.stderr,
            )
    if args.dry_run:
        for item in items:
            print(f"{item.label}  # {item.kind}")
            print(json.dumps(item.body, indent=2, ensure_ascii=False))
        return 0
    assert connection is not None
    try:
        done = asyncio.run(es.apply(connection, items))
    except es.SetupError as error:
        return _fail(str(error))
    for line in done:
        print(f"{es.safe_url(connection.url)} {line}")
    return 0


def cmd_sentinel_template(args: argparse.Namespace) -> int:
    """Write (or with --check compare) the generated files of siem/sentinel/."""
    try:
        from forwarder.siem import sentinel
    except ImportError as error:
        return _fail(
            f"pySigma is not installed ({error.name}): pip install 'aha-siem-forwarder[detections]'"
        )
    output = args.output or sentinel.SENTINEL_DIR
    try:
        files = sentinel.generate()
    except sentinel.GenerateError as error:
        return _fail(str(error))
    if args.check:
        stale = sentinel.stale(files, output)
        for name in stale:
            print(f"aha-siem siem: {output / name} differs from what the generator makes now")
        return 1 if stale else 0
    for path in sentinel.write(files, output):
        print(path)
    return 0
