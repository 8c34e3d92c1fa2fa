"""OAuth2 client credentials against Microsoft Entra: one token, shared and refreshed early."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from pydantic import SecretStr

from forwarder.failures import Failure
from forwarder.sinks.base import Retry
from forwarder.sinks.http_common import classify_exception
from forwarder.sinks.sentinel.retry import classify_token

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("forwarder.sinks.sentinel")

# Refresh this long before expiry (at most a fifth of the token's life, for short-lived ones).
_REFRESH_MARGIN_SECONDS = 300.0


class TokenProvider:
    """Fetches a token with client credentials and caches it until shortly before expiry.

    Concurrent callers share one fetch; `invalidate` drops a token the API refused.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        client_id: str,
        client_secret: SecretStr,
        scope: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._url = url
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.fetches = 0

    def _current(self) -> str | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def token(self) -> str | Retry:
        """A valid access token, or why none can be had (never a reason to drop events: an
        operator can fix the credentials, and the token endpoint comes back)."""
        current = self._current()
        if current is not None:
            return current
        async with self._lock:
            # Another task may have fetched one while this one waited.
            current = self._current()
            if current is not None:
                return current
            return await self._fetch()

    def invalidate(self, token: str) -> None:
        """Forget `token` (the API answered 401 to it) unless it was already replaced."""
        if self._token == token:
            self._token = None

    async def _fetch(self) -> str | Retry:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
            "scope": self._scope,
        }
        self.fetches += 1
        started = self._clock()
        try:
            response = await self._client.post(
                self._url, data=form, headers={"Accept": "application/json"}
            )
        except Exception as error:  # httpx's transport errors and time-outs
            failed = classify_exception(error)
            return Retry(f"token endpoint unreachable: {failed.reason}", failed.after)
        verdict = classify_token(response.status_code, response.headers, response.content)
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            log.error(
                "token request refused; events wait until the credentials are fixed",
                extra={"status": response.status_code, "token_url": self._url},
            )
        if isinstance(verdict, Retry):
            return Retry(f"no access token: {verdict.reason}", verdict.after, verdict.failure)
        try:
            answer = orjson.loads(response.content)
            token = str(answer["access_token"])
            # v2.0 answers a number, the older endpoint a string of digits.
            lifetime = float(answer.get("expires_in", 3600))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # Not understood, but not about the events either (they were never sent): a
            # token_url that is not Entra's. Dead-lettering would empty the queue into the
            # DLQ without reaching anything, so the events wait, as for refused credentials.
            return Retry(
                "token endpoint answered without access_token/expires_in (check token_url)",
                failure=Failure.DESTINATION,
            )
        margin = min(_REFRESH_MARGIN_SECONDS, lifetime / 5)
        self._token = token
        self._refresh_at = started + lifetime - margin
        log.info("access token fetched", extra={"expires_in": lifetime})
        return token
