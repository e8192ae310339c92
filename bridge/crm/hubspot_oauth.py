"""HubSpot's OAuth token endpoint (v3): refresh and authorization-code exchange.

`POST /oauth/v3/token` takes a form-encoded body (v3 refuses the query-string parameters
v1 accepted). Access tokens live `expires_in` seconds (1800 today); HubSpot asks clients
to refresh from `expires_in` ahead of expiry rather than wait for a 401, which is what
`OAuthTokenSource` does with the margin `build_hubspot` gives it. The refresh token does
not rotate: the answer repeats it (kept when an answer leaves it out).

Requests go through the CRM's one client with `BearerAuth` switched off and take a slot of
the general rate limiter. Secrets are sent, never echoed: an error names the HTTP status
and HubSpot's `status` code (e.g. BAD_REFRESH_TOKEN) only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from bridge.crm.base import CrmHttp, error_for_status
from bridge.errors import AuthError, TransientCrmError
from bridge.settings import Settings, secret_value
from bridge.tokens import TokenPair

OAUTH_PATH = "/oauth/v3/token"


class HubSpotOAuth:
    def __init__(
        self,
        crm: str,
        http: CrmHttp,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm = crm
        self._http = http
        self._client_id = settings.hubspot_client_id
        self._client_secret = secret_value(settings.hubspot_client_secret)
        self._redirect_uri = settings.hubspot_redirect_uri
        self._clock = clock

    def missing_client(self) -> str | None:
        """What is missing to talk to the token endpoint (None: nothing)."""
        if self._client_id and self._client_secret:
            return None
        return (
            "OAuth needs HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET"
            f" (then run `crm-bridge auth {self._crm}`)"
        )

    async def refresh(self, refresh_token: str) -> TokenPair:
        grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_request(grant, "refresh token", refresh_token)

    async def exchange_code(self, code: str) -> TokenPair:
        grant = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._redirect_uri,
        }
        return await self._token_request(grant, "authorization code", None)

    async def _token_request(
        self, grant: dict[str, str], what: str, refresh_token: str | None
    ) -> TokenPair:
        missing = self.missing_client()
        if missing is not None:
            raise AuthError(self._crm, missing)
        form = {
            "client_id": self._client_id,
            "client_secret": self._client_secret or "",
            **grant,
        }
        response = await self._http.token_request("POST", OAUTH_PATH, data=form)
        status = response.status_code
        if status in (400, 401, 403):
            message = f"{what} rejected (HTTP {status}{_status_code(response)})"
            raise AuthError(self._crm, f"{message}: run `crm-bridge auth {self._crm}`")
        error = error_for_status(self._crm, response)
        if error is not None:
            raise error
        try:
            body = response.json()
            expires_at = self._clock() + float(body["expires_in"])
            kept = str(body.get("refresh_token") or refresh_token or "")
            if not kept:
                raise ValueError("no refresh_token")
            return TokenPair(str(body["access_token"]), kept, expires_at)
        except (KeyError, TypeError, ValueError) as exc:
            message = f"POST {OAUTH_PATH}: malformed answer"
            raise TransientCrmError(self._crm, message) from exc


def _status_code(response: httpx.Response) -> str:
    # HubSpot names a refused grant in `status` (BAD_REFRESH_TOKEN, BAD_AUTH_CODE, ...).
    try:
        code = response.json().get("status")
    except (ValueError, AttributeError):
        return ""
    return f": {str(code)[:60]}" if code else ""
