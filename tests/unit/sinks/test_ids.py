from __future__ import annotations

from typing import Any

import pytest

from forwarder.sinks.ids import event_key

HASH = "091273e73980fb3e8fe7430de18fbc1fca124e56fade4bdd5ebff88197cc49ce"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"id": "7712852092053880844", "hash": HASH}, "7712852092053880844-091273e73980fb3e"),
        ({"id": "7712852092053880844"}, "7712852092053880844"),
        ({"id": "", "hash": HASH}, HASH[:16]),
        ({"hash": HASH}, HASH[:16]),
    ],
)
def test_key_from_id_and_hash(event: dict[str, Any], expected: str) -> None:
    assert event_key({"event": event}) == expected


def test_a_revision_with_the_same_id_gets_another_key() -> None:
    first = event_key({"event": {"id": "42", "hash": "a" * 64}})
    revision = event_key({"event": {"id": "42", "hash": "b" * 64}})
    assert first != revision
    assert first.startswith("42-") and revision.startswith("42-")


def test_without_id_or_hash_the_key_follows_the_content() -> None:
    one = {"event": {"action": "x"}, "message": "one"}
    assert event_key(one) == event_key({"message": "one", "event": {"action": "x"}})
    assert event_key(one) != event_key({"event": {"action": "x"}, "message": "two"})
