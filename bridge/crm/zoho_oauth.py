"""Zoho CRM's token quirks, translated at the edge so the connection's one OAuth policy holds.

- The accounts server of the data centre (`POST {accounts}/oauth/v2/token`, a form with
  the client id and secret) answers a refused grant with HTTP **200** and
  `{"error": "invalid_code"}` (or `invalid_client`), and a burst of token requests with
  400 "You have made too many requests continuously". `token_hooks` give those answers
  the status they mean — 400 (refused: `crm-bridge auth` again) and 429 with a minute's
  `Retry-After` (wait; do not re-authorise) — before the connection reads them.
- Every token answer names `api_domain`, the host the org's API answers on: it wins over
  the data centre's default, and `ApiDomain` keeps it for the requests that follow.
  https://www.zoho.com/crm/developer/docs/api/v8/access-refresh.html ,
  https://www.zoho.com/crm/developer/docs/api/v8/multi-dc.html
- Requests carry `Authorization: Zoho-oauthtoken <token>` (the connection's `BearerAuth`
  with Zoho's scheme) and go to the current API domain (`ApiDomain.aim`); on a 401 it
  refreshes once and resends, to the API domain the new token names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bridge.crm.zoho_json import TOKEN_PATH

TOKEN_BURST_PAUSE = 60  # seconds: Zoho's "too many requests continuously" passes


class ApiDomain:
    """Where the org's API answers: the data centre's default until a token answer names
    another; `pinned` (a configured base URL, e.g. a proxy) is never rewritten."""

    def __init__(self, default: str, pinned: bool) -> None:
        self.url = default.rstrip("/")
        self.pinned = pinned

    def learn(self, named: object) -> None:
        if isinstance(named, str) and named.startswith("https://"):
            self.url = named.rstrip("/")

    def aim(self, request: httpx.Request) -> None:
        """Readdress `request` to the current API domain (the connection's `BearerAuth`
        calls this before each send, after a refresh too)."""
        if self.pinned:
            return
        target = httpx.URL(self.url)
        here = (request.url.scheme, request.url.host, request.url.port)
        if here != (target.scheme, target.host, target.port):
            request.url = request.url.copy_with(
                scheme=target.scheme, host=target.host, port=target.port
            )
            request.headers["Host"] = target.netloc.decode("ascii")


def token_hooks(domain: ApiDomain) -> list[Callable[[httpx.Response], Awaitable[None]]]:
    """httpx response hooks for the token endpoint's answers (other answers pass)."""

    async def on_response(response: httpx.Response) -> None:
        if response.request.url.path != TOKEN_PATH:
            return
        await response.aread()
        body = _json_object(response)
        description = str(body.get("error_description") or "").lower()
        if response.status_code == 400 and "too many requests" in description:
            response.status_code = 429
            response.headers["retry-after"] = str(TOKEN_BURST_PAUSE)
        elif response.status_code == 200 and body.get("error"):
            response.status_code = 400  # a refused grant, whatever the status line says
        elif response.status_code == 200:
            domain.learn(body.get("api_domain"))

    return [on_response]


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
