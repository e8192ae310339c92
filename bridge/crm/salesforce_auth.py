"""Salesforce sessions for a server integration: minted, never refreshed.

Both flows a server uses (https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_jwt_flow.htm,
…remoteaccess_oauth_client_credentials_flow.htm) answer an access token and no refresh
token, and no `expires_in` either: a session lives until the org's session timeout passes
without use. So `SessionSource` (a `bridge.tokens.TokenSource`) mints a new one
- when it has none (first request after a start: minting needs no stored state, so nothing
  is stored — the key or secret in the environment is the durable credential);
- when the session is older than the configured session timeout (less a margin), before
  Salesforce would answer 401;
- on a 401 INVALID_SESSION_ID (`BearerAuth` asks for it once and resends);
one mint at a time: concurrent requests holding the stale token wait for it and share it.

`SessionMinter` speaks to the token endpoint:
- `jwt_bearer`: a JWT signed (RS256) with the private key whose certificate is uploaded to
  the External Client App, `iss` its consumer key, `sub` the pre-authorised user, `aud` the
  login host (https://login.salesforce.com, https://test.salesforce.com or the My Domain
  URL), posted to `<login host>/services/oauth2/token`;
- `client_credentials`: the app's consumer key and secret, posted to the org's My Domain
  (the base URL): the generic login hosts refuse this flow.
A refusal (400 `invalid_grant`, `invalid_client`, …) is an `AuthError` naming Salesforce's
error code and description, never a secret; the CRM is paused until the operator fixes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.crm.base import CrmHttp, error_for_status
from bridge.crm.salesforce_json import (
    Session,
    answer_json,
    client_credentials_form,
    jwt_assertion,
    jwt_grant_form,
    load_private_key,
    session_from_json,
    token_error,
)
from bridge.errors import AuthError, TransientCrmError
from bridge.settings import CrmSecrets

Flow = Literal["jwt_bearer", "client_credentials"]
TOKEN_PATH = "/services/oauth2/token"  # noqa: S105 - a path, not a secret
# Mint this long before the session timeout would end an idle session.
SESSION_MARGIN = 300.0
_HINTS = {
    "invalid_client_id": "the consumer key is not the app's",
    "invalid_client": "the consumer key or secret is wrong",
    "invalid_grant": "check the user is pre-authorised for the app (its policy and the"
    " user's profile or permission set), the certificate, and the login URL",
    "unsupported_grant_type": "enable this OAuth flow on the External Client App",
}


class SessionMinter:
    """One org's token endpoint, for the configured flow."""

    def __init__(
        self,
        crm: str,
        http: CrmHttp,
        flow: Flow,
        *,
        login_url: str,
        username: str,
        secrets: CrmSecrets,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm = crm
        self._http = http
        self.flow = flow
        self._login_url = login_url.rstrip("/")
        self._username = username
        self._secrets = secrets
        self._client_id = secrets.client_id
        self._client_secret = secrets.client_secret
        self._key_file = Path(secrets.token) if secrets.token else None
        self._clock = clock
        self._key: rsa.RSAPrivateKey | None = None

    def missing(self) -> str | None:
        """What is missing to mint a session (None: nothing). Reads the key file: a key
        the bridge cannot read or use is found before the first webhook waits on it."""
        if not self._client_id:
            var = self._secrets.var("CLIENT_ID")
            return f"no consumer key: set {var} to the External Client App's consumer key"
        if self.flow == "client_credentials":
            var = self._secrets.var("CLIENT_SECRET")
            return None if self._client_secret else f"client_credentials needs {var}"
        if not self._username:
            return "jwt_bearer needs options.username (the pre-authorised integration user)"
        try:
            self._private_key()
        except (OSError, ValueError, TypeError) as exc:
            return f"jwt_bearer needs a readable RSA private key: {_why(exc)}"
        return None

    async def mint(self) -> Session:
        missing = self.missing()
        if missing is not None:
            raise AuthError(self._crm, missing)
        if self.flow == "jwt_bearer":
            now = self._clock()
            assertion = jwt_assertion(
                self._private_key(), self._client_id, self._username, self._login_url, now
            )
            url, form = f"{self._login_url}{TOKEN_PATH}", jwt_grant_form(assertion)
        else:
            form = client_credentials_form(self._client_id, self._client_secret or "")
            url = TOKEN_PATH  # on the base URL: the org's My Domain
        response = await self._http.token_request("POST", url, data=form)
        status = response.status_code
        if status in (400, 401, 403):
            reason = token_error(answer_json(response.text))
            hint = _HINTS.get(reason.partition(":")[0], "")
            message = f"{self.flow} session refused (HTTP {status}: {reason or 'no reason'})"
            raise AuthError(self._crm, f"{message}; {hint}" if hint else message)
        error = error_for_status(self._crm, response)
        if error is not None:
            raise error
        try:
            return session_from_json(response.json(), self._clock())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TransientCrmError(self._crm, f"POST {TOKEN_PATH}: malformed answer") from exc

    def _private_key(self) -> rsa.RSAPrivateKey:
        if self._key is None:
            if self._key_file is None:
                raise ValueError(f"{self._secrets.var('PRIVATE_KEY_FILE')} is not set")
            self._key = load_private_key(self._key_file.read_bytes())
        return self._key


def _why(exc: Exception) -> str:
    # The file's name and what is wrong with it; never its content.
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


class SessionSource:
    """A `TokenSource` whose tokens are minted (see the module docstring)."""

    can_refresh = True

    def __init__(
        self,
        crm: str,
        mint: Callable[[], Awaitable[Session]],
        missing: Callable[[], str | None],
        *,
        session_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm = crm
        self._mint = mint
        self._missing = missing
        self._lifetime = max(session_timeout - SESSION_MARGIN, session_timeout / 2)
        self._clock = clock
        self._session: Session | None = None
        self._minted_at = 0.0
        self._lock = asyncio.Lock()
        self.minted = 0

    async def current(self) -> str:
        session = self._session
        if session is None or self._stale():
            return await self.refreshed(session.access_token if session else "")
        return session.access_token

    async def refreshed(self, stale: str) -> str:
        async with self._lock:
            session = self._session
            if session is not None and session.access_token != stale and not self._stale():
                return session.access_token  # another request minted while we waited
            self._session = None
            session = await self._mint()
            self._session, self._minted_at = session, self._clock()
            self.minted += 1
            return session.access_token

    async def problem(self) -> str | None:
        return self._missing()

    def expires_at(self) -> float | None:
        return self._minted_at + self._lifetime if self._session is not None else None

    @property
    def instance_url(self) -> str:
        return self._session.instance_url if self._session is not None else ""

    def _stale(self) -> bool:
        return self._clock() - self._minted_at >= self._lifetime
