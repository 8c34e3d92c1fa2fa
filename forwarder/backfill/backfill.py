"""Walk the audits of a time range, page by page, and inject those the raw topic lacks.

One loop serves both commands: `backfill` runs it over a long range with a checkpoint after
every page, `reconcile` over a recent settled window without one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from forwarder.backfill import checkpoint as checkpoints
from forwarder.backfill.api import AhaClient
from forwarder.backfill.checkpoint import Checkpoint
from forwarder.backfill.config import AhaAccountConfig
from forwarder.backfill.filters import AuditFilter
from forwarder.backfill.seen import SeenIndex
from forwarder.backfill.wrap import RawRecord, wrap
from forwarder.config import Config
from forwarder.failures import Failure, classify_kafka
from forwarder.records import iso_millis, utc_now_iso

log = logging.getLogger("forwarder.backfill")


class Producer(Protocol):
    """Where records go; `send` returns once Kafka acknowledged the record."""

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None: ...


@dataclass
class Summary:
    """What a run did: pages fetched, audits listed, injected, and skipped as already seen."""

    pages: int = 0
    audits: int = 0
    injected: int = 0
    skipped: int = 0
    changed: int = 0
    duplicates: int = 0
    filtered: dict[str, int] = field(default_factory=dict)
    """Audits the account's filtered webhook would not have sent, by reason (filters.REASONS)."""
    refused: int = 0
    """Audits Kafka refused for good (too large for the raw topic): listed in refused_ids."""
    refused_ids: list[str] = field(default_factory=list)
    resumed_from: str | None = None
    slice_start: str | None = None
    fraction: float = 0.0
    started: float = field(default_factory=time.monotonic)
    injected_ids: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started


def token_id_for(config: Config, account: AhaAccountConfig) -> str:
    """The `token-id` of injected records: as configured, else the account's ingest token."""
    if account.token_id:
        return account.token_id
    for token in config.ingest.tokens:
        if token.account and token.account.lower() == account.name:
            return token.name
    return account.name


def slices(start: datetime, end: datetime, length: float) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut into consecutive pieces of `length` seconds, oldest first."""
    step = timedelta(seconds=length)
    while start < end:
        stop = min(end, start + step)
        yield start, stop
        start = stop


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def _inside(created_at: str | None, start: datetime, stop: datetime) -> bool:
    """Whether an audit belongs to the slice [start, stop) (kept when its time is unreadable)."""
    if created_at is None:
        return True
    try:
        moment = _parse(created_at)
    except ValueError:
        return True
    return start <= moment < stop


async def run(
    config: Config,
    account: AhaAccountConfig,
    client: AhaClient,
    since: datetime,
    until: datetime,
    *,
    producer: Producer | None,
    seen: SeenIndex | None,
    checkpoint_file: Path | None = None,
    progress: Callable[[Summary], None] | None = None,
    slice_seconds: float | None = None,
) -> Summary:
    """Fetch the audits created in [since, until) and produce the missing ones to the raw topic.

    Audits the account's filtered webhook would not have sent (`filters`) are left out and
    counted in `Summary.filtered`. `producer=None` is a dry run: nothing is produced and no checkpoint written. With `seen`,
    audits whose id the raw topic already holds are skipped; without it every audit is sent
    (the worker's dedupe drops exact copies). With `checkpoint_file`, the position after each
    acknowledged page is saved there and a run with the same range resumes from it.
    """
    topic = config.topics.raw
    token_id = token_id_for(config, account)
    audit_filter = AuditFilter.of(account.filters) if account.filters.active else None
    state = Checkpoint.new(account.name, topic, since, until)
    summary = Summary()
    if checkpoint_file is not None:
        found = checkpoints.load(checkpoint_file)
        if found is not None and (found.since, found.until) == (state.since, state.until):
            state = found
            summary.resumed_from = f"{found.slice_start} page {found.page}"
            summary.pages, summary.audits = found.pages, found.audits
            summary.injected, summary.skipped = found.injected, found.skipped
            log.info(
                "resuming backfill",
                extra={"account": account.name, "slice": found.slice_start, "page": found.page},
            )
    total = (until - since).total_seconds() or 1.0
    # Aha! does not say whether `created_before` is exclusive: an audit on a slice's edge is
    # taken only by the slice it starts (`_inside`). Within a slice, a page boundary that moves
    # while we read could list an audit twice; `recent` catches that.
    recent: set[str] = set()
    for start, stop in slices(
        _parse(state.slice_start), until, slice_seconds or account.slice_seconds
    ):
        page = state.page if iso_millis(start) == state.slice_start else 1
        summary.slice_start = iso_millis(start)
        while True:
            result = await client.audits(start, stop, page)
            received_at = utc_now_iso()
            batch: list[RawRecord] = []
            for audit in result.audits:
                record = wrap(audit, token_id, received_at)
                if not _inside(record.created_at, start, stop) or record.audit_id in recent:
                    summary.duplicates += 1
                    continue
                recent.add(record.audit_id)
                reason = audit_filter.rejects(record.audit) if audit_filter else None
                if reason is not None:
                    summary.filtered[reason] = summary.filtered.get(reason, 0) + 1
                    continue
                if seen is not None and seen.has_id(record.audit_id):
                    summary.skipped += 1
                    if not seen.has(record.audit_id, record.content_hash):
                        summary.changed += 1
                    continue
                batch.append(record)
            if producer is not None and batch:
                refused = await _produce_all(producer, topic, batch)
                if refused:
                    summary.refused += len(refused)
                    summary.refused_ids.extend(refused)
                    batch = [record for record in batch if record.audit_id not in refused]
            summary.injected += len(batch)
            summary.injected_ids.extend(record.audit_id for record in batch)
            summary.pages += 1
            summary.audits += len(result.audits)
            last = result.last or not result.audits
            if last:
                state.slice_start, state.page = iso_millis(stop), 1
            else:
                state.page = page + 1
            state.pages, state.audits = summary.pages, summary.audits
            state.injected, state.skipped = summary.injected, summary.skipped
            if checkpoint_file is not None and producer is not None:
                checkpoints.save(checkpoint_file, state)
            done = (stop - since).total_seconds() if last else (start - since).total_seconds()
            summary.fraction = min(1.0, done / total)
            if progress is not None:
                progress(summary)
            if last:
                break
            page += 1
        recent = set()
    if checkpoint_file is not None and producer is not None:
        checkpoints.remove(checkpoint_file)
    return summary


_PRODUCE_ATTEMPTS = 4


async def _produce_all(producer: Producer, topic: str, batch: list[RawRecord]) -> set[str]:
    """Produce a page's records; returns the audit ids Kafka refused for good.

    Those are logged and reported, not retried: retrying them would stop the backfill at the
    same page on every run. A broken producer is replaced; other failures are retried with
    back-off, then raised (the checkpoint keeps the page for the next run).
    """
    pending = batch
    refused: set[str] = set()
    for attempt in range(_PRODUCE_ATTEMPTS):
        results = await asyncio.gather(
            *(
                producer.send(topic, record.value, record.key, record.kafka_headers())
                for record in pending
            ),
            return_exceptions=True,
        )
        retry: list[RawRecord] = []
        last: BaseException | None = None
        for record, result in zip(pending, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            failure = classify_kafka(result)
            if failure is Failure.RECORD:
                refused.add(record.audit_id)
                log.error(
                    "kafka refused an audit for good, not injected",
                    extra={
                        "audit_id": record.audit_id,
                        "bytes": len(record.value),
                        "error.type": type(result).__name__,
                        "error.message": str(result),
                    },
                )
                continue
            retry.append(record)
            last = result
        if not retry:
            return refused
        assert last is not None
        failure = classify_kafka(last)
        recreate = getattr(producer, "recreate", None)
        if failure is Failure.CLIENT_BROKEN and recreate is not None:
            log.warning(
                "producer state broken, replacing it", extra={"error.type": type(last).__name__}
            )
            await recreate()
        else:
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
        pending = retry
    assert last is not None
    raise last
