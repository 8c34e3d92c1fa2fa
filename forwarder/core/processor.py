"""The normalize worker's processor: raw records and ticks in; events, state writes and ticks out.

Pure: no Kafka, no Faust, no clock of its own (the caller passes `now`). The Faust runtime
(forwarder/pipeline/app.py) reads the current state of every record key a batch names, calls
`Processor.process` once per batch, produces the events, then writes the states. Writing the
states only after Kafka acknowledged the events means a crash in between ships again rather
than never (at-least-once).

Dedupe modes (docs/decisions/0004-dedupe-rule.md, 0006-window-mode.md):
- `off`: every record ships, no state.
- `realtime`: an audit ships unless everything it carries was shipped for the record within
  the collation horizon; exact copies are dropped.
- `window`: a record's audits are held in its state and ship as one merged event when the
  window has passed (a `flush` tick), the group is full, or the worker stops (`flush-now`).
Ticks also expire idle records' state (`expire`). Timers cannot write tables, so they send
ticks to a topic co-partitioned with the raw topic and the agent hands them in here, in order
with the record's audits; `due_windows`, `expired_keys` and `flush_ticks` say which to send.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from forwarder import records
from forwarder.core import dedupe, window
from forwarder.core.normalize import Provenance, event_epoch, normalize, parse_body
from forwarder.core.state import HeldGroup, RecordState

TICK_FLUSH = b"flush"  # ship the group if its window has passed
TICK_FLUSH_NOW = b"flush-now"  # ship the group now: the worker is stopping
TICK_EXPIRE = b"expire"  # forget the record's state if it is still idle
# Major version of forwarder/schemas/aha-audit-event.v<N>.json that the events follow.
EVENT_SCHEMA_VERSION = b"2"
TICK_KEYS = 1000  # keys named by one partition tick

# Headers of the raw record that travel on with the normalized event.
CARRIED_HEADERS = (
    records.HEADER_RECEIVED_AT,
    records.HEADER_SOURCE,
    records.HEADER_TOKEN_ID,
    records.HEADER_BODY_SHA256,
    records.HEADER_REQUEST_ID,
)

Mode = Literal["realtime", "window", "off"]


@dataclass(frozen=True)
class Settings:
    """What the processor needs of the configuration."""

    mode: Mode = "realtime"
    horizon: float = 3600.0
    retention: float = 7 * 86400.0
    max_audits: int = 1000
    window_seconds: float = 120.0
    window_max_audits: int = 100
    include_original: bool = False
    accounts: Mapping[str, str | None] = field(default_factory=dict)  # token name -> account


@dataclass(frozen=True, slots=True)
class Raw:
    """A record of the raw topic."""

    key: bytes | None
    value: bytes
    headers: Mapping[str, str]
    partition: int


@dataclass(frozen=True, slots=True)
class Tick:
    """A tick: what to do (`TICK_*`) for the named record keys."""

    keys: list[bytes]
    kind: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event for the events topic."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """An open window, as the timer's index (the `held` table) knows it."""

    opened: float
    partition: int
    audits: int

    def encode(self) -> bytes:
        """The index table's value (field names kept from the first stored format)."""
        return orjson.dumps({"opened": self.opened, "p": self.partition, "n": self.audits})

    @staticmethod
    def decode(raw: bytes) -> IndexEntry:
        """An index entry from its table value."""
        data = orjson.loads(raw)
        return IndexEntry(float(data["opened"]), int(data.get("p", -1)), int(data.get("n", 0)))


@dataclass
class Counts:
    """What a batch did, for the metrics (counted per batch, not per event)."""

    events_in: int = 0
    events_out: Counter[str] = field(default_factory=Counter)  # "audit" | "other"
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    revisions: int = 0
    merged: int = 0
    expired: int = 0
    held_seconds: list[float] = field(default_factory=list)


@dataclass
class Result:
    """The outcome of a batch: events to produce, then state and index writes (None deletes)."""

    events: list[Outgoing] = field(default_factory=list)
    states: dict[bytes, RecordState | None] = field(default_factory=dict)
    index: dict[bytes, IndexEntry | None] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)


def keys_of(item: Raw | Tick) -> list[bytes]:
    """The record keys whose state processing `item` reads and writes."""
    if isinstance(item, Tick):
        return item.keys
    return [item.key] if item.key else []


def parse_tick(key: bytes | None, value: bytes) -> Tick:
    """A tick record: one key (the record's key, value the kind), or a partition's due keys.

    A partition tick's value is {"flush": [keys], "now": bool}; record keys are bytes, and
    latin-1 carries them through JSON unchanged.
    """
    if key:
        return Tick([key], value)
    try:
        tick = orjson.loads(value)
        named, now = tick.get("flush", []), tick.get("now", False)
    except (orjson.JSONDecodeError, AttributeError):
        return Tick([], TICK_FLUSH)
    keys = [str(each).encode("latin-1") for each in named]
    return Tick(keys, TICK_FLUSH_NOW if now else TICK_FLUSH)


def flush_ticks(
    due: Mapping[int, list[bytes]], kind: bytes
) -> list[tuple[bytes | None, bytes, int | None]]:
    """The tick records (key, value, partition) asking the agent to flush `due` windows."""
    ticks: list[tuple[bytes | None, bytes, int | None]] = []
    for partition, keys in due.items():
        if partition < 0:  # held before groups knew their partition: one tick per key
            ticks.extend((key, kind, None) for key in keys)
            continue
        for start in range(0, len(keys), TICK_KEYS):
            chunk = [key.decode("latin-1") for key in keys[start : start + TICK_KEYS]]
            value = orjson.dumps({"flush": chunk, "now": kind == TICK_FLUSH_NOW})
            ticks.append((None, value, partition))
    return ticks


class Processor:
    """The normalize worker's logic, one batch at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def stateful(self) -> bool:
        """Whether records have state (and ticks): every mode but `off`."""
        return self.settings.mode != "off"

    def process(
        self,
        items: Iterable[Raw | Tick],
        states: Mapping[bytes, RecordState | None],
        *,
        now: float,
    ) -> Result:
        """Process a batch, given the stored state of every key it names (`keys_of`)."""
        batch = _Batch(self, states, now)
        for item in items:
            if isinstance(item, Tick):
                for key in item.keys:
                    batch.tick(key, item.kind)
            else:
                batch.record(item)
        return batch.result

    def expired(self, state: RecordState, now: float) -> bool:
        """Whether a record's state has been idle past the retention (the sweep ticks it)."""
        return dedupe.expired(state, now, self.settings.retention)

    def due(self, entry: IndexEntry, now: float) -> bool:
        """Whether an open window has passed (the timer ticks it)."""
        return now - entry.opened >= self.settings.window_seconds


class _Batch:
    """One batch's work: the states as they stand after each item, and what comes out."""

    def __init__(
        self, processor: Processor, stored: Mapping[bytes, RecordState | None], now: float
    ) -> None:
        self.settings = processor.settings
        self.stored = stored
        self.now = now
        self.now_iso = records.iso_millis(datetime.fromtimestamp(now, UTC))
        self.result = Result()
        self.counts = self.result.counts

    def state(self, key: bytes) -> RecordState | None:
        states = self.result.states
        return states[key] if key in states else self.stored.get(key)

    def record(self, raw: Raw) -> None:
        self.counts.events_in += 1
        body = parse_body(raw.value)
        key = raw.key
        mode = self.settings.mode
        if mode == "window" and key and body.get("event") == "audit":
            audit = body.get("audit")
            if isinstance(audit, dict):
                self.hold(key, raw.partition, body, audit, raw.headers)
                return
        decision = None
        if mode != "off" and key:
            decision = self.decide(key, raw, body)
            if not decision.ship:
                return
        doc = normalize(
            body,
            self.provenance(raw.headers),
            now=self.now_iso,
            original=raw.value if self.settings.include_original else None,
        )
        if decision is not None:
            dedupe.annotate(doc, decision)
        self.emit(doc, key, raw.headers)

    def decide(self, key: bytes, raw: Raw, body: Any) -> dedupe.Decision:
        headers = raw.headers
        body_sha256 = (
            headers.get(records.HEADER_BODY_SHA256) or hashlib.sha256(raw.value).hexdigest()
        )
        decision = dedupe.decide(
            self.state(key),
            dedupe.subject(body, body_sha256),
            event_time=event_epoch(body) or records.received_epoch(headers) or self.now,
            now=self.now,
            horizon=self.settings.horizon,
            max_audits=self.settings.max_audits,
        )
        self.result.states[key] = decision.state
        if decision.revision:
            self.counts.revisions += 1
        if not decision.ship:
            self.counts.dropped[decision.reason or "unknown"] += 1
        return decision

    def hold(
        self,
        key: bytes,
        partition: int,
        body: Any,
        audit: dict[str, Any],
        headers: Mapping[str, str],
    ) -> None:
        """Window mode: hold an audit (or drop a copy); ship the group when it is full."""
        event_time = event_epoch(body) or records.received_epoch(headers) or self.now
        copy, revision, state = dedupe.observe(
            self.state(key),
            audit,
            event_time=event_time,
            now=self.now,
            max_audits=self.settings.max_audits,
        )
        self.result.states[key] = state
        if copy:
            self.counts.dropped["exact"] += 1
            if state.held:
                # A copy of a held audit: make sure the timer knows the window (its index
                # entry may not have survived a crash that the state did).
                self.result.index[key] = _index(state.held, partition)
            return
        if revision:
            self.counts.revisions += 1
        group = window.hold(state.held, audit, headers, now=self.now, event_time=event_time)
        state.held = group
        self.result.index[key] = _index(group, partition)
        if len(group["audits"]) >= self.settings.window_max_audits:
            self.flush(key)

    def flush(self, key: bytes) -> None:
        """Ship a held group as one merged event (or suppress it when all of it was shipped)."""
        self.result.index[key] = None
        current = self.state(key)
        group = current.held if current else None
        if not group or not group["audits"]:
            return
        audits = [(entry["audit"], float(entry["time"])) for entry in group["audits"]]
        ship, state = dedupe.decide_group(
            current, audits, now=self.now, horizon=self.settings.horizon
        )
        state.held = None
        self.result.states[key] = state
        held_seconds = max(0.0, self.now - float(group["opened"]))
        self.counts.held_seconds.append(held_seconds)
        if not ship:
            self.counts.dropped["collated"] += len(audits)
            return
        self.counts.merged += len(audits)
        body, info = window.merge(group)
        headers = window.first_headers(group)
        doc = normalize(body, self.provenance(headers), now=self.now_iso)
        window.annotate(doc, info, held_seconds=held_seconds)
        self.emit(doc, key, headers)

    def tick(self, key: bytes, kind: bytes) -> None:
        if kind in (TICK_FLUSH, TICK_FLUSH_NOW):
            if self.settings.mode != "window":
                return
            state = self.state(key)
            group = state.held if state else None
            if group is None:
                self.result.index[key] = None  # an index entry whose group is gone (flushed)
            elif kind == TICK_FLUSH_NOW or window.due(
                group, now=self.now, window=self.settings.window_seconds
            ):
                self.flush(key)
        elif kind == TICK_EXPIRE:
            state = self.state(key)
            if (
                state is not None
                and dedupe.expired(state, self.now, self.settings.retention)
                and not state.held
            ):
                self.result.states[key] = None
                self.counts.expired += 1

    def provenance(self, headers: Mapping[str, str]) -> Provenance:
        token_id = headers.get(records.HEADER_TOKEN_ID)
        return Provenance(
            received_at=headers.get(records.HEADER_RECEIVED_AT),
            source=headers.get(records.HEADER_SOURCE),
            source_ip=headers.get(records.HEADER_SOURCE_IP),
            token_id=token_id,
            body_sha256=headers.get(records.HEADER_BODY_SHA256),
            account=self.settings.accounts.get(token_id) if token_id else None,
        )

    def emit(self, doc: dict[str, Any], key: bytes | None, headers: Mapping[str, str]) -> None:
        carried = [(name, headers[name].encode()) for name in CARRIED_HEADERS if name in headers]
        carried.append((records.HEADER_SCHEMA_VERSION, EVENT_SCHEMA_VERSION))
        self.counts.events_out["audit" if doc["aha"]["event"] == "audit" else "other"] += 1
        self.result.events.append(Outgoing(key, orjson.dumps(doc), carried))


def _index(group: HeldGroup, partition: int) -> IndexEntry:
    return IndexEntry(float(group["opened"]), partition, len(group["audits"]))
