"""Bearer tokens for CRM requests, as an `httpx.Auth` flow.

Two sources: a static token (amoCRM long-lived token, an API key) and OAuth2 with
refresh-token rotation. Rotation is where tokens get lost, so `OAuthTokenSource`:
- refreshes ahead of expiry and once more on a 401;
- lets only one refresh run at a time; callers that held the stale token wait for it and
  use its result (the old refresh token is single-use: a second refresh would fail);
- commits the new pair (encrypted, through `TokenRepository`) before anyone uses it, so a
  crash right after the refresh cannot leave the bridge with a dead refresh token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from bridge.errors import AuthError, BridgeError

log = logging.getLogger("bridge.tokens")


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_at: float  # unix seconds


class TokenRepository(Protocol):
    async def load_tokens(self, crm: str) -> TokenPair | None: ...

    async def save_tokens(self, crm: str, pair: TokenPair) -> None: ...


Refresher = Callable[[str], Awaitable[TokenPair]]


class TokenSource(Protocol):
    can_refresh: bool

    async def current(self) -> str: ...

    async def problem(self) -> str | None:
        """Why no request can be authorised yet (None: credentials are in place)."""
        ...

    async def refreshed(self, stale: str) -> str: ...

    def expires_at(self) -> float | None: ...


class StaticToken:
    """A token from the environment; there is nothing to refresh."""

    can_refresh = False

    def __init__(self, crm: str, token: str | None, missing_hint: str) -> None:
        self._crm = crm
        self._token = token
        self._missing_hint = missing_hint

    async def current(self) -> str:
        if not self._token:
            raise AuthError(self._crm, f"no credentials: {self._missing_hint}")
        return self._token

    async def problem(self) -> str | None:
        return None if self._token else f"no credentials: {self._missing_hint}"

    async def refreshed(self, stale: str) -> str:
        raise AuthError(self._crm, "token rejected (401) and it cannot be refreshed")

    def expires_at(self) -> float | None:
        return None


class OAuthTokenSource:
    can_refresh = True

    def __init__(
        self,
        crm: str,
        repository: TokenRepository,
        refresher: Refresher,
        *,
        bootstrap_refresh_token: str | None = None,
        refresh_margin_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm = crm
        self._repository = repository
        self._refresher = refresher
        self._bootstrap = bootstrap_refresh_token
        self._margin = refresh_margin_seconds
        self._clock = clock
        self._pair: TokenPair | None = None
        self._unsaved = False
        self._lock = asyncio.Lock()

    async def current(self) -> str:
        await self._persist()
        pair = await self._loaded()
        if pair.expires_at - self._margin <= self._clock():
            return await self.refreshed(pair.access_token)
        return pair.access_token

    async def refreshed(self, stale: str) -> str:
        async with self._lock:
            pair = await self._loaded()
            if pair.access_token != stale and pair.expires_at - self._margin > self._clock():
                return pair.access_token  # someone else refreshed while we waited
            try:
                new_pair = await self._refresher(pair.refresh_token)
            except AuthError:
                self._pair = None  # read the store again next time: `crm-bridge auth` may fix it
                raise
            # The old refresh token is dead now: keep the new pair in memory even if the
            # store is down this instant, and keep trying to persist it.
            self._pair = new_pair
            self._unsaved = True
            await self._persist()
            return new_pair.access_token

    async def _persist(self) -> None:
        if not self._unsaved or self._pair is None:
            return
        try:
            await self._repository.save_tokens(self._crm, self._pair)
        except BridgeError as exc:
            log.error("%s: rotated OAuth tokens not stored yet, will retry: %s", self._crm, exc)
            return
        self._unsaved = False

    def expires_at(self) -> float | None:
        return self._pair.expires_at if self._pair else None

    async def problem(self) -> str | None:
        try:
            await self._loaded()
        except AuthError as exc:
            return exc.message
        return None

    def forget(self) -> None:
        """Drop the cached pair so the next request reads the store (after `crm-bridge auth`)."""
        self._pair = None

    async def _loaded(self) -> TokenPair:
        if self._pair is None:
            self._pair = await self._repository.load_tokens(self._crm)
        if self._pair is None and self._bootstrap:
            # First start with a refresh token from the environment: expired on purpose,
            # so the first request refreshes and the rotated pair is stored.
            self._pair = TokenPair("", self._bootstrap, 0.0)
        if self._pair is None:
            raise AuthError(self._crm, f"not authorised: run `crm-bridge auth {self._crm}`")
        return self._pair


class BearerAuth(httpx.Auth):
    """Adds the token under `scheme` ("Bearer"; Zoho CRM's is "Zoho-oauthtoken"); on a
    401 refreshes once (when possible) and resends. `aim`, when given, may readdress the
    request before each send (Zoho: to the API domain the current token was issued for)."""

    def __init__(
        self,
        source: TokenSource,
        scheme: str = "Bearer",
        aim: Callable[[httpx.Request], None] | None = None,
    ) -> None:
        self._source = source
        self._scheme = scheme
        self._aim = aim

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._source.current()
        self._prepare(request, token)
        response = yield request
        if response.status_code == 401 and self._source.can_refresh:
            await response.aread()
            token = await self._source.refreshed(token)
            self._prepare(request, token)
            yield request

    def _prepare(self, request: httpx.Request, token: str) -> None:
        if self._aim is not None:
            self._aim(request)
        request.headers["Authorization"] = f"{self._scheme} {token}"
