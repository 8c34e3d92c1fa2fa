"""The syslog sink against a real rsyslogd: what rsyslog writes to disk is what was sent.

rsyslog's `%rawmsg%` is the message as received with the framing removed, so each line of its
output must equal, byte for byte, one message the encoder made. Needs no Kafka; skipped only when
rsyslogd is not installed (Debian packages rsyslog and rsyslog-gnutls).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry

from forwarder.formats import encoder_for
from forwarder.formats.options import FormatsConfig
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import BatchResult, Ok, Reject, Retry, SinkError, deliver
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.syslog import SyslogSink, SyslogSinkConfig
from forwarder.sinks.syslog.framing import cut_utf8
from tests.helpers import hostile_paths, normalized_sample, sample_paths
from tests.receivers.rsyslog import Rsyslog, rsyslogd_path
from tests.unit.test_format_cef import TRICKY, event_with

pytestmark = pytest.mark.skipif(
    rsyslogd_path() is None,
    reason="rsyslogd is not installed (Debian: apt-get install rsyslog rsyslog-gnutls)",
)

FORMATS = ("syslog-cef", "syslog-leef", "syslog-json")
# Inputs of the helper's rsyslogd, and the sink settings that reach each.
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "udp": ("udp", {"transport": "udp"}),
    "tcp-octet-counting": ("tcp", {"transport": "tcp"}),
    "tcp-newline": ("tcp", {"transport": "tcp", "framing": "non-transparent"}),
    "tls-octet-counting": ("tls", {"transport": "tls"}),
    "mutual-tls": ("mtls", {"transport": "tls"}),
}
STREAMS = ("tcp-octet-counting", "tls-octet-counting")


def events() -> list[dict[str, Any]]:
    """Every sample and hostile body, every tricky text (newlines, non-ASCII, escapes, line
    separators, bidi controls) and a 10 KB message."""
    samples = [normalized_sample(path) for path in [*sample_paths(), *hostile_paths()]]
    # NUL and the other control characters included: the encoders write them as U+FFFD.
    tricky = [event_with(text) for text in TRICKY]
    long = {**samples[0], "message": "\u00e9\u2192 line\nbreak " * 600}
    return [*samples, *tricky, long]


def messages(format: str, rfc: str = "5424") -> list[bytes]:
    """The unframed syslog messages the worker would hand the sink."""
    options = FormatsConfig.model_validate({"syslog": {"rfc": rfc, "hostname": "fw.example"}})
    encode = encoder_for(format, options)
    return [encode(event) for event in events()]


def sink_config(receiver: Rsyslog, input: str, **fields: Any) -> SyslogSinkConfig:
    settings: dict[str, Any] = {
        "type": "syslog",
        "name": "siem",
        "host": "127.0.0.1",
        "port": receiver.ports[input],
        "max_message_bytes": 65000,
        "connect_timeout_seconds": 5,
        "write_timeout_seconds": 5,
        **fields,
    }
    if settings.get("transport") == "tls":
        tls: dict[str, Any] = {"ca_file": receiver.ca_file}
        if input == "mtls":
            tls |= {"cert_file": receiver.client_cert_file, "key_file": receiver.client_key_file}
        settings["tls"] = tls | settings.get("tls", {})
    return SyslogSinkConfig.model_validate(settings)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    with Rsyslog(tmp_path_factory.mktemp("rsyslog")) as running:
        yield running


@pytest.fixture
def own_receiver(tmp_path: Path) -> Iterator[Rsyslog]:
    """A receiver of the test's own, for tests that stop, pause or restart it."""
    with Rsyslog(tmp_path / "rsyslog") as running:
        yield running


class Sinks:
    """Sinks made by a test, closed at its end."""

    def __init__(self) -> None:
        self.opened: list[SyslogSink] = []

    async def __call__(self, config: SyslogSinkConfig) -> SyslogSink:
        sink = SyslogSink(config)
        await sink.start()
        self.opened.append(sink)
        return sink


@pytest.fixture
async def sinks() -> AsyncIterator[Sinks]:
    made = Sinks()
    yield made
    for sink in made.opened:
        await sink.close()


async def received_after(receiver: Rsyslog, input: str, before: int, count: int) -> list[bytes]:
    await receiver.wait_for_lines(input, before + count)
    await asyncio.sleep(0.2)  # anything extra (a duplicate, a split message) shows up too
    return receiver.lines(input)[before:]


def retried(result: BatchResult) -> str:
    """The reason of a batch to be sent again whole (a transport failure), else fail."""
    assert isinstance(result.whole, Retry), result
    assert not result.items
    return result.whole.reason


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("route", list(ROUTES))
async def test_rsyslog_writes_exactly_what_was_sent(
    receiver: Rsyslog, sinks: Sinks, route: str, format: str
) -> None:
    input, fields = ROUTES[route]
    sink = await sinks(sink_config(receiver, input, format=format, **fields))
    docs = events()
    sent = messages(format)
    # As the worker does: the encoder's message, through prepare, batched.
    prepared = [sink.prepare(doc, payload) for doc, payload in zip(docs, sent, strict=True)]
    before = len(receiver.lines(input))
    await sink.healthcheck()
    await sink.send_batch(prepared[:10])
    await sink.send_batch(prepared[10:])
    got = await received_after(receiver, input, before, len(sent))
    if input == "udp":
        # Datagrams carry no order; on one host they keep it, but UDP promises nothing.
        assert sorted(got) == sorted(sent)
    else:
        assert got == sent


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize(
    "route", ["udp", "tcp-octet-counting", "tcp-newline", "tls-octet-counting"]
)
async def test_rfc_3164_messages_arrive_whole(
    receiver: Rsyslog, sinks: Sinks, route: str, format: str
) -> None:
    input, fields = ROUTES[route]
    sink = await sinks(sink_config(receiver, input, format=format, **fields))
    sent = messages(format, rfc="3164")
    assert max(len(message) for message in sent) <= 1024  # RFC 3164 §4.1
    before = len(receiver.lines(input))
    await sink.send_batch(sent)
    got = await received_after(receiver, input, before, len(sent))
    assert sorted(got) == sorted(sent) if input == "udp" else got == sent


def readings_of(receiver: Rsyslog, input: str, sent: list[bytes]) -> dict[bytes, tuple[Any, ...]]:
    """rsyslog's reading of each message sent, by the message (UDP keeps no order)."""
    raw, parsed = receiver.lines(input), receiver.parsed(input)
    assert len(raw) == len(parsed)
    return {line: reading for line, reading in zip(raw, parsed, strict=True) if line in sent}


@pytest.mark.parametrize("route", ["udp", "tcp-octet-counting"])
async def test_a_receiver_that_takes_1024_octets_reads_every_3164_message_whole(
    tmp_path: Path, sinks: Sinks, route: str
) -> None:
    # rsyslog cut at RFC 3164's packet size: every message, long events included, still arrives
    # whole, and rsyslog's own parser reads the alphanumeric TAG, the host and the CEF line.
    with Rsyslog(tmp_path / "rsyslog", max_message_size=1024) as small:
        input, fields = ROUTES[route]
        sink = await sinks(sink_config(small, input, format="syslog-cef", **fields))
        sent = messages("syslog-cef", rfc="3164")
        await sink.send_batch(sent)
        got = await received_after(small, input, 0, len(sent))
        assert sorted(got) == sorted(sent)
        readings = readings_of(small, input, sent)
        assert len(readings) == len(set(sent))
        for message, (hostname, tag, program, msg) in readings.items():
            assert (hostname, tag, program) == ("fw", "ahasiem:", "ahasiem"), message[:80]
            assert msg.lstrip(b" ").startswith(b"CEF:0|Aha!|Aha! Roadmaps|")
            assert message.endswith(msg.lstrip(b" "))


@pytest.mark.parametrize("format", FORMATS)
async def test_no_line_separator_or_bidi_control_reaches_the_receiver(
    receiver: Rsyslog, sinks: Sinks, format: str
) -> None:
    sink = await sinks(
        sink_config(receiver, "tcp", transport="tcp", framing="non-transparent", format=format)
    )
    sent = [
        message
        for rfc in ("5424", "3164")
        for message in messages(format, rfc=rfc)[: len(sample_paths()) + len(hostile_paths())]
    ]
    before = len(receiver.lines("tcp"))
    await sink.send_batch(sent)
    got = await received_after(receiver, "tcp", before, len(sent))
    assert got == sent
    forbidden = "\u0085\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    for line in got:
        assert not any(char in forbidden for char in line.decode("utf-8")), line[:80]


async def test_newlines_in_cef_values_stay_inside_one_message(
    receiver: Rsyslog, sinks: Sinks
) -> None:
    # Non-transparent framing is the one a stray LF would break.
    sink = await sinks(sink_config(receiver, "tcp", transport="tcp", framing="non-transparent"))
    options = FormatsConfig.model_validate({"syslog": {"hostname": "fw.example"}})
    encode = encoder_for("syslog-cef", options)
    texts = ["line one\r\nline two", "lf\nonly", "cr\ronly", "\n\n\n"]
    sent = [encode(event_with(text)) for text in texts]
    before = len(receiver.lines("tcp"))
    await sink.send_batch(sent)
    got = await received_after(receiver, "tcp", before, len(sent))
    assert got == sent
    # CEF escapes them (docs/formats/cef.md): the receiver reads the text back, not a line break.
    assert b"msg=line one\\r\\nline two" in got[0]
    assert b"msg=lf\\nonly" in got[1]


@pytest.mark.parametrize("format", FORMATS)
async def test_nul_and_escape_arrive_intact(receiver: Rsyslog, sinks: Sinks, format: str) -> None:
    # rsyslog writes a raw NUL as "#000" whatever its escaping options; the encoders send
    # U+FFFD instead (JSON: \u0000), which rsyslog stores as it came.
    sink = await sinks(sink_config(receiver, "tcp", transport="tcp", format=format))
    options = FormatsConfig.model_validate({"syslog": {"hostname": "fw.example"}})
    sent = [encoder_for(format, options)(event_with("nul\x00byte esc\x1b[31m red"))]
    assert b"\x00" not in sent[0] and b"\x1b" not in sent[0]
    before = len(receiver.lines("tcp"))
    await sink.send_batch(sent)
    got = await received_after(receiver, "tcp", before, 1)
    assert got == sent
    if format != "syslog-json":
        assert "nul\ufffdbyte esc\ufffd[31m red".encode() in got[0]


async def test_non_ascii_arrives_as_the_same_utf8(receiver: Rsyslog, sinks: Sinks) -> None:
    sink = await sinks(sink_config(receiver, "tls", transport="tls", format="syslog-json"))
    text = "\u00e9\u00e8 \u2192 \U0001f600 \u4e2d\u6587 \u0627\u0644\u0639\u0631\u0628\u064a\u0629"
    sent = [encoder_for("syslog-json")(event_with(text))]
    before = len(receiver.lines("tls"))
    await sink.send_batch(sent)
    got = await received_after(receiver, "tls", before, 1)
    assert got == sent
    assert text.encode() in got[0]


@pytest.mark.parametrize("route", STREAMS)
async def test_stopped_receiver_is_a_retriable_error_and_a_restart_delivers(
    own_receiver: Rsyslog, sinks: Sinks, route: str
) -> None:
    input, fields = ROUTES[route]
    sink = await sinks(sink_config(own_receiver, input, **fields))
    first, second = messages("syslog-cef")[:5], messages("syslog-cef")[5:12]
    await sink.send_batch(first)
    assert await own_receiver.wait_for_lines(input, len(first)) == first

    own_receiver.stop()
    assert "connection refused" in retried(await sink.send_batch(second))
    with pytest.raises(SinkError, match="connection refused"):
        await sink.healthcheck()

    own_receiver.start()
    await sink.send_batch(second)
    got = await received_after(own_receiver, input, 0, len(first) + len(second))
    assert got == first + second  # nothing lost, nothing twice


@pytest.mark.parametrize("route", STREAMS)
async def test_a_batch_after_the_receiver_restarted_is_not_lost_in_the_old_connection(
    own_receiver: Rsyslog, sinks: Sinks, route: str
) -> None:
    input, fields = ROUTES[route]
    sink = await sinks(sink_config(own_receiver, input, **fields))
    sent = messages("syslog-leef")[:12]
    await sink.send_batch(sent[:4])
    assert await own_receiver.wait_for_lines(input, 4) == sent[:4]
    # The old connection is dead (the old rsyslogd closed it) before the sink writes again.
    own_receiver.restart()
    await sink.send_batch(sent[4:8])
    await sink.send_batch(sent[8:])
    assert await received_after(own_receiver, input, 0, len(sent)) == sent


async def test_udp_reports_an_unreachable_receiver_and_recovers(
    own_receiver: Rsyslog, sinks: Sinks
) -> None:
    sink = await sinks(sink_config(own_receiver, "udp", transport="udp"))
    sent = messages("syslog-cef")[:6]
    await sink.send_batch(sent[:3])
    # Datagrams still in the socket when rsyslogd stops are lost: that is UDP.
    assert sorted(await own_receiver.wait_for_lines("udp", 3)) == sorted(sent[:3])
    own_receiver.stop()
    # UDP has no connection: the ICMP "port unreachable" of a datagram comes back as an error
    # on the socket, so one of the next sends reports it.
    failure: BatchResult | None = None
    for _ in range(5):
        result = await sink.send_batch([b"<13>1 - - - - - - probe"])
        if not result.delivered:
            failure = result
            break
        await asyncio.sleep(0.05)
    assert failure is not None
    assert "connection refused" in retried(failure)
    own_receiver.start()
    await sink.send_batch(sent[3:])
    got = await own_receiver.wait_for_lines("udp", len(sent))
    assert sorted(line for line in got if b"probe" not in line) == sorted(sent)


async def test_framework_retries_until_the_receiver_is_back(
    own_receiver: Rsyslog, sinks: Sinks
) -> None:
    sink = await sinks(sink_config(own_receiver, "tcp", transport="tcp"))
    own_receiver.stop()
    sent = messages("syslog-json")[:8]
    registry = CollectorRegistry()
    retry = RetryConfig(initial_backoff_seconds=0.05, max_backoff_seconds=0.2)
    delivery = asyncio.create_task(deliver(sink, sent, SinkMetrics(registry), retry))
    await asyncio.sleep(0.6)
    assert not delivery.done()
    own_receiver.start()
    outcome = await asyncio.wait_for(delivery, 20)
    assert outcome.delivered == list(range(len(sent)))
    assert outcome.rejected == {}
    assert (registry.get_sample_value("aha_siem_sink_retries_total", {"sink": "siem"}) or 0) >= 1
    assert await received_after(own_receiver, "tcp", 0, len(sent)) == sent


async def test_a_receiver_that_stops_reading_makes_the_write_time_out(
    own_receiver: Rsyslog, sinks: Sinks
) -> None:
    sink = await sinks(sink_config(own_receiver, "tcp", transport="tcp", write_timeout_seconds=0.5))
    await sink.healthcheck()
    # More than the kernel buffers on both sides can hold (a few MiB each on loopback).
    flood = [b"<13>1 - fw.example aha-siem - - - " + b"%06d" % n + b"x" * 60000 for n in range(600)]
    own_receiver.pause()
    try:
        result = await asyncio.wait_for(sink.send_batch(flood), 30)
        assert "timed out" in retried(result)
    finally:
        own_receiver.resume()
    # The connection was given up; the next batch goes over a new one and arrives whole, in
    # order (rsyslog may still be writing what it had read of the old one around it).
    after = messages("syslog-cef")[:3]
    await sink.send_batch(after)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        got = [line for line in own_receiver.lines("tcp") if not line.endswith(b"x" * 100)]
        if got == after or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert got == after
    # What had been written of the flood, if anything, arrives as whole messages or not at all.
    sent = set(flood)
    assert all(line in sent for line in own_receiver.lines("tcp") if line not in after)


async def test_an_oversized_message_is_refused_alone(receiver: Rsyslog, sinks: Sinks) -> None:
    sink = await sinks(sink_config(receiver, "tcp", transport="tcp", max_message_bytes=1024))
    small = messages("syslog-cef")[:2]
    big = b"<13>1 - fw.example aha-siem - - - " + "\u00e9".encode() * 800
    before = len(receiver.lines("tcp"))
    result = await sink.send_batch([small[0], big, small[1]])
    verdicts = result.verdicts(3)
    assert isinstance(verdicts[0], Ok) and isinstance(verdicts[2], Ok)
    assert isinstance(verdicts[1], Reject)
    assert "over max_message_bytes (1024)" in verdicts[1].reason
    assert await received_after(receiver, "tcp", before, 2) == small


@pytest.mark.parametrize("route", ["udp", "tcp-octet-counting"])
async def test_truncation_cuts_on_a_character_boundary(
    receiver: Rsyslog, sinks: Sinks, route: str
) -> None:
    input, fields = ROUTES[route]
    config = sink_config(receiver, input, max_message_bytes=1023, oversize="truncate", **fields)
    sink = await sinks(config)
    big = b"<13>1 - fw.example aha-siem - - - " + "\u00e9".encode() * 800
    before = len(receiver.lines(input))
    await sink.send_batch([big])
    got = await received_after(receiver, input, before, 1)
    assert got == [cut_utf8(big, 1023)]
    assert len(got[0]) == 1022  # 1023 would end inside a two-octet character
    got[0].decode("utf-8")


async def test_tls_refuses_a_server_the_ca_does_not_vouch_for(
    receiver: Rsyslog, sinks: Sinks, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    sink = await sinks(sink_config(receiver, "tls", transport="tls", tls={"ca_file": other_ca}))
    before = len(receiver.lines("tls"))
    result = await sink.send_batch(messages("syslog-cef")[:1])
    assert "TLS certificate not accepted" in retried(result)
    with pytest.raises(SinkError):
        await sink.healthcheck()
    await asyncio.sleep(0.3)
    assert receiver.lines("tls")[before:] == []


async def test_tls_checks_the_server_name(receiver: Rsyslog, sinks: Sinks) -> None:
    sink = await sinks(
        sink_config(receiver, "tls", transport="tls", tls={"server_name": "siem.example.com"})
    )
    with pytest.raises(SinkError, match="TLS certificate not accepted"):
        await sink.healthcheck()
    matching = await sinks(
        sink_config(receiver, "tls", transport="tls", tls={"server_name": "localhost"})
    )
    await matching.healthcheck()


async def test_udp_healthcheck_resolves_the_receiver(sinks: Sinks) -> None:
    config = SyslogSinkConfig(type="syslog", name="siem", host="receiver.invalid", transport="udp")
    sink = await sinks(config)
    with pytest.raises(SinkError, match="cannot resolve the host"):
        await sink.healthcheck()


async def test_a_receiver_that_wants_a_client_certificate_is_not_sent_into_the_void(
    receiver: Rsyslog, sinks: Sinks
) -> None:
    # Under TLS 1.3 the server refuses a missing client certificate after the handshake has
    # finished for the client; a batch written straight away would vanish without an error.
    sink = await sinks(
        sink_config(receiver, "mtls", transport="tls", tls={"cert_file": None, "key_file": None})
    )
    before = len(receiver.lines("mtls"))
    assert "client certificate" in retried(await sink.send_batch(messages("syslog-cef")[:2]))
    with pytest.raises(SinkError, match="client certificate"):
        await sink.healthcheck()
    await asyncio.sleep(0.3)
    assert receiver.lines("mtls")[before:] == []
