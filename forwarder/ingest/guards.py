"""Request guards of the ingest: client address behind proxies, and rate limits."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _in_any(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, from X-Forwarded-For.

    The header is read right to left and the first address that is not a trusted proxy wins, so a
    client cannot forge its address by sending the header itself.
    """
    if not forwarded_for or not _in_any(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain proves nothing beyond the proxy itself
        if not _in_any(hop, trusted):
            return hop
    return hops[0] if hops else peer


def allowed(address: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether the address is in the allow-list (an empty list allows everyone)."""
    return not networks or _in_any(address, networks)


class KeyedRateLimiter:
    """Token buckets per key (a client address), bounded in memory by dropping the stalest keys."""

    def __init__(self, rate_per_second: float, burst: int, max_keys: int = 100_000) -> None:
        self._rate = rate_per_second
        self._burst = float(burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - stamp) * self._rate)

    def exhausted(self, key: str, now: float) -> bool:
        """Whether the key has no whole token left (nothing is consumed)."""
        return key in self._buckets and self._level(key, now) < 1.0

    def consume(self, key: str, now: float) -> bool:
        """Take one token; False when there was none."""
        level = self._level(key, now)
        granted = level >= 1.0
        self._buckets[key] = (level - 1.0 if granted else level, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return granted

    def __len__(self) -> int:
        return len(self._buckets)
