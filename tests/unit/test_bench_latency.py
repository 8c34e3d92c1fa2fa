"""The latency bench's pure helpers: percentiles of delays and quantiles of a histogram's buckets."""

from __future__ import annotations

import math

from bench.latency import histogram_quantiles, percentiles


def test_percentiles_of_delays() -> None:
    values = [i / 100 for i in range(1, 101)]  # 0.01 .. 1.00 s
    got = percentiles(values)
    assert got["p50"] == 0.505
    assert math.isclose(got["p99"], 0.9901)
    assert got["max"] == 1.0


def test_percentiles_of_nothing_are_nan() -> None:
    assert all(math.isnan(v) for v in percentiles([]).values())
    assert percentiles([0.3]) == {"p50": 0.3, "p99": 0.3, "max": 0.3}


def test_histogram_quantiles_count_only_what_was_observed_in_between() -> None:
    before = {0.5: 10.0, 1.0: 10.0, 2.5: 10.0, math.inf: 10.0}
    # 100 new observations: 40 under 0.5 s, 55 more under 1 s, 5 under 2.5 s.
    after = {0.5: 50.0, 1.0: 105.0, 2.5: 110.0, math.inf: 110.0}
    got = histogram_quantiles(before, after)
    assert got == {"count": 100.0, "p50_le": 1.0, "p99_le": 2.5, "under_1s": 0.95}


def test_histogram_quantiles_with_nothing_observed() -> None:
    got = histogram_quantiles({1.0: 3.0, math.inf: 3.0}, {1.0: 3.0, math.inf: 3.0})
    assert got["count"] == 0.0
    assert math.isnan(got["p99_le"])
