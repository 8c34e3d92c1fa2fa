from __future__ import annotations

from forwarder.sinks.ids import event_key


def doc(ident: str, digest: str = "ab" * 32) -> dict[str, object]:
    return {"event": {"id": ident, "hash": digest}}


def test_an_aha_id_is_kept_readable() -> None:
    assert event_key(doc("7262413470398245107")) == "7262413470398245107-" + "ab" * 8


def test_an_absurdly_long_id_becomes_a_digest_under_elasticsearchs_id_limit() -> None:
    # Elasticsearch refuses an _id over 512 bytes, and the whole bulk request with it.
    long_a, long_b = "9" * 600, "9" * 599 + "8"
    key_a, key_b = event_key(doc(long_a)), event_key(doc(long_b))
    assert len(key_a.encode()) <= 512 and len(key_b.encode()) <= 512
    assert key_a != key_b
    assert key_a == event_key(doc(long_a))  # a resend keeps its key: still idempotent
    assert len(event_key(doc("é" * 300)).encode()) <= 512
