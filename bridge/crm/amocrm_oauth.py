"""amoCRM's OAuth2 token endpoint: refresh (the refresh token rotates) and code exchange.

`OAuthTokenSource` (bridge.tokens) decides when to refresh, lets one refresh run at a time
and stores each new pair before use; this module only speaks to the endpoint. Requests go
through the CRM's one client with `BearerAuth` switched off, and take a rate-limiter slot.
Secrets are sent, never echoed: error messages carry the status and amoCRM's `hint` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from bridge.crm.base import CrmHttp, error_for_status
from bridge.errors import AuthError, TransientCrmError
from bridge.settings import Settings, secret_value
from bridge.tokens import TokenPair

OAUTH_ENDPOINT = "/oauth2/access_token"


class AmoOAuth:
    """POST /oauth2/access_token, bypassing `BearerAuth`. Refresh tokens are single-use:
    `OAuthTokenSource` serialises refreshes and stores each new pair before use."""

    def __init__(
        self,
        crm: str,
        http: CrmHttp,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm = crm
        self._http = http
        self._client_id = settings.amocrm_client_id
        self._client_secret = secret_value(settings.amocrm_client_secret)
        self._redirect_uri = settings.amocrm_redirect_uri
        self._clock = clock

    async def refresh(self, refresh_token: str) -> TokenPair:
        grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_request(grant, "refresh token")

    async def exchange_code(self, code: str) -> TokenPair:
        grant = {"grant_type": "authorization_code", "code": code}
        return await self._token_request(grant, "authorization code")

    async def _token_request(self, grant: dict[str, str], what: str) -> TokenPair:
        if not self._client_id or not self._client_secret:
            message = "OAuth needs AMOCRM_CLIENT_ID and AMOCRM_CLIENT_SECRET"
            raise AuthError(self._crm, f"{message}; then run `crm-bridge auth {self._crm}`")
        body = {
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "redirect_uri": self._redirect_uri,
            **grant,
        }
        response = await self._http.token_request("POST", OAUTH_ENDPOINT, json=body)
        status = response.status_code
        if status in (400, 401, 403, 404):
            message = f"{what} rejected (HTTP {status}{_hint(response)})"
            raise AuthError(self._crm, f"{message}: run `crm-bridge auth {self._crm}`")
        error = error_for_status(self._crm, response)
        if error is not None:
            raise error
        try:
            body = response.json()
            expires_at = self._clock() + float(body["expires_in"])
            return TokenPair(str(body["access_token"]), str(body["refresh_token"]), expires_at)
        except (KeyError, TypeError, ValueError) as exc:
            raise TransientCrmError(self._crm, f"POST {OAUTH_ENDPOINT}: malformed answer") from exc


def _hint(response: httpx.Response) -> str:
    # amoCRM explains a refused grant in `hint` ("Token has been revoked"); echo only that.
    try:
        hint = response.json().get("hint")
    except (ValueError, AttributeError):
        return ""
    return f": {str(hint)[:120]}" if hint else ""
