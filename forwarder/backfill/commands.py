"""`aha-siem backfill` and `aha-siem reconcile`: argument handling, progress, summaries, errors."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

from aiokafka.errors import KafkaError

from forwarder.backfill import backfill, checkpoint, reconcile
from forwarder.backfill.api import AhaApiError, AhaClient, AuthError
from forwarder.backfill.backfill import Summary
from forwarder.backfill.config import AhaAccountConfig
from forwarder.backfill.seen import scan_raw
from forwarder.config import Config
from forwarder.kafka_client import KafkaBodyProducer

log = logging.getLogger("forwarder.backfill")

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Aha! keeps audits behind /api/v1/audits for 12 calendar months.
_RETENTION = timedelta(days=366)


class CommandError(Exception):
    """A failure to report in one line and exit non-zero."""


def parse_time(raw: str, now: datetime | None = None) -> datetime:
    """ISO-8601 (UTC unless it says otherwise), `now`, or a duration back from now (`90m`, `7d`)."""
    now = now or datetime.now(UTC)
    text = raw.strip()
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {raw!r} (use ISO-8601 like 2026-11-27T10:00Z, or 90m, 12h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def pick_account(config: Config, name: str | None) -> tuple[int, AhaAccountConfig]:
    """The account named (or the only one configured)."""
    accounts = config.aha.accounts
    if not accounts:
        raise CommandError("no Aha! accounts configured: add one under aha.accounts")
    if name is None:
        if len(accounts) > 1:
            names = ", ".join(account.name for account in accounts)
            raise CommandError(
                f"several Aha! accounts are configured ({names}): pick one with --account"
            )
        return 0, accounts[0]
    try:
        return config.aha.account(name)
    except KeyError:
        names = ", ".join(account.name for account in accounts)
        raise CommandError(f"no Aha! account {name!r} under aha.accounts (have: {names})") from None


def _require_key(index: int, account: AhaAccountConfig) -> None:
    if account.api_key is None or not account.api_key.get_secret_value():
        raise CommandError(
            f"aha.accounts.{index}.api_key is not set for account {account.name!r} "
            f"(set AHA_SIEM_AHA__ACCOUNTS__{index}__API_KEY)"
        )


class ProgressLine:
    """One line on stderr, rewritten in place, when stderr is a terminal."""

    def __init__(self, account: str, stream: TextIO = sys.stderr) -> None:
        self._account = account
        self._stream = stream
        self._enabled = stream.isatty()
        self._width = 0

    def __call__(self, summary: Summary) -> None:
        if not self._enabled:
            return
        filled = int(summary.fraction * 20)
        line = (
            f"[{self._account}] [{'#' * filled}{'.' * (20 - filled)}] {summary.fraction:4.0%} "
            f"slice {summary.slice_start} pages {summary.pages} audits {summary.audits} "
            f"injected {summary.injected} seen {summary.skipped}"
        )
        self._stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self._stream.flush()

    def close(self) -> None:
        """End the progress line."""
        if self._enabled and self._width:
            self._stream.write("\n")
            self._stream.flush()


def summary_text(summary: Summary, *, dry_run: bool) -> str:
    """The closing summary of a backfill."""
    verb = "would inject" if dry_run else "injected"
    lines = [
        f"pages: {summary.pages}",
        f"audits listed: {summary.audits}",
        f"{verb}: {summary.injected}",
        f"skipped as already seen: {summary.skipped}"
        + (f" ({summary.changed} with other content)" if summary.changed else ""),
    ]
    if summary.filtered:
        reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(summary.filtered.items())
        )
        lines.append(
            f"left out by the webhook's filters: {sum(summary.filtered.values())} ({reasons})"
        )
    if summary.duplicates:
        lines.append(f"listed twice by the API: {summary.duplicates}")
    if summary.refused:
        ids = ", ".join(summary.refused_ids[:20]) + (" ..." if summary.refused > 20 else "")
        lines.append(f"refused by Kafka (too large for the raw topic): {summary.refused}: {ids}")
    if summary.resumed_from:
        lines.append(f"resumed from: {summary.resumed_from}")
    lines.append(f"time: {summary.elapsed:.1f} s")
    return "\n".join(lines)


async def _backfill(config: Config, args: argparse.Namespace) -> int:
    index, account = pick_account(config, args.account)
    _require_key(index, account)
    now = datetime.now(UTC)
    until = args.until or now
    since = args.since
    if since >= until:
        raise CommandError("--since must be before --until")
    if since < now - _RETENTION:
        print(
            "aha-siem backfill: Aha! keeps audits for 12 months; older ones are only in its "
            "Historical Audits API and will not be found here",
            file=sys.stderr,
        )
    path = checkpoint.checkpoint_path(
        config.aha.checkpoint_dir, account.name, config.topics.raw, since, until
    )
    if args.restart:
        checkpoint.remove(path)
    producer = None if args.dry_run else KafkaBodyProducer(config, "backfill")
    progress = ProgressLine(account.name)
    summary: Summary | None = None
    try:
        if producer is not None:
            await producer.start()
        seen = None
        if not args.resend_seen:
            seen = await scan_raw(config, since.timestamp() - config.aha.scan_margin_seconds)
        async with AhaClient(account) as client:
            summary = await backfill.run(
                config,
                account,
                client,
                since,
                until,
                producer=producer,
                seen=seen,
                checkpoint_file=None if args.dry_run else path,
                progress=progress,
            )
    except AhaApiError as error:
        progress.close()
        hint = ""
        if isinstance(error, AuthError):
            hint = f" (AHA_SIEM_AHA__ACCOUNTS__{index}__API_KEY)"
        elif error.retriable and path.exists():
            hint = "; progress is saved: run the same command again to resume"
        raise CommandError(f"{error}{hint}") from None
    finally:
        if producer is not None:
            await producer.stop()
    progress.close()
    print(summary_text(summary, dry_run=args.dry_run))
    return 0


def _quiet_http_client() -> None:
    # httpx logs every request at INFO; our own lines say what matters, once.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def cmd_backfill(config: Config, args: argparse.Namespace) -> int:
    """Run `aha-siem backfill`; messages name the problem, the exit code is 1 on failure."""
    _quiet_http_client()
    try:
        return asyncio.run(_backfill(config, args))
    except CommandError as error:
        print(f"aha-siem backfill: {error}", file=sys.stderr)
        return 1
    except (KafkaError, OSError, LookupError, TimeoutError) as error:
        # Kafka or the disk failed; pages acknowledged before are in the checkpoint.
        print(
            f"aha-siem backfill: {type(error).__name__}: {error} "
            "(run the same command again to resume)",
            file=sys.stderr,
        )
        return 1


def cmd_reconcile(config: Config, args: argparse.Namespace) -> int:
    """Run `aha-siem reconcile` (every interval, or `--once`)."""
    _quiet_http_client()
    try:
        if args.account:
            index, account = pick_account(config, args.account)
            chosen = [(index, account)]
        else:
            chosen = [
                (index, account)
                for index, account in enumerate(config.aha.accounts)
                if account.reconcile.enabled
            ]
            if not chosen:
                raise CommandError(
                    "no account has aha.accounts.N.reconcile.enabled: true (or name one with --account)"
                )
        for index, account in chosen:
            _require_key(index, account)
    except CommandError as error:
        print(f"aha-siem reconcile: {error}", file=sys.stderr)
        return 1
    return asyncio.run(
        reconcile.run(
            config,
            [account for _, account in chosen],
            once=args.once,
            dry_run=args.dry_run,
            serve_metrics=None if args.once else reconcile.metrics_server(config),
        )
    )


def add_arguments_backfill(parser: argparse.ArgumentParser) -> None:
    """The options of `aha-siem backfill`."""
    parser.add_argument("--account", help="Aha! account under aha.accounts (default: the only one)")
    parser.add_argument(
        "--since",
        type=parse_time,
        required=True,
        help="start of the range: ISO-8601 (UTC unless given) or a duration back (90m, 12h, 7d)",
    )
    parser.add_argument("--until", type=parse_time, help="end of the range (default: now)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list and compare, produce nothing, save no checkpoint",
    )
    parser.add_argument(
        "--restart", action="store_true", help="ignore the checkpoint of an interrupted run"
    )
    parser.add_argument(
        "--resend-seen",
        action="store_true",
        help="do not read the raw topic; send every audit (the worker drops exact copies)",
    )


def add_arguments_reconcile(parser: argparse.ArgumentParser) -> None:
    """The options of `aha-siem reconcile`."""
    parser.add_argument(
        "--account", help="reconcile this account (default: those with reconcile.enabled)"
    )
    parser.add_argument("--once", action="store_true", help="one run per account, then exit")
    parser.add_argument("--dry-run", action="store_true", help="compare and count, inject nothing")
