"""The worker's tables open their RocksDB stores with bounded memory, as configured."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from forwarder.config import ConfigError, parse
from forwarder.pipeline.app import create_app

MiB = 1024 * 1024


@pytest.mark.parametrize("mode, tables", [("realtime", {"dedupe"}), ("window", {"dedupe", "held"})])
def test_each_table_store_gets_the_configured_buffers_and_cache(
    tmp_path: Path, mode: str, tables: set[str]
) -> None:
    config = parse(
        {
            "worker": {
                "data_dir": str(tmp_path),
                "rocksdb": {"write_buffer_bytes": 2 * MiB, "block_cache_bytes": 3 * MiB},
            },
            "dedupe": {"mode": mode},
        }
    )
    app = create_app(config, CollectorRegistry())
    assert set(app.tables) == tables
    for table in app.tables.values():
        options = table.data.rocksdb_options  # the store Faust opens for each partition
        assert options.write_buffer_size == 2 * MiB
        assert options.max_write_buffer_number == 2
        assert options.block_cache_size == 3 * MiB


def test_the_defaults_bound_a_realtime_worker_to_128_mib_of_table_memory(tmp_path: Path) -> None:
    config = parse({"worker": {"data_dir": str(tmp_path)}})
    app = create_app(config, CollectorRegistry())
    options = app.tables["dedupe"].data.rocksdb_options
    per_store = options.write_buffer_size * options.max_write_buffer_number
    per_store += options.block_cache_size
    assert config.topics.partitions * per_store == 128 * MiB


def test_a_write_buffer_too_small_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"worker\.rocksdb\.write_buffer_bytes"):
        parse({"worker": {"rocksdb": {"write_buffer_bytes": 1000}}})
