"""`aha-siem detections`: the Sigma rules converted to each SIEM's queries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

INSTALL_HINT = "pip install 'aha-siem-forwarder[detections]'"
TARGET_NAMES = ("splunk", "elasticsearch-esql", "elasticsearch-lucene", "kusto")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `detections export` (pySigma is imported only when it runs)."""
    detections = commands.add_parser("detections", help="Sigma detection rules for Aha! audits")
    sub = detections.add_subparsers(dest="detections_command", required=True)
    export = sub.add_parser("export", help="convert the rules to a SIEM's query language")
    export.add_argument("--target", required=True, choices=TARGET_NAMES)
    export.add_argument(
        "--rules", type=Path, default=None, help="folder of Sigma rules (default: detections/sigma)"
    )
    export.add_argument(
        "--output", type=Path, default=None, help="write one file per rule here (default: stdout)"
    )
    export.set_defaults(func=cmd_export)
    run = sub.add_parser(
        "run",
        help="evaluate the rules on the events topic and produce alerts (the worker starts this "
        "itself when detections.enabled is true)",
    )
    from forwarder.cli import _config_arg

    _config_arg(run)
    run.add_argument("--metrics-host", default="0.0.0.0", help="address of its /metrics")
    run.add_argument("--metrics-port", type=int, default=0, help="port of its /metrics (0: none)")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the detections process (its own Faust app and consumer group)."""
    from forwarder.cli import _load

    config = _load(args)
    try:
        from forwarder.detections.engine import UnsupportedRule
        from forwarder.detections.export import RuleError
        from forwarder.pipeline.alerts import run_detections
    except ImportError as error:
        print(
            f"aha-siem detections: pySigma is not installed ({error.name}): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    try:
        run_detections(config, args.metrics_host, args.metrics_port)
    except (RuleError, UnsupportedRule, OSError) as error:
        print(f"aha-siem detections: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Convert every rule for `--target`; a rule the target cannot express is named, not lost."""
    try:
        from forwarder.detections import export
    except ImportError as error:
        print(
            f"aha-siem detections: pySigma is not installed ({error.name}): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    try:
        collection = export.load_rules(args.rules or export.RULES_DIR)
    except (export.RuleError, OSError) as error:
        print(f"aha-siem detections: {error}", file=sys.stderr)
        return 2
    converted = export.convert_all(collection, args.target)
    if args.output is not None:
        for path in export.write(converted, args.output):
            print(path)
    else:
        for item in converted:
            print(f"# {item.rule}")
            if item.unsupported is not None:
                print(f"# not supported by {args.target}: {item.unsupported}")
            else:
                print("\n\n".join(item.queries))
            print()
    for item in converted:
        if item.unsupported is not None:
            print(
                f"aha-siem detections: {item.rule}: not supported by {args.target}: "
                f"{item.unsupported}",
                file=sys.stderr,
            )
    return 0
