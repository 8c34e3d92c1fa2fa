from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from forwarder.ingest.guards import KeyedRateLimiter, allowed, client_address

PROXY = [ipaddress.ip_network("10.0.0.0/24")]


def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    assert client_address("198.51.100.7", "203.0.113.9", PROXY) == "198.51.100.7"


def test_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    assert client_address("10.0.0.5", "203.0.113.9", PROXY) == "203.0.113.9"


def test_a_client_cannot_forge_its_address_through_the_proxy() -> None:
    # The client sent "X-Forwarded-For: 1.2.3.4"; the proxy appended the real address.
    assert client_address("10.0.0.5", "1.2.3.4, 203.0.113.9", PROXY) == "203.0.113.9"


def test_proxy_chains_are_skipped_and_garbage_is_not_believed() -> None:
    assert client_address("10.0.0.5", "203.0.113.9, 10.0.0.7", PROXY) == "203.0.113.9"
    assert client_address("10.0.0.5", "203.0.113.9, not-an-ip", PROXY) == "10.0.0.5"
    assert client_address("10.0.0.5", "10.0.0.8, 10.0.0.7", PROXY) == "10.0.0.8"


def test_allow_list() -> None:
    networks = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32")]
    assert allowed("203.0.113.9", networks)
    assert allowed("2001:db8::1", networks)
    assert not allowed("198.51.100.7", networks)
    assert not allowed("garbage", networks)
    assert allowed("198.51.100.7", [])


def test_rate_limiter_blocks_after_the_burst_and_recovers_at_the_rate() -> None:
    limiter = KeyedRateLimiter(rate_per_second=1.0, burst=3)
    assert [limiter.consume("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.exhausted("a", 0.5)
    assert not limiter.exhausted("b", 0.5)
    assert not limiter.exhausted("a", 1.1)
    assert limiter.consume("a", 1.1)
    assert not limiter.consume("a", 1.2)


@given(st.lists(st.text(min_size=1, max_size=5), max_size=300))
def test_rate_limiter_memory_is_bounded(keys: list[str]) -> None:
    limiter = KeyedRateLimiter(rate_per_second=1.0, burst=1, max_keys=50)
    for index, key in enumerate(keys):
        limiter.consume(key, float(index))
    assert len(limiter) <= 50
