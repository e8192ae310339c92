"""Bitrix24 REST plumbing under the adapter: where requests go, what refusals mean, tokens.

- `BitrixTransport` wraps the real transport. In webhook mode the client talks to
  `WEBHOOK_BASE`, a placeholder; only this transport knows the inbound webhook's URL
  (https://portal/rest/USER/CODE/, whose path is the secret) and sends there instead. The
  client keeps its own request, so every error message, built from the placeholder, can
  never echo the secret. It also gives Bitrix's refusals the status `CrmHttp` maps:
  503 QUERY_LIMIT_EXCEEDED (the leaky bucket is full) becomes a 429 with Retry-After 1 s,
  so it is `RateLimited`, penalises the limiter and is retried like any 429; a 429
  OPERATION_TIME_LIMIT (one method's time budget) stays a 429, with a Retry-After from
  `time.operating_reset_at` when the answer has one (at most 10 s); 403 refusals of the
  credentials themselves (scope, plan, wrong credentials) become a 401, so the CRM is
  paused instead of every delivery failing.
- `WebhookAuth` only insists the webhook URL is there (an `AuthError` otherwise).
- `BitrixTokenAuth` adds the OAuth `auth` parameter and, on a 401 `expired_token` only,
  refreshes once and resends: Bitrix asks apps to refresh on that error, not on a timer
  [b24-rest-docs settings/oauth/index.md].
- `BitrixOAuth` speaks to the token server (oauth.bitrix24.tech; `options.oauth_server`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from bridge.crm.base import CrmHttp, error_for_status
from bridge.errors import AuthError, TransientCrmError
from bridge.settings import Settings, secret_value
from bridge.tokens import TokenPair, TokenSource

WEBHOOK_BASE = "https://bitrix24-webhook.invalid/rest/"
WEBHOOK_SHAPE = re.compile(r"https?://[^/\s]+/rest/\d+/[^/\s]+/")
RATE_CODES = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT"})
CREDENTIAL_CODES = frozenset({"insufficient_scope", "INVALID_CREDENTIALS", "ACCESS_DENIED"})
MAX_RETRY_AFTER = 10.0


def error_code(content: bytes) -> str:
    """The `error` of a Bitrix error body (`{"error": ..., "error_description": ...}`)."""
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    return str(body.get("error") or "") if isinstance(body, dict) else ""


def webhook_problem(url: str | None) -> str | None:
    """Why the configured webhook URL cannot be used; the URL itself is never quoted."""
    if not url:
        return 'set BITRIX24_WEBHOOK_URL (the inbound webhook\'s URL) or use auth = "oauth"'
    if not WEBHOOK_SHAPE.fullmatch(url if url.endswith("/") else url + "/"):
        return "BITRIX24_WEBHOOK_URL must look like https://PORTAL/rest/USER_ID/CODE/"
    return None


class BitrixTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        webhook_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._webhook = webhook_url.rstrip("/") + "/" if webhook_url else None
        self._clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = request
        if self._webhook is not None and str(request.url).startswith(WEBHOOK_BASE):
            await request.aread()
            target = self._webhook + str(request.url)[len(WEBHOOK_BASE) :]
            headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
            sent = httpx.Request(
                request.method,
                target,
                headers=headers,
                content=request.content,
                extensions=request.extensions,
            )
        response = await self._inner.handle_async_request(sent)
        if response.status_code not in (403, 429, 503):
            return response
        await response.aread()
        code = error_code(response.content)
        if response.status_code == 503 and code == "QUERY_LIMIT_EXCEEDED":
            return _replaced(response, 429, {"retry-after": "1"})
        if response.status_code == 429 and "retry-after" not in response.headers:
            retry_after = self._operating_reset(response.content)
            return _replaced(response, 429, {"retry-after": f"{retry_after:.0f}"})
        if response.status_code == 403 and code in CREDENTIAL_CODES:
            return _replaced(response, 401, {})
        return response

    def _operating_reset(self, content: bytes) -> float:
        # OPERATION_TIME_LIMIT lifts when the oldest minute leaves the 10-minute window
        # (`time.operating_reset_at`, when the answer carries it); the limiter waits at
        # most MAX_RETRY_AFTER, the worker's rescheduling does the rest.
        try:
            reset_at = float(json.loads(content)["time"]["operating_reset_at"])
        except (ValueError, KeyError, TypeError):
            return 1.0
        return min(max(reset_at - self._clock(), 1.0), MAX_RETRY_AFTER)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _replaced(response: httpx.Response, status: int, extra: dict[str, str]) -> httpx.Response:
    dropped = {"content-encoding", "content-length", "transfer-encoding", *extra}
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped]
    return httpx.Response(status, headers=[*headers, *extra.items()], content=response.content)


class WebhookAuth(httpx.Auth):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await self._source.current()  # AuthError when the URL is missing or malformed
        yield request


class BitrixTokenAuth(httpx.Auth):
    requires_response_body = True  # the 401's `error` says whether a refresh can help

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._source.current()
        request.url = request.url.copy_set_param("auth", token)
        response = yield request
        if response.status_code == 401 and error_code(response.content) == "expired_token":
            token = await self._source.refreshed(token)
            request.url = request.url.copy_set_param("auth", token)
            yield request


class BitrixOAuth:
    """GET {server}/oauth/token/ (refresh, code exchange), outside `BitrixTokenAuth`.

    Each refresh returns a new refresh token (the old one is spent): `OAuthTokenSource`
    serialises refreshes and stores each pair before use. Errors name the status and
    Bitrix's error code only; the query carries the client secret and is never echoed.
    """

    def __init__(
        self,
        crm: str,
        http: CrmHttp,
        settings: Settings,
        server: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm = crm
        self._http = http
        self._client_id = settings.bitrix24_client_id
        secret = settings.bitrix24_client_secret
        self._client_secret = secret_value(secret)
        self._url = server.rstrip("/") + "/oauth/token/"
        self._clock = clock

    async def refresh(self, refresh_token: str) -> TokenPair:
        grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_request(grant, "refresh token")

    async def exchange_code(self, code: str) -> TokenPair:
        return await self._token_request(
            {"grant_type": "authorization_code", "code": code}, "authorization code"
        )

    async def _token_request(self, grant: dict[str, str], what: str) -> TokenPair:
        if not self._client_id or not self._client_secret:
            message = "OAuth needs BITRIX24_CLIENT_ID and BITRIX24_CLIENT_SECRET"
            raise AuthError(self._crm, f"{message}; then run `crm-bridge auth {self._crm}`")
        params = {"client_id": self._client_id, "client_secret": self._client_secret, **grant}
        response = await self._http.token_request("GET", self._url, params=params)
        status = response.status_code
        if status in (400, 401, 403, 404):
            code = error_code(response.content)[:60]
            message = f"{what} rejected (HTTP {status}{': ' + code if code else ''})"
            raise AuthError(self._crm, f"{message}: run `crm-bridge auth {self._crm}`")
        if error_for_status(self._crm, response) is not None:
            raise TransientCrmError(self._crm, f"GET /oauth/token/: HTTP {status}")
        return self._pair(response)

    def _pair(self, response: httpx.Response) -> TokenPair:
        try:
            body: Any = response.json()
            expires_at = self._clock() + float(body["expires_in"])
            return TokenPair(str(body["access_token"]), str(body["refresh_token"]), expires_at)
        except (KeyError, TypeError, ValueError) as exc:
            raise TransientCrmError(self._crm, "GET /oauth/token/: malformed answer") from exc
