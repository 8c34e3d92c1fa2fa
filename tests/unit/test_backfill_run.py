"""Backfill runs against the fake Aha! API over real HTTP: paging, rate limits, errors, resume."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber

from forwarder.backfill import backfill, checkpoint
from forwarder.backfill.api import (
    AccountNotFound,
    AhaClient,
    ApiUnavailable,
    AuthError,
    RateLimitNotCleared,
)
from forwarder.backfill.commands import summary_text
from forwarder.backfill.config import AhaAccountConfig, RateLimitConfig
from forwarder.backfill.seen import SeenIndex
from forwarder.config import Config, parse
from tests.fakes.aha_api import FakeAhaApi, make_audit
from tests.fakes.server import AsgiServer

START = datetime(2026, 11, 20, tzinfo=UTC)
END = START + timedelta(days=3)


def spread(count: int) -> list[dict[str, Any]]:
    """`count` audits over [START, END), two of them exactly on slice edges."""
    step = (END - START) / count
    audits = [make_audit(index, START + step * index) for index in range(count)]
    audits.append(make_audit(count, START + timedelta(days=1)))
    audits.append(make_audit(count + 1, START + timedelta(days=2)))
    return audits


class RecordingProducer:
    """Keeps what it is given; raises once `fail_at` sends were made."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes, dict[str, str]]] = []
        self.fail_at = fail_at

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.fail_at is not None and len(self.sent) >= self.fail_at:
            raise ConnectionError("broker went away")
        self.sent.append((topic, value, key, {name: raw.decode() for name, raw in headers}))

    def ids(self) -> list[str]:
        return [orjson.loads(value)["audit"]["id"] for _, value, _, _ in self.sent]


class Sleeps:
    """An asyncio.sleep stand-in that only records."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def fake() -> FakeAhaApi:
    return FakeAhaApi(per_second=None, per_minute=None)


@pytest.fixture
def server(fake: FakeAhaApi) -> Iterator[AsgiServer]:
    with AsgiServer(fake) as running:
        yield running


def account(server: AsgiServer, fake: FakeAhaApi, **changes: Any) -> AhaAccountConfig:
    settings: dict[str, Any] = {
        "name": "acme",
        "api_key": fake.api_key,
        "base_url": server.url,
        "per_page": 50,
        "max_retries": 2,
        "rate_limit": RateLimitConfig(requests_per_second=20, burst=20),
    }
    settings.update(changes)
    return AhaAccountConfig(**settings)


CONFIG: Config = parse(
    {
        "topics": {"raw": "test.raw"},
        "ingest": {"tokens": [{"name": "acme-prod", "sha256": "a" * 64, "account": "acme"}]},
    }
)


async def run(
    acct: AhaAccountConfig,
    producer: RecordingProducer | None,
    *,
    seen: SeenIndex | None = None,
    checkpoint_file: Path | None = None,
    sleep: Sleeps | None = None,
) -> backfill.Summary:
    async with AhaClient(acct, sleep=sleep or Sleeps()) as client:
        return await backfill.run(
            CONFIG,
            acct,
            client,
            START,
            END,
            producer=producer,
            seen=seen,
            checkpoint_file=checkpoint_file,
        )


async def test_pages_through_every_audit_once(fake: FakeAhaApi, server: AsgiServer) -> None:
    audits = spread(230)
    fake.add(*audits)
    producer = RecordingProducer()
    summary = await run(account(server, fake), producer)
    assert Counter(producer.ids()) == Counter(audit["id"] for audit in audits)
    assert summary.audits >= len(audits)
    # Edge audits come back in two slices (the fake's bounds are inclusive) and are sent once.
    assert summary.duplicates == 2
    assert summary.pages == len(fake.page_requests()) >= 5
    topic, _, key, headers = producer.sent[0]
    assert topic == "test.raw"
    assert key.startswith(b"feature:")
    assert headers["source"] == "backfill" and headers["token-id"] == "acme-prod"


@pytest.mark.parametrize("order", ["newest_first", "oldest_first"])
async def test_nothing_depends_on_the_order_aha_lists_audits_in(order: str) -> None:
    """Aha! does not document the order of its answer; the fake can list either way."""
    fake = FakeAhaApi(order=order, per_minute=None)
    audits = spread(90)
    fake.add(*audits)
    with AsgiServer(fake) as listed:
        async with AhaClient(account(listed, fake, per_page=7)) as client:
            page = await client.audits(START, END, 1)
        times = [audit["created_at"] for audit in page.audits]
        assert times == sorted(times, reverse=order == "newest_first")
        producer = RecordingProducer()
        await run(account(listed, fake, per_page=7), producer)
    assert Counter(producer.ids()) == Counter(audit["id"] for audit in audits)


async def test_audits_already_in_the_raw_topic_are_skipped(
    fake: FakeAhaApi, server: AsgiServer
) -> None:
    audits = spread(40)
    fake.add(*audits)
    seen = SeenIndex()
    for audit in audits[::2]:
        seen.add(audit["id"], "any-hash")
    producer = RecordingProducer()
    summary = await run(account(server, fake), producer, seen=seen)
    assert sorted(producer.ids()) == sorted(audit["id"] for audit in audits[1::2])
    assert summary.skipped == len(audits[::2])
    assert summary.changed == len(audits[::2])  # the stored hash differs from the API's


async def test_rate_limit_bursts_are_waited_out_as_retry_after_says(
    fake: FakeAhaApi, server: AsgiServer
) -> None:
    fake.add(*spread(20))
    fake.burst_429, fake.retry_after = 3, "2"
    sleeps = Sleeps()
    producer = RecordingProducer()
    async with AhaClient(account(server, fake), sleep=sleeps) as client:
        await backfill.run(CONFIG, client.account, client, START, END, producer=producer, seen=None)
        assert client.stats.rate_limited == 3
        assert client.stats.statuses["429"] == 3
    assert sleeps.calls.count(2.0) == 3
    assert len(set(producer.ids())) == 22


async def test_a_rate_limit_without_retry_after_backs_off(
    fake: FakeAhaApi, server: AsgiServer
) -> None:
    fake.add(*spread(5))
    fake.burst_429, fake.retry_after = 2, None
    sleeps = Sleeps()
    producer = RecordingProducer()
    await run(account(server, fake), producer, sleep=sleeps)
    assert len(sleeps.calls) >= 2 and all(0.4 <= s <= 60 for s in sleeps.calls[:2])
    assert len(set(producer.ids())) == 7


async def test_a_rate_limit_that_does_not_clear_fails(fake: FakeAhaApi, server: AsgiServer) -> None:
    fake.add(*spread(5))
    fake.burst_429, fake.retry_after = 1000, "2"
    acct = account(
        server,
        fake,
        rate_limit=RateLimitConfig(requests_per_second=20, burst=20, max_wait_seconds=5),
    )
    with pytest.raises(RateLimitNotCleared, match="429"):
        await run(acct, RecordingProducer())


async def test_the_real_rate_limit_of_the_fake_is_respected(server: AsgiServer) -> None:
    """A client paced below 20/s never sees the fake's 429 while paging many pages."""
    fake = FakeAhaApi(per_second=20, per_minute=None)
    fake.add(*spread(60))
    with AsgiServer(fake) as limited:
        acct = account(
            limited, fake, per_page=5, rate_limit=RateLimitConfig(requests_per_second=10, burst=2)
        )
        sleeps: list[float] = []
        async with AhaClient(acct) as client:
            await backfill.run(CONFIG, acct, client, START, END, producer=None, seen=None)
            assert client.stats.statuses.get("429", 0) == 0
            sleeps.append(client.stats.rate_limit_wait_seconds)
    assert sleeps == [0.0]


async def test_a_wrong_api_key_is_an_auth_error_without_the_key(
    fake: FakeAhaApi, server: AsgiServer
) -> None:
    acct = account(server, fake, api_key="not-the-key")
    with pytest.raises(AuthError) as raised:
        await run(acct, RecordingProducer())
    assert "not-the-key" not in str(raised.value)
    assert "API key" in str(raised.value)


async def test_an_unknown_account_is_not_found(fake: FakeAhaApi, server: AsgiServer) -> None:
    fake.not_found = True
    with pytest.raises(AccountNotFound, match="subdomain"):
        await run(account(server, fake), RecordingProducer())


async def test_server_errors_are_retried_then_given_up(
    fake: FakeAhaApi, server: AsgiServer
) -> None:
    fake.add(*spread(5))
    fake.fail_status, fake.fail_count = 502, 2
    producer = RecordingProducer()
    await run(account(server, fake), producer)
    assert len(set(producer.ids())) == 7
    fake.fail_count = 100
    with pytest.raises(ApiUnavailable, match="502"):
        await run(account(server, fake), RecordingProducer())


async def test_resume_from_the_checkpoint_after_a_crash(
    fake: FakeAhaApi, server: AsgiServer, tmp_path: Path
) -> None:
    audits = spread(200)
    fake.add(*audits)
    path = tmp_path / "acme.json"
    acct = account(server, fake, max_retries=0)
    answered = []

    def crash_on_fourth_page(query: dict[str, str]) -> None:
        answered.append(query)
        if len(answered) == 4:
            fake.fail_status, fake.fail_count = 500, 1

    fake.on_page = crash_on_fourth_page
    first = RecordingProducer()
    with pytest.raises(ApiUnavailable):
        await run(acct, first, checkpoint_file=path)
    saved = checkpoint.load(path)
    assert saved is not None and saved.pages == 4
    fake.on_page = None
    fake.requests.clear()
    second = RecordingProducer()
    summary = await run(acct, second, checkpoint_file=path)
    # The second run starts where the first stopped: no page fetched twice.
    first_request = fake.requests[0]
    assert first_request["created_since"].startswith(saved.slice_start[:19])
    assert int(first_request["page"]) == saved.page
    assert Counter(first.ids() + second.ids()) == Counter(audit["id"] for audit in audits)
    assert summary.resumed_from is not None
    assert summary.injected == len(audits)
    assert not path.exists()


async def test_a_crash_of_kafka_mid_page_resends_only_that_page(
    fake: FakeAhaApi, server: AsgiServer, tmp_path: Path
) -> None:
    audits = spread(120)
    fake.add(*audits)
    path = tmp_path / "acme.json"
    first = RecordingProducer(fail_at=75)
    with pytest.raises(ConnectionError):
        await run(account(server, fake), first, checkpoint_file=path)
    second = RecordingProducer()
    await run(account(server, fake), second, checkpoint_file=path)
    counts = Counter(first.ids() + second.ids())
    assert set(counts) == {audit["id"] for audit in audits}
    # At least once: only audits of the interrupted page may appear twice.
    assert sum(1 for n in counts.values() if n > 1) <= 50


class RefusingProducer(RecordingProducer):
    """Kafka refuses one audit for good; the producer's state breaks once and needs replacing."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse
        self.broken = True
        self.recreated = 0

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.broken and len(self.sent) == 10:
            raise OutOfOrderSequenceNumber()
        if orjson.loads(value)["audit"]["id"] == self.refuse:
            raise MessageSizeTooLargeError("The message is 3000000 bytes when serialized")
        await super().send(topic, value, key, headers)

    async def recreate(self) -> None:
        self.recreated += 1
        self.broken = False


async def test_an_audit_kafka_refuses_is_reported_and_the_backfill_goes_on(
    fake: FakeAhaApi, server: AsgiServer, tmp_path: Path
) -> None:
    audits = spread(60)
    fake.add(*audits)
    refused = audits[5]["id"]
    producer = RefusingProducer(refuse=refused)
    summary = await run(account(server, fake), producer, checkpoint_file=tmp_path / "acme.json")
    assert summary.refused_ids == [refused]
    assert set(producer.ids()) == {audit["id"] for audit in audits} - {refused}
    assert summary.injected == len(audits) - 1
    # The broken producer was replaced once, not retried for ever.
    assert producer.recreated == 1
    assert "refused by Kafka" in summary_text(summary, dry_run=False)


def filtered_stream() -> tuple[list[dict[str, Any]], set[str]]:
    """Audits of several workspaces, record types, fields and users; and the ids an activity
    webhook filtered to workspace DEMO, features, `Workflow status` and Priya would send."""
    audits, sent = [], set()
    mallory = {"id": "42", "name": "Mallory", "email": "mallory@example.com"}
    for index in range(40):
        audit = make_audit(index, START + timedelta(minutes=index))
        kind = index % 5
        if kind == 1:
            audit["auditable_url"] = f"https://acme.aha.io/features/OPS-{index}"
            audit["description"] = f"updated feature OPS-{index}"
        elif kind == 2:
            audit["auditable_type"] = "release"
        elif kind == 3:
            audit["changes"] = [{"field_name": "Workflow status", "value": "a &rarr; b"}]
            audit["user"] = mallory
        else:
            audit["changes"].append({"field_name": "Workflow status", "value": "x &rarr; y"})
        if kind in (0, 4):
            sent.add(audit["id"])
        audits.append(audit)
    return audits, sent


FILTERS = {
    "workspaces": ["DEMO"],
    "record_types": ["feature"],
    "fields": ["Workflow status"],
    "users": ["p@example.com"],
}


async def test_only_what_the_filtered_webhook_would_have_sent_is_injected(
    fake: FakeAhaApi, server: AsgiServer
) -> None:
    audits, sent = filtered_stream()
    fake.add(*audits)
    producer = RecordingProducer()
    summary = await run(account(server, fake, filters=FILTERS), producer)
    assert set(producer.ids()) == sent
    assert summary.injected == len(sent)
    assert summary.filtered == {"workspace": 8, "record_type": 8, "user": 8}
    assert "left out by the webhook's filters: 24 (record_type 8, user 8, workspace 8)" in (
        summary_text(summary, dry_run=False)
    )
    # Without filters, everything is injected.
    everything = RecordingProducer()
    assert (await run(account(server, fake), everything)).filtered == {}
    assert len(everything.ids()) == len(audits)


async def test_a_dry_run_sends_nothing_and_saves_nothing(
    fake: FakeAhaApi, server: AsgiServer, tmp_path: Path
) -> None:
    fake.add(*spread(30))
    path = tmp_path / "acme.json"
    summary = await run(account(server, fake), None, checkpoint_file=path)
    assert summary.injected == 32
    assert not path.exists()


def cli(tmp_path: Path, acct: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "aha": {"accounts": [acct], "checkpoint_dir": str(tmp_path / "ckpt")},
                "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            }
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "forwarder", "backfill", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_cli_dry_run_prints_a_summary(fake: FakeAhaApi, server: AsgiServer, tmp_path: Path) -> None:
    fake.add(*spread(30))
    acct = {"name": "acme", "api_key": fake.api_key, "base_url": server.url, "per_page": 10}
    since, until = START.isoformat(), END.isoformat()
    done = cli(tmp_path, acct, "--since", since, "--until", until, "--dry-run", "--resend-seen")
    assert done.returncode == 0, done.stderr
    assert "would inject: 32" in done.stdout
    assert "pages: 6" in done.stdout


def test_cli_names_a_bad_key_and_exits_non_zero(
    fake: FakeAhaApi, server: AsgiServer, tmp_path: Path
) -> None:
    acct = {"name": "acme", "api_key": "wrong-key-123", "base_url": server.url}
    done = cli(tmp_path, acct, "--since", "1d", "--dry-run", "--resend-seen")
    assert done.returncode == 1
    assert "refused the API key" in done.stderr
    assert "AHA_SIEM_AHA__ACCOUNTS__0__API_KEY" in done.stderr
    assert "wrong-key-123" not in done.stderr + done.stdout


def test_cli_names_a_wrong_account(fake: FakeAhaApi, server: AsgiServer, tmp_path: Path) -> None:
    fake.not_found = True
    acct = {"name": "acme", "api_key": fake.api_key, "base_url": server.url}
    done = cli(tmp_path, acct, "--since", "1d", "--dry-run", "--resend-seen")
    assert done.returncode == 1
    assert "no Aha! audits API" in done.stderr and "subdomain" in done.stderr


def test_cli_without_a_key_says_which_variable(tmp_path: Path) -> None:
    done = cli(tmp_path, {"name": "acme"}, "--since", "1d", "--dry-run")
    assert done.returncode == 1
    assert "AHA_SIEM_AHA__ACCOUNTS__0__API_KEY" in done.stderr
