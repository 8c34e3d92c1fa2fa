"""Backfill's pure parts: the answer rules, back-off, pacing, wrapping, checkpoints, times."""

from __future__ import annotations

import argparse
import hashlib
import io
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from forwarder import records
from forwarder.backfill import checkpoint
from forwarder.backfill.api import (
    AccountNotFound,
    AuthError,
    Fail,
    Ok,
    TokenBucket,
    Wait,
    _unresolvable,
    backoff,
    classify,
    parse_page,
)
from forwarder.backfill.backfill import Summary, slices, token_id_for
from forwarder.backfill.commands import ProgressLine, parse_time, summary_text
from forwarder.backfill.config import AhaAccountConfig, ReconcileConfig
from forwarder.backfill.seen import SeenIndex, index_body
from forwarder.backfill.wrap import normalize_audit, snake_type, wrap
from forwarder.config import ConfigError, parse
from forwarder.core.dedupe import annotate, content_hash, decide, observe, subject
from forwarder.core.normalize import Provenance, event_epoch, normalize, parse_body
from forwarder.core.users import canonical_audit, others
from tests.fakes.aha_api import FakeAhaApi, class_name
from tests.helpers import SAMPLES, sample_paths

ACCOUNT = AhaAccountConfig(name="acme", api_key=SecretStr("k"))
# Aha!'s documented answer of GET /api/v1/audits, with the sample feature_update_status.json.
API_PAGE = Path(__file__).resolve().parents[1] / "data" / "aha_api" / "audits_page.json"
NOW = "2026-11-27T14:10:13.052Z"


def audit_samples() -> list[Path]:
    return [path for path in sample_paths() if orjson.loads(path.read_bytes())["event"] == "audit"]


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {}, Ok()),
        (429, {"retry-after": "7"}, Wait(7.0, rate_limited=True)),
        (429, {}, Wait(None, rate_limited=True)),
        (500, {}, Wait(None)),
        (503, {"retry-after": "3"}, Wait(3.0)),
        (408, {}, Wait(None)),
    ],
)
def test_classify_retries(status: int, headers: dict[str, str], expected: object) -> None:
    assert classify(status, headers, ACCOUNT) == expected


@pytest.mark.parametrize(
    ("status", "kind"), [(401, AuthError), (403, AuthError), (404, AccountNotFound)]
)
def test_classify_fails_with_a_named_error(status: int, kind: type) -> None:
    verdict = classify(status, {}, ACCOUNT)
    assert isinstance(verdict, Fail) and isinstance(verdict.error, kind)
    assert "acme" in str(verdict.error)


def test_classify_rejects_other_client_errors() -> None:
    verdict = classify(400, {}, ACCOUNT)
    assert isinstance(verdict, Fail) and "400" in str(verdict.error)


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(n, rng=lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30, rng=lambda: 1.0) == 60.0
    assert backoff(3, rng=lambda: 0.0) == 2.0


def test_dns_failure_is_recognized_through_wrapping() -> None:
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except socket.gaierror as inner:
            raise ConnectionError("connect failed") from inner
    except ConnectionError as outer:
        assert _unresolvable(outer)
    assert not _unresolvable(ConnectionRefusedError("refused"))


async def test_token_bucket_paces_after_the_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(rate=2.0, burst=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        await bucket.acquire()
    # Two at once, then one every half second.
    assert slept == pytest.approx([0.5, 0.5])


def test_parse_page_reads_pagination_or_a_short_page() -> None:
    page = parse_page(
        orjson.dumps(
            {"audits": [{"id": "1"}], "pagination": {"total_pages": 3, "current_page": 3}}
        ),
        3,
        100,
    )
    assert page.last and page.total_pages == 3
    assert not parse_page(orjson.dumps({"audits": [{"id": "1"}] * 2}), 1, 2).last
    assert parse_page(orjson.dumps({"audits": [{"id": "1"}]}), 1, 2).last


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Feature", "feature"),
        ("Ideas::IdeaEndorsement", "ideas/idea_endorsement"),
        ("StrategicImperative", "strategic_imperative"),
        ("ideas/idea", "ideas/idea"),
        ("tagging", "tagging"),
        (None, None),
    ],
)
def test_snake_type_matches_the_webhook_spelling(given: Any, expected: Any) -> None:
    assert snake_type(given) == expected


# The shape Aha! documents, and the odd ones the wrapper also accepts.
API_SHAPES: dict[str, dict[str, Any]] = {
    "documented": {},
    "rails class names": {"type_style": "class"},
    "every id a number": {"ids_as_numbers": True},
    "record ids as strings": {"record_ids_as_strings": True},
    "flat contributors": {"contributors": "flat"},
    "changes as a mapping": {"changes_as_mapping": True},
}


@pytest.mark.parametrize("path", audit_samples(), ids=lambda path: path.stem)
@pytest.mark.parametrize("shape", API_SHAPES)
def test_wrapped_api_audit_has_the_webhook_identity(path: Path, shape: str) -> None:
    """The dedupe must see a backfilled audit as an exact copy of the webhook's."""
    webhook = orjson.loads(path.read_bytes())
    api = FakeAhaApi(**API_SHAPES[shape]).render(webhook["audit"])
    record = wrap(api, "acme-prod", "2026-11-27T14:10:12.990Z")
    body = orjson.loads(record.value)
    expected = dict(canonical_audit(webhook["audit"]))
    # The body is the webhook's, but for the contributors the API lists on every audit: flat,
    # the author at least, and the same users besides the author as the webhook's.
    listed = body["audit"].pop("contributors")
    assert body == {
        "event": "audit",
        "audit": {key: value for key, value in expected.items() if key != "contributors"},
    }
    assert all("user" not in user for user in listed)
    assert listed or expected["user"] is None
    assert others({**expected, "contributors": listed}) == others(expected)
    assert record.audit == {**body["audit"], "contributors": listed}
    assert record.content_hash == content_hash(expected)
    assert record.key == records.record_key(webhook, "unused")
    assert record.headers == {
        "received-at": "2026-11-27T14:10:12.990Z",
        "source": "backfill",
        "token-id": "acme-prod",
        "body-sha256": hashlib.sha256(record.value).hexdigest(),
    }


def test_the_fake_api_answers_in_the_documented_shape_by_default() -> None:
    """What Aha!'s own example shows: the shape tests/data/aha_api/audits_page.json has."""
    documented = orjson.loads(API_PAGE.read_bytes())["audits"][0]
    webhook = orjson.loads((SAMPLES / "feature_update_status.json").read_bytes())["audit"]
    shown = FakeAhaApi().render(webhook)
    assert isinstance(shown["id"], str) and isinstance(shown["user"]["id"], str)
    assert isinstance(shown["auditable_id"], int)
    assert shown["auditable_type"] == "feature"
    assert shown["contributors"] == [{"user": webhook["user"]}]
    assert isinstance(shown["changes"], list)
    # The same keys and types as the documented example, field by field.
    assert {k: type(v) for k, v in shown.items() if k != "created_at"} == {
        k: type(v) for k, v in documented.items() if k != "created_at"
    }


def test_an_audit_from_the_api_and_by_webhook_is_one_audit() -> None:
    """Done when: a backfilled audit in the API's shape and the same audit by webhook normalize
    to the same related.user, dedupe as copies, and neither counts as collated."""
    [api_audit] = orjson.loads(API_PAGE.read_bytes())["audits"]
    webhook_raw = (SAMPLES / "feature_update_status.json").read_bytes()
    backfilled = wrap(api_audit, "acme-prod", "2026-11-27T14:10:12.990Z")
    # Both as the worker reads them from the raw topic.
    bodies = {"webhook": parse_body(webhook_raw), "backfill": parse_body(backfilled.value)}
    docs = {route: normalize(body, Provenance(), now=NOW) for route, body in bodies.items()}
    priya = ["6514078897796815681", "Priya Menon", "priya.menon@example.com"]
    assert docs["webhook"]["related"] == docs["backfill"]["related"] == {"user": priya}
    assert docs["webhook"]["user"] == docs["backfill"]["user"]
    # The same record key, so both land in the same partition and the same dedupe state.
    assert backfilled.key == records.record_key(bodies["webhook"], "unused")
    for first, second in (("webhook", "backfill"), ("backfill", "webhook")):
        one = decide(
            None,
            subject(bodies[first], "a"),
            event_time=event_epoch(bodies[first]) or 0.0,
            now=100.0,
            horizon=3600.0,
        )
        two = decide(
            one.state,
            subject(bodies[second], "b"),
            event_time=event_epoch(bodies[second]) or 0.0,
            now=200.0,
            horizon=3600.0,
        )
        assert one.ship and not one.collated and not one.revision
        assert (two.ship, two.reason, two.collated) == (False, "exact", False)
        assert "collation" not in annotate(docs[first], one)["aha"]
        # Window mode holds the first and drops the second as a copy too.
        _, _, state = observe(None, bodies[first]["audit"], event_time=1.0, now=1.0)
        assert observe(state, bodies[second]["audit"], event_time=1.0, now=2.0)[0] == "exact"
    # And reconcile, reading the webhook's body from the raw topic, finds this very audit there.
    index = SeenIndex()
    index_body(index, webhook_raw)
    assert index.has(backfilled.audit_id, backfilled.content_hash)


def test_normalize_turns_a_changes_mapping_and_times_into_the_webhook_form() -> None:
    audit = normalize_audit(
        {
            "id": 7712852070579044363,
            "created_at": "2026-11-27T14:05:12.417+00:00",
            "changes": {"Estimate": 5, "Name": "x"},
            "user": {"id": 6514078897796815681, "name": "P"},
            "extra_field": 1,
        }
    )
    assert audit["id"] == "7712852070579044363"
    assert audit["created_at"] == "2026-11-27T14:05:12.417Z"
    assert audit["changes"] == [
        {"field_name": "Estimate", "value": 5},
        {"field_name": "Name", "value": "x"},
    ]
    assert audit["user"] == {"id": "6514078897796815681", "name": "P"}
    assert audit["extra_field"] == 1


def test_class_name_and_snake_type_are_inverse() -> None:
    for record_type in ("feature", "ideas/idea_endorsement", "strategic_initiative"):
        assert snake_type(class_name(record_type)) == record_type


def test_checkpoint_round_trip_and_removal(tmp_path: Path) -> None:
    since = datetime(2026, 11, 1, tzinfo=UTC)
    until = since + timedelta(days=2)
    path = checkpoint.checkpoint_path(tmp_path, "acme", "raw", since, until)
    assert path == checkpoint.checkpoint_path(tmp_path, "acme", "raw", since, until)
    assert path != checkpoint.checkpoint_path(tmp_path, "acme", "raw", since, until + timedelta(1))
    assert checkpoint.load(path) is None
    state = checkpoint.Checkpoint.new("acme", "raw", since, until)
    state.page, state.injected = 4, 300
    checkpoint.save(path, state)
    loaded = checkpoint.load(path)
    assert loaded is not None and (loaded.page, loaded.injected) == (4, 300)
    assert not list(tmp_path.glob("*.tmp"))
    checkpoint.remove(path)
    assert checkpoint.load(path) is None


def test_a_broken_checkpoint_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"account": ')
    assert checkpoint.load(path) is None


def test_slices_cover_the_range_oldest_first() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    end = start + timedelta(hours=50)
    cut = list(slices(start, end, 86400))
    assert [(b - a).total_seconds() / 3600 for a, b in cut] == [24, 24, 2]
    assert cut[0][0] == start and cut[-1][1] == end


def test_parse_time_forms() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_time("2026-11-27T10:00Z", now) == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert parse_time("2026-11-27T10:00", now) == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert parse_time("90m", now) == now - timedelta(minutes=90)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("now", now) == now
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        parse_time("yesterday", now)


def test_config_section_validates_and_reads_the_key_from_the_environment() -> None:
    from forwarder.config import apply_env

    tree = {"aha": {"accounts": [{"name": "Acme"}]}}
    config = parse(apply_env(tree, {"AHA_SIEM_AHA__ACCOUNTS__0__API_KEY": "s3cret"}))
    account = config.aha.accounts[0]
    assert account.name == "acme"
    assert account.url() == "https://acme.aha.io"
    assert account.api_key is not None and account.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    with pytest.raises(ConfigError, match=r"aha\.accounts\.0\.name"):
        parse({"aha": {"accounts": [{"name": "acme.aha.io"}]}})
    with pytest.raises(ConfigError, match="unique"):
        parse({"aha": {"accounts": [{"name": "a"}, {"name": "a"}]}})
    with pytest.raises(ValueError, match="settle_seconds"):
        ReconcileConfig(window_seconds=60, settle_seconds=600)
    # Aha! holds a webhook 5 minutes, a text edit until 5 minutes after the last one: the settled
    # window leaves six times that by default.
    assert ReconcileConfig().settle_seconds == 1800
    assert account.rate_limit.requests_per_second * 60 < 300  # Aha!'s reported limit per IP


def test_token_id_follows_the_ingest_token_of_the_account() -> None:
    config = parse(
        {
            "ingest": {"tokens": [{"name": "acme-prod", "sha256": "a" * 64, "account": "acme"}]},
            "aha": {"accounts": [{"name": "acme"}, {"name": "other"}]},
        }
    )
    acme, other = config.aha.accounts
    assert token_id_for(config, acme) == "acme-prod"
    assert token_id_for(config, other) == "other"
    assert token_id_for(config, other.model_copy(update={"token_id": "x"})) == "x"


class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_line_is_drawn_only_on_a_terminal() -> None:
    summary = Summary(pages=3, audits=300, injected=12, skipped=288, fraction=0.5)
    summary.slice_start = "2026-11-27T00:00:00.000Z"
    terminal = _Terminal(tty=True)
    line = ProgressLine("acme", terminal)
    line(summary)
    line.close()
    text = terminal.getvalue()
    assert text.startswith("\r[acme]") and text.endswith("\n")
    assert "50%" in text and "pages 3" in text and "injected 12" in text and "seen 288" in text
    piped = _Terminal(tty=False)
    ProgressLine("acme", piped)(summary)
    assert piped.getvalue() == ""
    assert "skipped as already seen: 288" in summary_text(summary, dry_run=False)
    assert "would inject: 12" in summary_text(summary, dry_run=True)
