"""The memory bench's pure helpers: /proc reading and the run's distinct records."""

from __future__ import annotations

import os

import orjson

from bench import sample_bodies
from bench.stack import memory_kib, mib
from bench.worker import iter_raw_records as raw_records


def test_memory_of_this_process_and_of_none() -> None:
    got = memory_kib(os.getpid())
    assert got is not None
    assert 0 < got["RssAnon"] <= got["VmRSS"]
    assert memory_kib(None) is None
    assert mib(None) == "-"
    assert mib(1536) == "1.5"


def test_raw_records_are_distinct_across_chunks() -> None:
    bodies = [orjson.loads(body) for body in sample_bodies()]
    rows = [*raw_records(0, 30, 1 << 40, bodies), *raw_records(30, 30, 1 << 40, bodies)]
    audits = [orjson.loads(value) for _, value, _ in rows]
    ids = [body[body["event"]]["id"] for body in audits]
    assert len(set(ids)) == 60
    audit_keys = [key for key, value, _ in rows if orjson.loads(value)["event"] == "audit"]
    assert len(set(audit_keys)) == len(audit_keys)
