"""The plumbing under every adapter: one `Connection` per configured CRM.

A connection owns the HTTP client (and so `CrmHttp`: rate limiting, call counting, error
mapping, quick retries), the token source, the encrypted token repository and the OAuth
token endpoint, which is data (`OAuthEndpoint`), not code per CRM. It answers for the
adapter's lifecycle: `exchange_code` (`crm-bridge auth`), `credentials_problem` (pause /
resume), `token_expires_at` and `health_details` (/webhook/health) and `aclose`. An
adapter is then the vendor translation only: it calls `send` and reads answers inside
`reading`. A CRM whose sessions are minted rather than refreshed (auth = "minted") hands
the connection its own token source (`minted`); nothing is stored for it.

Secrets come per configured CRM (`CrmSecrets`, see `bridge.settings.crm_secrets`), never
per vendor, so two sections of one kind each use their own.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from bridge.crm.base import JSON, CrmHttp, RateLimiter, retry_after_seconds
from bridge.errors import (
    AuthError,
    ConfigError,
    PermanentCrmError,
    RateLimited,
    TransientCrmError,
)
from bridge.settings import CrmConfig, CrmSecrets, Settings, crm_secrets
from bridge.tokens import (
    BearerAuth,
    OAuthTokenSource,
    StaticToken,
    TokenPair,
    TokenRepository,
    TokenSource,
)

OnCall = Callable[[str, str, float, int], None]
AuthFlow = Callable[[TokenSource], httpx.Auth]
# auth = "minted": the adapter's own token source, built on the connection (its `http`
# carries the mint requests), e.g. sessions minted by a JWT bearer grant.
MintedSource = Callable[["Connection"], TokenSource]


@dataclass(frozen=True)
class Wiring:
    """What every builder gets: its `[crm.NAME]` section, the settings (for the section's
    secrets), the token store, and the transport, call observer and clock tests replace."""

    name: str
    config: CrmConfig
    settings: Settings
    tokens: TokenRepository
    transport: httpx.AsyncBaseTransport | None = None
    on_call: OnCall | None = None
    clock: Callable[[], float] = time.time

    def secrets(self, token_name: str) -> CrmSecrets:
        return crm_secrets(self.settings, self.name, token_name)

    def options(self, known: Sequence[str]) -> Options:
        """The section's vendor `options`; one the builder does not know is refused."""
        where = f"crm.{self.name}.options"
        unknown = sorted(set(self.config.options) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
        return Options(where, self.config.options)


@dataclass(frozen=True)
class Options:
    """A section's `[crm.NAME.options]`, read with the builder's defaults: a value of the
    wrong kind is a `ConfigError` naming the option and what it must be."""

    where: str
    values: Mapping[str, object]

    def whole(self, key: str, default: int, minimum: int, meaning: str) -> int:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{self.where}.{key}: {meaning}")
        return value

    def positive(self, key: str, default: float) -> float:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{self.where}.{key}: a number above 0")
        return float(value)

    def url(self, key: str, default: str) -> str:
        value = self.values.get(key, default)
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise ConfigError(f"{self.where}.{key}: an http(s) URL")
        return value


class NotJson:
    """`Connection.empty_answer` when an empty answer is an error ("answer is not JSON")."""


@dataclass(frozen=True)
class OAuthEndpoint:
    """One CRM's OAuth2 token endpoint, as data.

    `style` says how the client credentials and the grant travel: a JSON body (amoCRM), a
    form body (HubSpot), HTTP Basic plus a form (Pipedrive) or the query string of a GET
    (Bitrix24). `error_fields` name the fields of a refusal worth echoing (the first one
    present; never a secret). `rotates`: each refresh answers a new refresh token, which
    must be there; otherwise a missing one means "keep the one presented". `client_app`
    False: the endpoint knows no client application (Megaplan's, whose pair comes from a
    password grant): no client credentials are sent or needed, and there is no code.
    """

    url: str  # relative to the API base, or absolute (its own server)
    style: Literal["json", "form", "basic", "query"]
    error_fields: tuple[str, ...]
    rotates: bool
    refused: frozenset[int] = frozenset({400, 401, 403})
    redirect_on_refresh: bool = False  # amoCRM wants redirect_uri with every grant
    refresh_margin: float = 300.0  # seconds before expiry a token is refreshed
    client_app: bool = True

    @property
    def method(self) -> str:
        return "GET" if self.style == "query" else "POST"


class ApiTokenHeader(httpx.Auth):
    """A static token in a header of its own (Pipedrive's `x-api-token`), never in the
    query string, which would put the secret into every logged URL."""

    def __init__(self, source: TokenSource, header: str) -> None:
        self._source = source
        self._header = header

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers[self._header] = await self._source.current()
        yield request


class Connection:
    """One configured CRM's client, limiter, credentials and token endpoint."""

    def __init__(
        self,
        wiring: Wiring,
        secrets: CrmSecrets,
        endpoint: OAuthEndpoint | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        base_url: str | None = None,
        burst: int = 1,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
        oauth_auth: AuthFlow = BearerAuth,
        static_auth: AuthFlow = BearerAuth,
        static_token: tuple[str | None, str] | None = None,
        empty_answer: JSON = NotJson,
        minted: MintedSource | None = None,
    ) -> None:
        name, config, tokens, clock = wiring.name, wiring.config, wiring.tokens, wiring.clock
        self.name = name
        self.config = config
        self.secrets = secrets
        self._endpoint = endpoint
        self.empty_answer = empty_answer
        self._tokens = tokens
        self.clock = clock
        if not (base_url or config.base_url):
            raise ConfigError(f"crm.{name}.base_url is empty: set the CRM's https:// address")
        self.client = httpx.AsyncClient(
            base_url=base_url or config.base_url,
            timeout=config.request_timeout_seconds,
            transport=transport or wiring.transport,
            event_hooks=dict(event_hooks or {}),
        )
        limiter = RateLimiter(config.rate_limit_per_second, burst=burst)
        self.http = CrmHttp(name, self.client, limiter, on_call=wiring.on_call)
        self.source: TokenSource
        if config.auth == "minted":
            if minted is None:
                raise ConfigError(f'crm.{name}.auth = "minted": {config.kind} mints no sessions')
            # Nothing stored, no refresh token: the source mints from the environment's
            # credentials and again on expiry or a 401 (the bearer flow asks it).
            self.source = minted(self)
            self.client.auth = oauth_auth(self.source)
        elif config.auth == "oauth":
            if endpoint is None:
                raise ConfigError(f'crm.{name}.auth: this CRM has no OAuth: use "long_lived_token"')
            self.source = OAuthTokenSource(
                name,
                tokens,
                self.refresh,
                bootstrap_refresh_token=secrets.refresh_token,
                refresh_margin_seconds=endpoint.refresh_margin,
                clock=clock,
            )
            # Set after construction: the refresher above needs this same client.
            self.client.auth = oauth_auth(self.source)
        else:
            token, hint = static_token or (secrets.token, self._static_hint())
            self.source = StaticToken(name, token, hint)
            self.client.auth = static_auth(self.source)
        self.extra_health: Callable[[], Mapping[str, object]] = dict
        self.lanes: dict[str, CrmHttp] = {}

    @property
    def endpoint(self) -> OAuthEndpoint:
        """The OAuth token endpoint; an `AuthError` for a CRM without OAuth (an API key
        is all it takes, e.g. Odoo's)."""
        if self._endpoint is None:
            message = f"this CRM has no OAuth: set {self.secrets.var(self.secrets.token_name)}"
            raise AuthError(self.name, message)
        return self._endpoint

    def lane(self, health_key: str, rate: float) -> CrmHttp:
        """A second `CrmHttp` on the same client with a rate limiter of its own (a search
        API with its own limit), shown in /webhook/health as `health_key`."""
        http = CrmHttp(self.name, self.client, RateLimiter(rate), on_call=self.http.on_call)
        self.lanes[health_key] = http
        return http

    # ---- requests -------------------------------------------------------------------

    async def send(
        self, method: str, path: str, operation: str, *, http: CrmHttp | None = None, **kw: Any
    ) -> JSON:
        """One request through `CrmHttp` (or a lane); the JSON answer. An empty answer
        (204) is `empty_answer`, or an error when the CRM always answers JSON.
        `idempotent=True` in `kw` marks a read that travels as a POST (an RPC search):
        quick-retried after a 5xx or a timeout like a GET."""
        response = await (http or self.http).request(method, path, operation=operation, **kw)
        empty = response.status_code == 204 or not response.content
        if empty and self.empty_answer is not NotJson:
            return copy.copy(self.empty_answer)
        try:
            return response.json()
        except ValueError as exc:
            raise TransientCrmError(self.name, f"{method} {path}: answer is not JSON") from exc

    @contextmanager
    def reading(self, operation: str) -> Iterator[None]:
        """Turn a payload that cannot be built, or an answer of an unexpected shape, into
        a `PermanentCrmError` naming the operation."""
        try:
            yield
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            message = f"{operation}: {type(exc).__name__}: {exc}"
            raise PermanentCrmError(self.name, message) from exc

    # ---- OAuth ----------------------------------------------------------------------

    async def refresh(self, refresh_token: str) -> TokenPair:
        grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if self.endpoint.redirect_on_refresh:
            grant["redirect_uri"] = self.secrets.redirect_uri
        return await self._token_request(grant, "refresh token", refresh_token)

    async def exchange_code(self, code: str) -> TokenPair:
        """`crm-bridge auth`: trade an authorization code for a pair and store it before use."""
        if self.config.auth == "minted":
            message = (
                "sessions are minted from the credentials in the environment: there is no"
                f" code to exchange or token to store; `crm-bridge check {self.name}` mints one"
            )
            raise AuthError(self.name, message)
        endpoint = self.endpoint  # a CRM without OAuth says so first
        if self.config.auth != "oauth":
            message = f'auth is "{self.config.auth}": an authorization code needs auth = "oauth"'
            raise AuthError(self.name, message)
        if not endpoint.client_app:
            message = (
                "this CRM issues no authorization codes: store the pair its token endpoint"
                f" gave with `crm-bridge auth {self.name} --access-token … --refresh-token …`,"
                f" or set {self.secrets.var('REFRESH_TOKEN')}"
            )
            raise AuthError(self.name, message)
        grant = {"grant_type": "authorization_code", "code": code}
        if self.secrets.redirect_uri or endpoint.style != "query":
            grant["redirect_uri"] = self.secrets.redirect_uri
        pair = await self._token_request(grant, "authorization code", None)
        await self._tokens.save_tokens(self.name, pair)
        if isinstance(self.source, OAuthTokenSource):
            self.source.forget()
        return pair

    def missing_client(self) -> str | None:
        """What is missing to talk to the token endpoint (None: nothing)."""
        no_client_app = self._endpoint is not None and not self._endpoint.client_app
        if no_client_app or (self.secrets.client_id and self.secrets.client_secret):
            return None
        wanted = f"{self.secrets.var('CLIENT_ID')} and {self.secrets.var('CLIENT_SECRET')}"
        return f"OAuth needs {wanted}; then run `crm-bridge auth {self.name}`"

    async def _token_request(
        self, grant: dict[str, str], what: str, presented: str | None
    ) -> TokenPair:
        missing = self.missing_client()
        if missing is not None:
            raise AuthError(self.name, missing)
        response = await self.http.token_request(
            self.endpoint.method, self.endpoint.url, **self._token_body(grant)
        )
        status = response.status_code
        if status in self.endpoint.refused:
            message = f"{what} rejected (HTTP {status}{self._refusal(response)})"
            raise AuthError(self.name, f"{message}: run `crm-bridge auth {self.name}`")
        where = f"{self.endpoint.method} {httpx.URL(self.endpoint.url).path}"
        if status >= 400:
            # Mapped like every answer, but the body is not echoed: it answers a request
            # that carried the client secret.
            if status == 429:
                raise RateLimited(self.name, f"{where}: 429", retry_after_seconds(response))
            if status == 408 or status >= 500:
                raise TransientCrmError(self.name, f"{where}: HTTP {status}")
            raise PermanentCrmError(self.name, f"{where}: HTTP {status}")
        try:
            body = response.json()
            refresh = body.get("refresh_token") or (None if self.endpoint.rotates else presented)
            if not refresh:
                raise ValueError("no refresh_token")
            expires_at = self.clock() + float(body["expires_in"])
            return TokenPair(str(body["access_token"]), str(refresh), expires_at)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TransientCrmError(self.name, f"{where}: malformed answer") from exc

    def _token_body(self, grant: dict[str, str]) -> dict[str, Any]:
        client_id, secret = self.secrets.client_id, self.secrets.client_secret or ""
        credentials = {"client_id": client_id, "client_secret": secret}
        if not self.endpoint.client_app:
            credentials = {}
        style = self.endpoint.style
        if style == "basic":
            return {"data": grant, "auth": httpx.BasicAuth(client_id, secret)}
        if style == "query":
            return {"params": {**credentials, **grant}}
        if style == "form":
            return {"data": {**credentials, **grant}}
        return {"json": {**credentials, **grant}}

    def _refusal(self, response: httpx.Response) -> str:
        # Echo only the vendor's short reason (hint, status code, error): never a secret.
        try:
            body = response.json()
        except ValueError:
            return ""
        if not isinstance(body, dict):
            return ""
        reason = next((body[f] for f in self.endpoint.error_fields if body.get(f)), None)
        return f": {str(reason)[:120]}" if reason else ""

    # ---- lifecycle ------------------------------------------------------------------

    async def credentials_problem(self) -> str | None:
        """Why this CRM cannot be called yet, without calling it (None: it can)."""
        if self.config.auth == "oauth":
            missing = self.missing_client()
            if missing is not None:
                return missing
        return await self.source.problem()

    def token_expires_at(self) -> float | None:
        """When the current access token expires (None: unknown or never)."""
        return self.source.expires_at()

    def health_details(self) -> Mapping[str, object]:
        """What an operator should see in /webhook/health: the rates, a budget."""
        rates = {"rate_limit_per_second": round(self.http.limiter.rate, 2)}
        rates |= {key: round(http.limiter.rate, 2) for key, http in self.lanes.items()}
        return {**rates, **self.extra_health()}

    async def aclose(self) -> None:
        await self.client.aclose()

    def _static_hint(self) -> str:
        return (
            f"set {self.secrets.var(self.secrets.token_name)}"
            f' or use auth = "oauth" and run `crm-bridge auth {self.name}`'
        )
