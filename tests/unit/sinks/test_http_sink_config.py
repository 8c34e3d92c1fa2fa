"""What the generic HTTPS sink's config accepts, and that its secrets stay secret."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from forwarder.sinks.http.config import HttpSinkConfig


def config(**options: Any) -> HttpSinkConfig:
    return HttpSinkConfig(
        **{"type": "http", "name": "generic", "url": "https://siem.example/in", **options}
    )


def test_defaults() -> None:
    sink = config()
    assert (sink.method, sink.encoding, sink.gzip, sink.format) == ("POST", "ndjson", False, "ecs")
    assert sink.auth is None
    assert sink.healthcheck_url is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encoding": "json", "format": "cef"}, "use encoding ndjson"),
        ({"url": "ftp://siem.example/in"}, "http:// or https://"),
        ({"url": "https://user:pw@siem.example/in"}, "use `auth`"),
        ({"healthcheck_url": "siem.example/health"}, "http:// or https://"),
        ({"method": "PATCH"}, "method"),
        ({"headers": {"Content-Length": "1"}}, "set by the sink"),
        ({"headers": {"X-Evil": "a\r\nInjected: 1"}}, "line break"),
        ({"retry_statuses": [503]}, "4xx"),
        (
            {"auth": {"type": "bearer", "token": "t"}, "headers": {"authorization": "x"}},
            "both in headers and by auth",
        ),
        ({"auth": {"type": "digest", "token": "t"}}, "auth"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_bad_settings_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**options)


def test_json_encoding_takes_the_json_formats() -> None:
    assert config(encoding="json", format="ocsf").format == "ocsf"
    assert config(encoding="ndjson", format="syslog-cef").format == "syslog-cef"


def test_secrets_do_not_show() -> None:
    bearer = config(auth={"type": "bearer", "token": "tok-123456"})
    basic = config(auth={"type": "basic", "username": "u", "password": "pw-654321"})
    header = config(auth={"type": "header", "name": "X-API-Key", "value": "key-777"})
    shown = " ".join(repr(item) + str(item.model_dump()) for item in (bearer, basic, header))
    for secret in ("tok-123456", "pw-654321", "key-777"):
        assert secret not in shown
