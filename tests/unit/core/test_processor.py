"""The normalize worker's processor, driven through every mode and tick without Faust or Kafka."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from forwarder import records
from forwarder.core.dedupe import decode_state, encode_state
from forwarder.core.processor import (
    TICK_EXPIRE,
    TICK_FLUSH,
    TICK_FLUSH_NOW,
    IndexEntry,
    Processor,
    Raw,
    Result,
    Settings,
    Tick,
    flush_ticks,
    keys_of,
    parse_tick,
)
from forwarder.core.state import RecordState

COLLATION = Path(__file__).resolve().parents[3] / "forwarder" / "samples" / "collation"
KEY = b"feature:7712852315515633009"
NOW = 1_800_000_000.0


def body(name: str) -> bytes:
    return (COLLATION / f"{name}.json").read_bytes()


PARTS = [body("pre_collation_1"), body("pre_collation_2"), body("pre_collation_3")]
COLLATED = body("collated_new_id")


def raw(value: bytes, key: bytes | None = KEY, **headers: str) -> Raw:
    return Raw(key, value, {records.HEADER_SOURCE: "webhook", **headers}, 3)


class Driver:
    """Feeds batches as the runtime does: the stored state of each key in, the writes kept."""

    def __init__(self, **settings: Any) -> None:
        self.processor = Processor(Settings(**settings))
        self.store: dict[bytes, bytes] = {}
        self.index: dict[bytes, IndexEntry] = {}
        self.reads: list[bytes] = []

    def batch(self, items: list[Raw | Tick], now: float = NOW) -> Result:
        keys = {key for item in items for key in keys_of(item)}
        self.reads.extend(keys)
        states = {key: decode_state(self.store.get(key)) for key in keys}
        result = self.processor.process(items, states, now=now)
        for key, state in result.states.items():
            if state is None:
                self.store.pop(key, None)
            else:
                self.store[key] = encode_state(state)
        for key, entry in result.index.items():
            if entry is None:
                self.index.pop(key, None)
            else:
                self.index[key] = entry
        return result

    def state(self, key: bytes = KEY) -> RecordState | None:
        return decode_state(self.store.get(key))


def events(result: Result) -> list[dict[str, Any]]:
    return [orjson.loads(event.value) for event in result.events]


def test_off_ships_every_record_and_keeps_no_state() -> None:
    driver = Driver(mode="off")
    result = driver.batch([raw(PARTS[0]), raw(PARTS[0]), raw(COLLATED)])
    assert len(result.events) == 3
    assert result.states == {} and driver.store == {}
    assert result.counts.events_in == 3 and result.counts.events_out["audit"] == 3
    assert not driver.processor.stateful


def test_off_ignores_ticks() -> None:
    result = Driver(mode="off").batch([Tick([KEY], TICK_FLUSH_NOW), Tick([KEY], TICK_EXPIRE)])
    assert result.events == [] and result.states == {} and result.index == {}


def test_realtime_ships_the_parts_and_suppresses_the_collated_audit_in_one_batch() -> None:
    driver = Driver(mode="realtime")
    result = driver.batch([raw(part) for part in PARTS] + [raw(COLLATED), raw(PARTS[1])])
    ids = [event["aha"]["audit"]["id"] for event in events(result)]
    assert ids == [orjson.loads(part)["audit"]["id"] for part in PARTS]
    assert dict(result.counts.dropped) == {"collated": 1, "exact": 1}
    # One state write for the key, whatever the batch held of it.
    assert list(result.states) == [KEY]
    assert driver.reads == [KEY]


def test_realtime_state_carries_across_batches_through_the_store() -> None:
    driver = Driver(mode="realtime")
    driver.batch([raw(part) for part in PARTS])
    again = driver.batch([raw(PARTS[0]), raw(COLLATED)])
    assert again.events == []
    assert dict(again.counts.dropped) == {"exact": 1, "collated": 1}


def test_realtime_a_collated_audit_first_ships_and_lists_nothing_it_supersedes_yet() -> None:
    result = Driver(mode="realtime").batch([raw(COLLATED)])
    (event,) = events(result)
    assert event["aha"]["collation"]["supersedes"] == []
    assert {header for header, _ in result.events[0].headers} >= {
        records.HEADER_SOURCE,
        records.HEADER_SCHEMA_VERSION,
    }


def test_realtime_a_record_without_key_ships_without_state() -> None:
    result = Driver(mode="realtime").batch([raw(PARTS[0], key=None), raw(PARTS[0], key=None)])
    assert len(result.events) == 2 and result.states == {}


def test_realtime_other_event_types_ship_once_per_body() -> None:
    other = orjson.dumps({"event": "security", "security": {"id": 7, "what": "login"}})
    result = Driver(mode="realtime").batch([raw(other), raw(other)])
    assert len(result.events) == 1
    assert events(result)[0]["aha"]["event"] == "security"
    assert result.counts.events_out["other"] == 1


def test_window_holds_then_a_flush_tick_after_the_window_ships_one_merged_event() -> None:
    driver = Driver(mode="window", window_seconds=60.0)
    held = driver.batch([raw(part) for part in PARTS] + [raw(PARTS[0])])
    assert held.events == []
    assert held.index[KEY] == IndexEntry(NOW, 3, 3)
    assert held.counts.dropped["exact"] == 1
    early = driver.batch([Tick([KEY], TICK_FLUSH)], now=NOW + 30)
    assert early.events == [] and early.states == {}
    late = driver.batch([Tick([KEY], TICK_FLUSH)], now=NOW + 61)
    (event,) = events(late)
    sources = [orjson.loads(part)["audit"]["id"] for part in PARTS]
    assert event["aha"]["collation"]["mode"] == "window"
    assert sorted(event["aha"]["collation"]["sources"]) == sorted(sources)
    assert event["aha"]["collation"]["held_seconds"] == 61.0
    assert late.index == {KEY: None} and KEY not in driver.index
    state = driver.state()
    assert state is not None and state.held is None
    assert all(seen.shipped for seen in state.audits.values())
    assert late.counts.merged == 3 and late.counts.held_seconds == [61.0]


def test_window_a_collated_audit_after_its_parts_shipped_is_suppressed() -> None:
    driver = Driver(mode="window", window_seconds=60.0)
    driver.batch([raw(part) for part in PARTS])
    driver.batch([Tick([KEY], TICK_FLUSH)], now=NOW + 61)
    driver.batch([raw(COLLATED)], now=NOW + 62)
    result = driver.batch([Tick([KEY], TICK_FLUSH)], now=NOW + 200)
    assert result.events == [] and result.counts.dropped["collated"] == 1


def test_window_a_full_group_ships_at_once() -> None:
    driver = Driver(mode="window", window_seconds=600.0, window_max_audits=3)
    result = driver.batch([raw(part) for part in PARTS])
    assert len(result.events) == 1 and result.index == {KEY: None}


def test_window_flush_now_ships_a_window_that_has_not_passed() -> None:
    driver = Driver(mode="window", window_seconds=600.0)
    driver.batch([raw(PARTS[0])])
    result = driver.batch([Tick([KEY], TICK_FLUSH_NOW)], now=NOW + 1)
    assert len(result.events) == 1


def test_window_a_tick_for_a_group_already_flushed_clears_its_index_entry() -> None:
    driver = Driver(mode="window")
    result = driver.batch([Tick([KEY], TICK_FLUSH)])
    assert result.index == {KEY: None} and result.events == []


def test_window_other_event_types_are_not_held() -> None:
    other = orjson.dumps({"event": "security", "security": {"id": 7}})
    result = Driver(mode="window").batch([raw(other)])
    assert len(result.events) == 1 and result.index == {}


def test_window_a_copy_of_a_held_audit_restores_the_index_entry() -> None:
    driver = Driver(mode="window")
    driver.batch([raw(PARTS[0])])
    driver.index.clear()  # lost in a crash that the state survived
    result = driver.batch([raw(PARTS[0])], now=NOW + 5)
    assert result.index[KEY] == IndexEntry(NOW, 3, 1)


@pytest.mark.parametrize("mode", ["realtime", "window"])
def test_expiry_forgets_an_idle_record_only(mode: str) -> None:
    driver = Driver(mode=mode, retention=100.0, window_seconds=10.0)
    driver.batch([raw(PARTS[0])])
    if mode == "window":
        # A record with an open window is never expired, however long it was idle.
        kept = driver.batch([Tick([KEY], TICK_EXPIRE)], now=NOW + 500)
        assert kept.states == {}
        driver.batch([Tick([KEY], TICK_FLUSH)], now=NOW + 20)
    state = driver.state()
    assert state is not None
    assert not driver.processor.expired(state, NOW + 50)
    assert driver.batch([Tick([KEY], TICK_EXPIRE)], now=NOW + 50).states == {}
    assert driver.processor.expired(state, NOW + 1000)
    result = driver.batch([Tick([KEY], TICK_EXPIRE)], now=NOW + 1000)
    assert result.states == {KEY: None} and result.counts.expired == 1
    assert KEY not in driver.store


def test_the_runtime_reads_each_key_once_per_batch_however_many_items_name_it() -> None:
    driver = Driver(mode="window", window_seconds=1.0)
    other = b"feature:2"
    driver.batch([raw(PARTS[0]), Tick([KEY, other], TICK_FLUSH), raw(PARTS[1])])
    assert sorted(driver.reads) == sorted([KEY, other])


def test_partition_ticks_round_trip_and_chunk() -> None:
    keys = [f"feature:{n}".encode() for n in range(2500)] + ["é:1".encode("latin-1")]
    ticks = flush_ticks({5: keys, -1: [b"old"]}, TICK_FLUSH_NOW)
    partitioned = [tick for tick in ticks if tick[2] == 5]
    assert len(partitioned) == 3
    named = [key for _, value, _ in partitioned for key in parse_tick(None, value).keys]
    assert named == keys
    assert {parse_tick(None, value).kind for _, value, _ in partitioned} == {TICK_FLUSH_NOW}
    assert (b"old", TICK_FLUSH_NOW, None) in ticks
    assert parse_tick(KEY, TICK_EXPIRE) == Tick([KEY], TICK_EXPIRE)
    assert parse_tick(None, b"not json") == Tick([], TICK_FLUSH)


def test_include_original_carries_the_raw_body() -> None:
    result = Driver(mode="off", include_original=True).batch([raw(PARTS[0])])
    assert events(result)[0]["event"]["original"] == PARTS[0].decode()


def test_the_account_comes_from_the_token_the_webhook_used() -> None:
    driver = Driver(mode="off", accounts={"acme-token": "acme"})
    result = driver.batch([raw(PARTS[0], **{records.HEADER_TOKEN_ID: "acme-token"})])
    assert "acme" in orjson.dumps(events(result)[0]).decode()
