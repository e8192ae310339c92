"""What every CRM adapter shares: the interface, and one `send()` that owns HTTP policy.

`CrmHttp` wraps the one `httpx.AsyncClient` a CRM gets for the process lifetime and does,
for every request: wait for the rate limiter, count the call for the current delivery,
map the HTTP status to the error tree of `bridge.errors`, and retry quickly where that
is safe. Adapters only translate between the domain types and their API.

Quick retries (3 tries, exponential backoff with jitter) apply to 429 and connection
failures for every request (the CRM never saw it or refused it), and to 5xx and timeouts
only for idempotent requests: a POST that timed out may have been applied, so it is left
to the flow, whose remote-state checks find what the POST created. A read that travels as
a POST (an RPC API's search) says so with `idempotent=True` and is retried like a GET.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import httpx
from httpx._types import QueryParamTypes
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from bridge.crm import calllog
from bridge.domain import (
    Company,
    CompanyRecord,
    Contact,
    ContactPatch,
    Deal,
    DealChange,
    FieldUpdate,
    LookupKey,
    NewContact,
    NewDeal,
    OrderItem,
)
from bridge.errors import (
    AuthError,
    CrmError,
    PermanentCrmError,
    RateLimited,
    TransientCrmError,
)

if TYPE_CHECKING:
    from bridge.crm.connection import Connection

JSON = Any  # what json.loads returns; narrowed by each adapter's mappers
IDEMPOTENT_METHODS = ("GET", "HEAD", "PUT", "PATCH", "DELETE")


@dataclass
class CallStats:
    """CRM calls made on behalf of one delivery (see `counting_calls`)."""

    calls: int = 0
    rate_limited: int = 0


_current_stats: contextvars.ContextVar[CallStats | None] = contextvars.ContextVar(
    "crm_call_stats", default=None
)


class counting_calls:  # noqa: N801 - used as a context manager, reads like one
    """Count the CRM calls made inside the block (per asyncio task, via a contextvar)."""

    def __init__(self) -> None:
        self.stats = CallStats()
        self._token: contextvars.Token[CallStats | None] | None = None

    def __enter__(self) -> CallStats:
        self._token = _current_stats.set(self.stats)
        return self.stats

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current_stats.reset(self._token)


def current_stats() -> CallStats | None:
    """The counters in force (a batch credits its calls to the first delivery it served)."""
    return _current_stats.get()


class Departure:
    """One request granted by a `RateLimiter`: when it was granted, and when its headers
    were written (the HTTP client's trace says; None while it has not left yet)."""

    def __init__(self, granted: float, clock: Callable[[], float]) -> None:
        self.granted = granted
        self.at: float | None = None
        self._clock = clock

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpx's `trace` request extension (httpcore calls it around each step).

        "complete", not "started": the time taken after the write is never earlier than the
        write, so a window counted from it can only be wider than the CRM's."""
        if event.endswith(".send_request_headers.complete"):
            self.at = self._clock()

    def settle(self) -> None:
        """The request is over; one the trace never saw (no socket: a test transport, a
        refused connection) counts from when it was granted."""
        if self.at is None:
            self.at = self.granted


class RateLimiter:
    """Spaces requests evenly at `rate` per second (a token bucket of depth `burst`).

    After a 429 it backs off: honours Retry-After, and slows to a lower rate that
    recovers gradually, so a limit shared with other integrations is respected.

    The bucket starts empty: the first request waits one interval. A bridge restarted
    after a crash or SIGKILL cannot know what its previous run sent in the last second,
    and an empty bucket at start is never more permissive than the old run's bucket
    would have been had it kept going, so the CRM sees the configured rate across the
    restart too (a full bucket at start was a burst on top of the old run's last calls).

    Slots are reserved in advance, and a granted request leaves later still (a busy event
    loop: the HTTP client yields to it before it writes), so it can go out close to the
    ones granted after it, and a CRM counting requests in a sliding second (amoCRM: 7)
    would see one too many. With `burst` 1 the limiter therefore also counts requests by
    when they really left (`Departure`): at most ceil(rate) in any ceil(rate) intervals,
    a request not yet written counting as leaving now.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._base_interval = 1.0 / rate
        self._interval = self._base_interval
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._next_slot = clock() + self._interval  # empty: see the class docstring
        self._last_penalty = -1e9
        self._sent: list[Departure] = []  # the latest requests, by when they left

    @property
    def rate(self) -> float:
        return 1.0 / self._interval

    async def acquire(self) -> None:
        """Wait for a request's turn (for a caller that cannot trace its request)."""
        (await self.reserve()).settle()

    async def reserve(self) -> Departure:
        """Wait for a request's turn; the caller hands the departure's `trace` to httpx
        and settles it when the request is over."""
        now = self._clock()
        self._recover(now)
        earliest = now - (self._burst - 1) * self._interval
        slot = max(self._next_slot, earliest)
        self._next_slot = slot + self._interval
        if slot > now:
            await self._sleep(slot - now)
        if self._burst == 1:
            return await self._within_window()
        return Departure(self._clock(), self._clock)

    async def _within_window(self) -> Departure:
        allowed = math.ceil(1.0 / self._interval - 1e-9)
        window = allowed * self._interval
        while True:
            now = self._clock()
            self._sent = [d for d in self._sent if d.at is None or d.at > now - window + 1e-6]
            if len(self._sent) < allowed:
                departure = Departure(now, self._clock)
                self._sent.append(departure)
                return departure
            left = [d.at for d in self._sent if d.at is not None]
            await self._sleep(min(left) + window - now if left else self._interval)

    def penalize(self, retry_after: float | None) -> None:
        now = self._clock()
        self._last_penalty = now
        self._interval = min(self._interval * 1.25, self._base_interval * 4)
        pause = retry_after if retry_after is not None else 1.0
        self._next_slot = max(self._next_slot, now + pause)

    def _recover(self, now: float) -> None:
        # One step back toward the configured rate per quiet 30 s.
        if self._interval > self._base_interval and now - self._last_penalty > 30:
            self._interval = max(self._base_interval, self._interval / 1.25)
            self._last_penalty = now


def retry_after_seconds(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_for_status(crm: str, response: httpx.Response) -> CrmError | None:
    """The one mapping from an HTTP status to the error tree (None when successful)."""
    status = response.status_code
    if status < 400:
        return None
    where = f"{response.request.method} {response.request.url.path}"
    detail = _short_detail(response)
    if status == 429:
        return RateLimited(crm, f"{where}: 429 rate limited", retry_after_seconds(response))
    if status == 401:
        return AuthError(crm, f"{where}: 401 unauthorised{detail}")
    if status == 408 or status >= 500:
        return TransientCrmError(crm, f"{where}: HTTP {status}{detail}")
    return PermanentCrmError(crm, f"{where}: HTTP {status}{detail}")


def _short_detail(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return f": {text[:300]}" if text else ""


def _host_port(client: httpx.AsyncClient) -> str:
    """Where a refused connection was going: host:port of the CRM's base URL."""
    url = client.base_url
    port = url.port or {"https": 443, "http": 80}.get(url.scheme, 0)
    return f"{url.host}:{port}"


def _is_quick_retryable(idempotent: bool) -> Callable[[BaseException], bool]:
    def check(exc: BaseException) -> bool:
        if isinstance(exc, RateLimited):
            return True
        if isinstance(exc, _NotSentError):
            return True
        return idempotent and isinstance(exc, TransientCrmError)

    return check


class _NotSentError(TransientCrmError):
    """The request never reached the CRM (connection refused, DNS): always safe to retry."""


@dataclass
class CrmHttp:
    """One CRM's HTTP client with rate limiting, call counting and error mapping."""

    crm: str
    client: httpx.AsyncClient
    limiter: RateLimiter
    quick_tries: int = 3
    backoff_initial: float = 0.2  # seconds; doubles per try, with jitter
    backoff_max: float = 2.0
    on_call: Callable[[str, str, float, int], None] | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: QueryParamTypes | None = None,
        json: JSON = None,
        operation: str = "",
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """`idempotent`: whether repeating the request is harmless (True for a POST that
        only reads: a search, a batch of queries); by default, whether its method says so."""
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.quick_tries),
            wait=wait_exponential_jitter(
                multiplier=self.backoff_initial,
                max=self.backoff_max,
                jitter=self.backoff_initial,
            ),
            retry=retry_if_exception(_is_quick_retryable(idempotent)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send_once(method, path, params, json, operation, idempotent)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _send_once(
        self,
        method: str,
        path: str,
        params: QueryParamTypes | None,
        body: JSON,
        operation: str,
        idempotent: bool,
    ) -> httpx.Response:
        departure = await self.limiter.reserve()
        stats = _current_stats.get()
        if stats is not None:
            stats.calls += 1
        started = time.perf_counter()
        status = 0
        failure: str | None = None
        try:
            response = await self.client.request(
                method, path, params=params, json=body, extensions={"trace": departure.trace}
            )
            status = response.status_code
        except httpx.ConnectError as exc:
            failure = f"{method} {path}: cannot connect to {_host_port(self.client)} ({exc})"
            raise _NotSentError(self.crm, failure) from exc
        except httpx.TimeoutException as exc:
            failure = f"{method} {path}: timeout ({type(exc).__name__})"
            raise TransientCrmError(self.crm, failure, maybe_applied=not idempotent) from exc
        except httpx.TransportError as exc:
            failure = f"{method} {path}: {type(exc).__name__}"
            raise TransientCrmError(self.crm, failure, maybe_applied=not idempotent) from exc
        finally:
            departure.settle()
            if self.on_call is not None:
                elapsed = time.perf_counter() - started
                self.on_call(self.crm, operation or method, elapsed, status)
            if calllog.recording():
                if status >= 400:
                    failure = response.text
                calllog.note_call(self.crm, method, path, status, started, error=failure)
        error = error_for_status(self.crm, response)
        if isinstance(error, RateLimited):
            self.limiter.penalize(error.retry_after)
            if stats is not None:
                stats.rate_limited += 1
        if error is not None:
            raise error
        return response

    async def token_request(
        self, method: str, url: str, *, auth: httpx.Auth | None = None, **body: Any
    ) -> httpx.Response:
        """A call to an OAuth token endpoint: outside the bearer-token flow (its own `auth`,
        none by default), rate-limited and observed like every call, never retried (a
        refresh token is single-use), and answered raw for the caller to judge."""
        departure = await self.limiter.reserve()
        started, status = time.perf_counter(), 0
        try:
            response = await self.client.request(
                method,
                url,
                auth=auth or httpx.Auth(),
                extensions={"trace": departure.trace},
                **body,
            )
            status = response.status_code
        except httpx.TransportError as exc:
            message = f"{method} {httpx.URL(url).path}: {type(exc).__name__}"
            raise TransientCrmError(self.crm, message) from exc
        finally:
            departure.settle()
            if self.on_call is not None:
                self.on_call(self.crm, "oauth.token", time.perf_counter() - started, status)
            if calllog.recording():
                failure = f"HTTP {status}" if status >= 400 else None
                calllog.note_call(self.crm, method, url, status, started, error=failure)
        return response


@dataclass(frozen=True)
class Pipeline:
    id: str
    name: str
    statuses: Mapping[str, str]  # status id → name


@dataclass(frozen=True)
class CustomField:
    id: str
    name: str
    type: str
    entity: str  # "contacts" | "leads"
    enums: Mapping[str, str] = field(default_factory=dict)  # enum id → value


@dataclass(frozen=True)
class CrmSchema:
    """What `crm-bridge discover` prints and `crm-bridge check` compares the config against."""

    pipelines: tuple[Pipeline, ...]
    fields: tuple[CustomField, ...]
    # Statuses the CRM itself calls won or lost, where the configured `closed_status_ids`
    # decide what is closed (Zoho's stage forecast types); None: the CRM says nothing.
    closed_statuses: frozenset[str] | None = None


Confirm = Callable[[Contact, LookupKey], bool]
CompanyKey = Literal["inn", "name"]
ConfirmCompany = Callable[[CompanyRecord, CompanyKey], bool]


def first_confirmed(
    keys: Sequence[LookupKey], hits: Mapping[LookupKey, Sequence[Contact]], confirm: Confirm
) -> Contact | None:
    """Priority order over keys; among several confirmed hits of one key, the oldest id."""
    for key in keys:
        confirmed = [hit for hit in hits.get(key, ()) if confirm(hit, key)]
        if confirmed:
            return min(confirmed, key=_id_order)
    return None


def _id_order(contact: Contact) -> tuple[int, str]:
    return (int(contact.id), contact.id) if contact.id.isdigit() else (0, contact.id)


class CrmAdapter(Protocol):
    """One CRM, translated: what the flow uses (and `schema` for discover / check). Every
    method may raise the `CrmError` subclasses. Credentials, health and closing are the
    `connection`'s."""

    name: str
    connection: Connection

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        """The contact of the first key, in the given priority order, with a confirmed hit.

        CRM searches match loosely, so `confirm(hit, key)` (the flow's rule) decides what
        counts; the adapter only chooses how to search in as few calls as its API allows
        (one key at a time stopping at the first hit, or all keys at once).
        """
        ...

    async def create_contact(self, new: NewContact) -> Contact: ...

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None: ...

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        """Every deal linked to the contact, in any pipeline and status; deals in `known`
        were just read and need not be fetched again."""
        ...

    async def get_deal(self, deal_id: str) -> Deal | None:
        """One deal with its linked contact ids; None when it no longer exists."""
        ...

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        """Create a deal linked to an existing contact, with its fields set."""
        ...

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        """Both in as few calls as the API allows (amoCRM: one `leads/complex`)."""
        ...

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None: ...

    async def deal_notes(self, deal_id: str) -> list[str]:
        """Texts of the deal's notes (used only on retries to close the crash window)."""
        ...

    async def add_note(self, deal_id: str, text: str) -> None: ...

    async def schema(self) -> CrmSchema:
        """Pipelines and custom fields, for `crm-bridge discover` and `crm-bridge check`."""
        ...


@runtime_checkable
class OrderAdapter(CrmAdapter, Protocol):
    """A CRM that also takes orders (SPEC §8): companies, stage moves and deal items.

    The order flow finds the contact and the open deal with the `CrmAdapter` operations
    (a deal carries the order id in `order_fields.order_id`, read back in `Deal.fields`
    like every field of `CrmConfig.deal_field_ids()`), creates the deal with
    `NewDeal.company_id` set for a business customer, and then uses these.
    """

    # Whether `set_deal_items` keeps the items as the CRM's own deal products (amoCRM
    # catalog elements, Bitrix24 product rows, HubSpot line items, Pipedrive deal
    # products); False: the CRM has none on a deal, and the items live in the note only.
    keeps_items: bool

    async def find_company(self, company: Company, confirm: ConfirmCompany) -> CompanyRecord | None:
        """The company with a confirmed hit by INN (the CRM's own INN field, or the one
        `order_fields.company_inn` names), else by name; among several, the oldest id.
        Searches match loosely; `confirm(hit, key)` is the flow's rule."""
        ...

    async def create_company(self, company: Company) -> CompanyRecord:
        """A new company with its name, INN, phone and e-mail."""
        ...

    async def link_contact_to_company(self, contact_id: str, company_id: str) -> None:
        """Make the contact one of the company's; harmless when it already is."""
        ...

    async def change_deal(self, deal_id: str, change: DealChange) -> None:
        """Move the deal and write what changed, in one call where the API allows."""
        ...

    async def set_deal_items(self, deal_id: str, items: Sequence[OrderItem], currency: str) -> None:
        """Replace the deal's items: afterwards it holds exactly these (none when empty).
        Repeating it is harmless: a retry after a lost answer must not add a second set."""
        ...


DealWrite = tuple[str, Sequence[FieldUpdate]]  # a deal id and the fields it gets
NoteWrite = tuple[str, str]  # a deal id and the note's text
ItemError = CrmError | None  # one item of a batch write: None when it was applied


@dataclass(frozen=True)
class BatchForms:
    """A CRM's batch forms: one call does one flow step for many deliveries (issue 20).

    A form left None runs per call. A form takes the items of up to `limit` deliveries
    (one per customer) and answers per item, in the items' order: a write's `None`
    (applied) or the `CrmError` that refused that item alone; a read's mapping has only
    the deals that still exist. An error for the whole call is raised, as per call: a
    `PermanentCrmError` then means that nothing was applied (the bridge retries each item
    alone to find the one refused), a `TransientCrmError` with `maybe_applied` that some
    or all of it may have landed (the flow's remote checks decide on the retry). A form
    may split its items over several requests when its API's limit is lower.
    """

    limit: int
    get_deals: Callable[[Sequence[str]], Awaitable[Mapping[str, Deal]]] | None = None
    update_deals: Callable[[Sequence[DealWrite]], Awaitable[Sequence[ItemError]]] | None = None
    add_notes: Callable[[Sequence[NoteWrite]], Awaitable[Sequence[ItemError]]] | None = None
    create_deals: (
        Callable[[Sequence[tuple[Contact, NewDeal]]], Awaitable[Sequence[Deal | CrmError]]] | None
    ) = None
    create_contacts_and_deals: (
        Callable[
            [Sequence[tuple[NewContact, NewDeal]]],
            Awaitable[Sequence[tuple[Contact, Deal] | CrmError]],
        ]
        | None
    ) = None
    # Each contact's deals, as its `list_deals` answers them (the deals just read need
    # not be fetched again), or that item's error where `list_deals` would raise one.
    list_deals: (
        Callable[
            [Sequence[tuple[Contact, Sequence[Deal]]]], Awaitable[Sequence[list[Deal] | CrmError]]
        ]
        | None
    ) = None
    # Each customer's keys in priority order; answers each one's confirmed contact.
    find_contacts: (
        Callable[[Sequence[Sequence[LookupKey]], Confirm], Awaitable[Sequence[Contact | None]]]
        | None
    ) = None


@runtime_checkable
class Batching(Protocol):
    """An adapter whose CRM has batch forms (`BatchForms`)."""

    batch_forms: BatchForms


def batch_forms(adapter: CrmAdapter) -> BatchForms | None:
    """The adapter's batch forms, when its CRM has any."""
    return adapter.batch_forms if isinstance(adapter, Batching) else None


def order_adapter(adapter: CrmAdapter) -> OrderAdapter | None:
    """The adapter's order operations, when its CRM has them."""
    return adapter if isinstance(adapter, OrderAdapter) else None
