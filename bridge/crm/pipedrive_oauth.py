"""Pipedrive credentials: the API token header, and the OAuth2 token endpoint.

- `ApiTokenAuth` sends a personal API token as the `x-api-token` header (the way the
  OpenAPI files' `api_key` scheme says), never as the historic `?api_token=` query,
  which would put the secret into every logged URL.
- `PipedriveOAuth` speaks to `POST https://oauth.pipedrive.com/oauth/token` (HTTP Basic
  with client id and secret, a form body) for the code exchange and for refreshes.
  Pipedrive documents that a refresh returns the same refresh token with its 60-day
  idle expiry reset; whatever comes back is stored, so a rotating one works as well.
  `OAuthTokenSource` (bridge.tokens) single-flights refreshes and stores pairs before use.
Requests go through the CRM's one client (its rate limiter, its `on_call`); errors carry
the status and Pipedrive's short reason, never a secret.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable

import httpx

from bridge.crm.base import CrmHttp, error_for_status
from bridge.errors import AuthError, TransientCrmError
from bridge.settings import Settings, secret_value
from bridge.tokens import StaticToken, TokenPair

DEFAULT_OAUTH_URL = "https://oauth.pipedrive.com"
OAUTH_ENDPOINT = "/oauth/token"


class ApiTokenAuth(httpx.Auth):
    """`x-api-token: <token>` on every request; a 401 is final (nothing to refresh)."""

    def __init__(self, source: StaticToken) -> None:
        self._source = source

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["x-api-token"] = await self._source.current()
        yield request


class PipedriveOAuth:
    def __init__(
        self,
        crm: str,
        http: CrmHttp,
        settings: Settings,
        oauth_url: str = DEFAULT_OAUTH_URL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm = crm
        self._http = http
        self._client_id = settings.pipedrive_client_id
        self._client_secret = secret_value(settings.pipedrive_client_secret)
        self._redirect_uri = settings.pipedrive_redirect_uri
        self._url = oauth_url.rstrip("/") + OAUTH_ENDPOINT
        self._clock = clock

    async def refresh(self, refresh_token: str) -> TokenPair:
        grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_request(grant, "refresh token", refresh_token)

    async def exchange_code(self, code: str) -> TokenPair:
        grant = {"grant_type": "authorization_code", "code": code}
        grant["redirect_uri"] = self._redirect_uri
        return await self._token_request(grant, "authorization code", None)

    async def _token_request(
        self, form: dict[str, str], what: str, presented_refresh: str | None
    ) -> TokenPair:
        if not self._client_id or not self._client_secret:
            message = "OAuth needs PIPEDRIVE_CLIENT_ID and PIPEDRIVE_CLIENT_SECRET"
            raise AuthError(self._crm, f"{message}; then run `crm-bridge auth {self._crm}`")
        basic = httpx.BasicAuth(self._client_id, self._client_secret)
        response = await self._http.token_request("POST", self._url, data=form, auth=basic)
        status = response.status_code
        if status in (400, 401, 403):
            message = f"{what} rejected (HTTP {status}{_reason(response)})"
            raise AuthError(self._crm, f"{message}: run `crm-bridge auth {self._crm}`")
        error = error_for_status(self._crm, response)
        if error is not None:
            raise error
        try:
            body = response.json()
            refresh = body.get("refresh_token") or presented_refresh
            expires_at = self._clock() + float(body["expires_in"])
            return TokenPair(str(body["access_token"]), str(refresh), expires_at)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TransientCrmError(self._crm, f"POST {OAUTH_ENDPOINT}: malformed answer") from exc


def _reason(response: httpx.Response) -> str:
    # Pipedrive names a refused grant in `error` / `message` ("invalid_grant"); echo that only.
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    reason = body.get("error_description") or body.get("message") or body.get("error")
    return f": {str(reason)[:120]}" if reason else ""
