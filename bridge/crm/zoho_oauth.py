"""Zoho CRM credentials: the accounts server of the data centre, and the token header.

- `ZohoOAuth` speaks to `POST {accounts}/oauth/v2/token` (client id and secret in the form
  body, never in the URL) for the one-time authorization-code exchange (a Self Client's
  grant code) and for refreshes. Zoho keeps the refresh token (a refresh answers only an
  access token, valid 1 h) and answers a refused grant with HTTP 200 and
  `{"error": "invalid_code"}`; a burst of token requests gets 400 "too many requests
  continuously" (wait, do not re-authorise). Each answer names `api_domain`, the host the
  org's API answers on: it wins over the data centre's default (`api_domain` here).
  https://www.zoho.com/crm/developer/docs/api/v8/access-refresh.html ,
  https://www.zoho.com/crm/developer/docs/api/v8/multi-dc.html
- `ZohoTokenAuth` sends `Authorization: Zoho-oauthtoken <token>` to the current API domain;
  on a 401 it refreshes once (`OAuthTokenSource` single-flights that and stores the pair)
  and resends, to the API domain the new token names.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from bridge.crm.base import CrmHttp, error_for_status
from bridge.crm.zoho_json import TOKEN_PATH, DataCentre
from bridge.errors import AuthError, RateLimited, TransientCrmError
from bridge.tokens import TokenPair, TokenSource

TOKEN_BURST_PAUSE = 60.0  # seconds: Zoho's "too many requests continuously" passes


class ZohoOAuth:
    def __init__(
        self,
        crm: str,
        http: CrmHttp,
        data_centre: DataCentre,
        client_id: str,
        client_secret: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm = crm
        self._http = http
        self._client_id = client_id
        self._client_secret = client_secret
        self._url = data_centre.accounts.rstrip("/") + TOKEN_PATH
        self._clock = clock
        self.api_domain = data_centre.api_domain

    async def refresh(self, refresh_token: str) -> TokenPair:
        grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_request(grant, "refresh token", refresh_token)

    async def exchange_code(self, code: str) -> TokenPair:
        """A grant code from the API console's Self Client (used once, within minutes)."""
        grant = {"grant_type": "authorization_code", "code": code}
        return await self._token_request(grant, "grant code", None)

    async def _token_request(
        self, form: dict[str, str], what: str, presented_refresh: str | None
    ) -> TokenPair:
        if not self._client_id or not self._client_secret:
            message = "OAuth needs ZOHO_CLIENT_ID and ZOHO_CLIENT_SECRET (the Self Client's)"
            raise AuthError(self._crm, f"{message}; then run `bridge auth {self._crm}`")
        form = {**form, "client_id": self._client_id, "client_secret": self._client_secret}
        response = await self._http.token_request("POST", self._url, data=form)
        body = _json_object(response)
        if response.status_code == 400 and "too many requests" in _reason(body).lower():
            raise RateLimited(
                self._crm, f"{what}: Zoho refuses token requests for now", TOKEN_BURST_PAUSE
            )
        if response.status_code in (400, 401, 403) or body.get("error"):
            message = f"{what} rejected (HTTP {response.status_code}: {_reason(body) or 'refused'})"
            raise AuthError(self._crm, f"{message}: run `bridge auth {self._crm}`")
        error = error_for_status(self._crm, response)
        if error is not None:
            raise error
        try:
            refresh = body.get("refresh_token") or presented_refresh
            expires_at = self._clock() + float(body["expires_in"])
            pair = TokenPair(str(body["access_token"]), str(refresh), expires_at)
        except (KeyError, TypeError, ValueError) as exc:
            raise TransientCrmError(self._crm, f"POST {TOKEN_PATH}: malformed answer") from exc
        if not refresh:
            raise AuthError(self._crm, f"{what}: Zoho answered no refresh token")
        domain = body.get("api_domain")
        if isinstance(domain, str) and domain.startswith("https://"):
            self.api_domain = domain.rstrip("/")
        return pair


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _reason(body: dict[str, Any]) -> str:
    # Zoho names a refused grant in `error` ("invalid_code", "invalid_client") and a
    # throttled one in `error_description`; echo those only, never the form.
    reason = body.get("error_description") or body.get("error")
    return str(reason)[:120] if reason else ""


class ZohoTokenAuth(httpx.Auth):
    """`Zoho-oauthtoken` on every request, to the API domain the token belongs to."""

    def __init__(self, source: TokenSource, oauth: ZohoOAuth, pinned_base: bool) -> None:
        self._source = source
        self._oauth = oauth
        self._pinned = pinned_base  # a configured base_url (a proxy) is never rewritten

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._source.current()
        self._aim(request)
        request.headers["Authorization"] = f"Zoho-oauthtoken {token}"
        response = yield request
        if response.status_code == 401 and self._source.can_refresh:
            await response.aread()
            token = await self._source.refreshed(token)
            self._aim(request)
            request.headers["Authorization"] = f"Zoho-oauthtoken {token}"
            yield request

    def _aim(self, request: httpx.Request) -> None:
        if self._pinned:
            return
        domain = httpx.URL(self._oauth.api_domain)
        if (request.url.scheme, request.url.host, request.url.port) != (
            domain.scheme,
            domain.host,
            domain.port,
        ):
            request.url = request.url.copy_with(
                scheme=domain.scheme, host=domain.host, port=domain.port
            )
            request.headers["Host"] = domain.netloc.decode("ascii")
