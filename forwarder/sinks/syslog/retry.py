"""Which transport failures are worth retrying: all of them, each named plainly."""

from __future__ import annotations

import socket
import ssl

from forwarder.sinks.base import Retry


def classify(error: OSError) -> Retry:
    """The verdict on a failure to connect to or write to a syslog receiver.

    Every transport failure is retried: the receiver may come back, a certificate may be
    renewed, a name may resolve again; meanwhile the events wait in Kafka, not in the DLQ.
    Messages the receiver can never take are refused before sending (see framing.fit).
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = getattr(error, "verify_message", None) or error.strerror or str(error)
        return Retry(f"TLS certificate not accepted: {detail}")
    if isinstance(error, ssl.SSLError):
        # `reason` is set on errors raised by OpenSSL, not on ones built by hand.
        detail = getattr(error, "reason", None) or error.strerror or str(error)
        return Retry(f"TLS failed: {detail}")
    if isinstance(error, socket.gaierror):
        return Retry(f"cannot resolve the host: {error.strerror}")
    if isinstance(error, ConnectionRefusedError):
        return Retry("connection refused")
    if isinstance(error, TimeoutError):
        return Retry(f"timed out{f': {error}' if str(error) else ''}")
    if isinstance(error, ConnectionError):
        return Retry(f"connection lost: {error.strerror or error or type(error).__name__}")
    if error.filename is not None:
        return Retry(f"cannot read {error.filename}: {error.strerror}")
    return Retry(f"{type(error).__name__}: {error.strerror or error}")
