"""Syslog sink: messages to a syslog receiver over UDP (RFC 5426), TCP (RFC 6587) or TLS (RFC 5425).

A batch counts as delivered once every message has been written to the connection and this
process's send buffer has drained into the operating system. Plain syslog has no application
acknowledgement, so that is the most a sender can know (docs/sinks/syslog.md says what it means).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from forwarder.sinks.base import DELIVERED, BatchResult, Reject, Retry, SinkError, Verdict
from forwarder.sinks.syslog.config import SyslogSinkConfig
from forwarder.sinks.syslog.framing import Framing, frame_batch
from forwarder.sinks.syslog.retry import classify
from forwarder.sinks.syslog.transport import (
    Connection,
    DatagramConnection,
    StreamConnection,
    let_io_run,
)

log = logging.getLogger("forwarder.sinks.syslog")


class SyslogSink:
    """Send each event as one syslog message to one receiver."""

    def __init__(self, config: SyslogSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._host = config.host
        self._port = config.destination_port
        self._framing: Framing = "datagram" if config.transport == "udp" else config.framing
        self._where = f"syslog {config.transport} {config.host}:{self._port}"
        self._connection: Connection | None = None
        self._ssl_context: ssl.SSLContext | None = None
        # healthcheck and send_batch share the one connection; never write two batches at once.
        self._lock = asyncio.Lock()

    def prepare(self, doc: Mapping[str, Any], payload: bytes) -> bytes:
        """The syslog message as the encoder made it: framing depends on the transport and is
        added when the batch is sent."""
        return payload

    async def start(self) -> None:
        """Load the TLS settings, so a bad CA or key file is reported at start-up."""
        if self._config.transport == "tls":
            try:
                self._tls_context()
            except OSError as error:
                raise SinkError(f"{self._where}: {classify(error).reason}") from None

    async def healthcheck(self) -> None:
        """Open the connection (TCP, TLS) or resolve the receiver's address (UDP)."""
        async with self._lock:
            try:
                connection = await self._connected()
                if isinstance(connection, DatagramConnection) and connection.pending_error:
                    raise connection.pending_error
            except OSError as error:
                await self._drop()
                raise SinkError(f"{self._where}: {classify(error).reason}") from None

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        """Send every message in order; delivered once all were written and drained.

        A message the receiver can never take (over `max_message_bytes`, an LF under
        non-transparent framing) is rejected alone; the others are sent.
        """
        framed = frame_batch(
            events, self._framing, self._config.max_message_bytes, self._config.oversize
        )
        if framed.truncated:
            log.warning(
                "syslog messages truncated",
                extra={
                    "sink": self.name,
                    "messages": framed.truncated,
                    "max_message_bytes": self._config.max_message_bytes,
                },
            )
        verdicts: dict[int, Verdict] = {
            index: Reject(reason) for index, reason in framed.rejected.items()
        }
        if framed.frames:
            async with self._lock:
                try:
                    connection = await self._connected()
                    if isinstance(connection, DatagramConnection) and connection.pending_error:
                        # The receiver's port was unreachable: back off rather than send blind.
                        raise connection.pending_error
                    await connection.send(framed.frames, self._config.write_timeout_seconds)
                except OSError as error:
                    # What was written may or may not have arrived: the whole batch is sent again.
                    await self._drop()
                    reason = classify(error).reason
                    log.warning(
                        "syslog send failed",
                        extra={"sink": self.name, "where": self._where, "error": reason},
                    )
                    failed = Retry(f"{self._where}: {reason}")
                    if not verdicts:
                        return BatchResult.of(failed)
                    verdicts.update(dict.fromkeys(framed.indexes, failed))
        return BatchResult.each(verdicts) if verdicts else DELIVERED

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._drop(failed=False)

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = self._config.tls.context()
            # TLS 1.2 or later: RFC 8996 deprecates 1.0 and 1.1.
            if context.minimum_version < ssl.TLSVersion.TLSv1_2:
                context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl_context = context
        return self._ssl_context

    async def _connected(self) -> Connection:
        """The open connection, or a new one when there is none or the receiver closed it."""
        if self._connection is not None:
            await let_io_run()
            if self._connection.usable or isinstance(self._connection, DatagramConnection):
                return self._connection
            log.info(
                "syslog receiver closed the connection, reconnecting",
                extra={"sink": self.name, "where": self._where},
            )
            await self._drop()
        timeout = self._config.connect_timeout_seconds
        connection: Connection
        if self._config.transport == "udp":
            connection = await DatagramConnection.open(self._host, self._port, timeout=timeout)
        else:
            tls = self._config.transport == "tls"
            connection = await StreamConnection.open(
                self._host,
                self._port,
                ssl_context=self._tls_context() if tls else None,
                server_hostname=self._config.tls.server_name if tls else None,
                timeout=timeout,
            )
        log.info("syslog connected", extra={"sink": self.name, "where": self._where})
        self._connection = connection
        return connection

    async def _drop(self, *, failed: bool = True) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            # After a failure the batch is sent again whole: what is still queued is not wanted.
            await (connection.abort() if failed else connection.close())
