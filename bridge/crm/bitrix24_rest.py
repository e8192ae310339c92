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
The token server (oauth.bitrix24.tech; `options.oauth_server`) is `bitrix24.oauth_endpoint`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator, Callable

import httpx

from bridge.tokens import TokenSource

WEBHOOK_BASE = "https://bitrix24-webhook.invalid/rest/"
WEBHOOK_SHAPE = re.compile(r"https?://[^/\s]+/rest/\d+/[^/\s]+/")
RATE_CODES = frozenset({"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT"})
# 403s about the credentials, not the request: `user_access_error` is an app installed
# for some users only [b24-rest-docs _includes/system-errors.md, oauth error list].
CREDENTIAL_CODES = frozenset(
    {"insufficient_scope", "INVALID_CREDENTIALS", "ACCESS_DENIED", "user_access_error"}
)
MAX_RETRY_AFTER = 10.0


def error_code(content: bytes) -> str:
    """The `error` of a Bitrix error body (`{"error": ..., "error_description": ...}`)."""
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    return str(body.get("error") or "") if isinstance(body, dict) else ""


def webhook_problem(url: str | None, var: str = "BITRIX24_WEBHOOK_URL") -> str | None:
    """Why the configured webhook URL (in the variable `var`) cannot be used; the URL
    itself is never quoted."""
    if not url:
        return f'set {var} (the inbound webhook\'s URL) or use auth = "oauth"'
    if not WEBHOOK_SHAPE.fullmatch(url if url.endswith("/") else url + "/"):
        return f"{var} must look like https://PORTAL/rest/USER_ID/CODE/"
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
