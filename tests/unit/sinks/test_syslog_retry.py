"""Which failures towards a syslog receiver are retried, and how they are named."""

from __future__ import annotations

import socket
import ssl

import pytest

from forwarder.sinks.base import Retry
from forwarder.sinks.syslog.retry import classify


def _cert_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    return error


def _missing_file() -> OSError:
    return FileNotFoundError(2, "No such file or directory", "/etc/siem/ca.pem")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection lost"),
        (ConnectionResetError("the receiver closed the connection"), "receiver closed"),
        (BrokenPipeError(32, "Broken pipe"), "connection lost: Broken pipe"),
        (TimeoutError(), "timed out"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve the host"),
        (_cert_error(), "TLS certificate not accepted: unable to get local issuer"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS failed"),
        (_missing_file(), "cannot read /etc/siem/ca.pem"),
        (OSError(101, "Network is unreachable"), "Network is unreachable"),
    ],
)
def test_every_transport_failure_is_retried_and_named(error: OSError, reason: str) -> None:
    verdict = classify(error)
    assert isinstance(verdict, Retry)
    assert reason in verdict.reason
    assert verdict.after is None  # syslog has no Retry-After: the framework's back-off applies
