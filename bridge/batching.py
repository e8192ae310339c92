"""Batched drain (issue 20): one flow step of many deliveries in one CRM call.

The worker starts a group of due payments of different customers in one CRM. Each runs
its own flow (`bridge.flow`, unchanged) on a `GroupMember`: a `CrmAdapter` that hands the
steps its CRM has a batch form for (`BatchForms`) to the group and runs the others itself.
The group calls a batch form when every member still running waits on the CRM: a barrier,
not a timer, so nothing waits for work that is not already due, and a member busy with a
search or the database is waited for. A form's call with one item is the per-call method:
a group of one (a payment arriving alone) sends exactly what it always sent.

Exactly once holds as for single calls: each member gets its own item's answer or error
and journals its own step after it; a call refused as a whole (nothing applied) is tried
again item by item, per call, so that only the refused item fails; a call whose answer
was lost fails every member with the same maybe-applied error, and the flow's remote
checks (the payment-id marker, the note check) decide on the retry.

A batch call is recorded in the call list of every delivery it served (with the batch
size) and counted once, on the first of them, so the deliveries' `crm_calls` add up to
the calls sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.crm import calllog
from bridge.crm.base import (
    BatchForms,
    CallStats,
    Confirm,
    CrmSchema,
    counting_calls,
    current_stats,
)
from bridge.crm.calllog import CallLog, recording_calls
from bridge.domain import Contact, ContactPatch, Deal, FieldUpdate, LookupKey, NewContact, NewDeal
from bridge.errors import PermanentCrmError

if TYPE_CHECKING:
    from bridge.crm.base import CrmAdapter
    from bridge.crm.connection import Connection

log = logging.getLogger("bridge.batching")

T = TypeVar("T")
# Whole-call refusals in a row after which a form is taken for unsupported (a proxy or an
# API version without it): its steps run per call for the rest of the process.
REFUSALS_BEFORE_PER_CALL = 3


class _Alone:
    """The answer that tells a member to make its call itself, per call."""


ALONE = _Alone()


BatchCall = Callable[[Sequence[Any]], Awaitable[Sequence[Any]]]  # items → one answer each


@dataclass
class _Request:
    form: str
    item: Any
    batch: BatchCall
    future: asyncio.Future[Any]
    log: CallLog | None  # the member's call list and counters, to credit batch calls to
    stats: CallStats | None
    confirm: Confirm | None = None
    settled: bool = False  # no longer counted as waiting


@dataclass
class BatchGroup:
    """Up to `forms.limit` deliveries of one CRM that share batch calls."""

    adapter: CrmAdapter
    forms: BatchForms
    # Whole-call refusals in a row, per form: shared by a CRM's groups (the worker's).
    refusals: dict[str, int] = field(default_factory=dict)
    _active: int = 0
    _waiting: int = 0  # members whose request is pending or in flight
    _pending: list[_Request] = field(default_factory=list)
    _flushes: set[asyncio.Task[None]] = field(default_factory=set)

    def join(self) -> GroupMember:
        self._active += 1
        return GroupMember(self)

    def leave(self) -> None:
        self._active -= 1
        self._maybe_flush()

    @property
    def members(self) -> int:
        return self._active

    async def submit(
        self, form: str, item: Any, batch: BatchCall, confirm: Confirm | None = None
    ) -> Any:
        """The member's item done by the batch form (its own answer), or `ALONE`; an
        item's error is raised."""
        if self.refusals.get(form, 0) >= REFUSALS_BEFORE_PER_CALL:
            return ALONE
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request = _Request(form, item, batch, future, calllog.current(), current_stats(), confirm)
        self._pending.append(request)
        self._waiting += 1
        self._maybe_flush()
        try:
            return await future
        except asyncio.CancelledError:
            if request in self._pending:  # never sent: this member is gone
                self._pending.remove(request)
            self._settle(request)
            raise

    def _maybe_flush(self) -> None:
        if not self._pending or self._waiting < self._active:
            return
        requests, self._pending = self._pending, []
        # A fresh context: the batch's calls are credited to its members explicitly, not
        # to whichever member happened to arrive last.
        task = asyncio.get_running_loop().create_task(
            self._flush(requests), context=contextvars.Context()
        )
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, requests: list[_Request]) -> None:
        chunks: dict[tuple[str, Any], list[_Request]] = defaultdict(list)
        for request in requests:
            chunks[(request.form, request.confirm)].append(request)
        try:
            await asyncio.gather(*(self._run(chunk) for chunk in chunks.values()))
        finally:
            for request in requests:  # cancelled mid-call: the members stop too
                self._settle(request)
                if not request.future.done():
                    request.future.cancel()

    async def _run(self, chunk: list[_Request]) -> None:
        form = chunk[0].form
        if len(chunk) == 1:
            self._resolve(chunk[0], ALONE)
            return
        with recording_calls() as calls, counting_calls() as stats:
            items = [request.item for request in chunk]
            try:
                answers = _checked(form, items, await chunk[0].batch(items))
            except PermanentCrmError as exc:
                self._refused(form, exc, len(chunk))
                answers = [ALONE] * len(chunk)
            except Exception as exc:  # noqa: BLE001 - the whole call failed: each member sees why
                answers = [exc] * len(chunk)
            else:
                self.refusals[form] = 0
        self._credit(chunk, calls, stats)
        for request, answer in zip(chunk, answers, strict=True):
            self._resolve(request, answer)

    def _refused(self, form: str, exc: PermanentCrmError, size: int) -> None:
        count = self.refusals[form] = self.refusals.get(form, 0) + 1
        level = logging.WARNING if count >= REFUSALS_BEFORE_PER_CALL else logging.INFO
        then = (
            "per call from now on"
            if count >= REFUSALS_BEFORE_PER_CALL
            else "each item is tried alone"
        )
        log.log(
            level,
            "%s: batch %s of %d refused as a whole (%d in a row): %s; %s",
            self.adapter.name,
            form,
            size,
            count,
            exc.message,
            then,
        )

    def _settle(self, request: _Request) -> None:
        if not request.settled:
            request.settled = True
            self._waiting -= 1

    def _resolve(self, request: _Request, answer: Any) -> None:
        self._settle(request)
        if request.future.done():  # its member was cancelled meanwhile
            return
        if isinstance(answer, BaseException):
            request.future.set_exception(answer)
        else:
            request.future.set_result(answer)

    @staticmethod
    def _credit(chunk: list[_Request], calls: CallLog, stats: CallStats) -> None:
        shared = [replace(call, batch=len(chunk)) for call in calls.calls]
        for request in chunk:
            if request.log is not None:
                request.log.calls.extend(shared)
        first = chunk[0].stats
        if first is not None:
            first.calls += stats.calls
            first.rate_limited += stats.rate_limited


async def _each_deal(
    read: Callable[[Sequence[str]], Awaitable[Mapping[str, Deal]]], deal_ids: Sequence[str]
) -> list[Deal | None]:
    found = await read(deal_ids)
    return [found.get(deal_id) for deal_id in deal_ids]


async def _find_each(
    find: Callable[[Sequence[Sequence[LookupKey]], Confirm], Awaitable[Sequence[Contact | None]]],
    confirm: Confirm,
    keys: Sequence[Sequence[LookupKey]],
) -> Sequence[Contact | None]:
    return await find(keys, confirm)


def _checked(form: str, items: Sequence[Any], answers: Sequence[Any]) -> list[Any]:
    """One answer per item (a form answering otherwise fails the whole call: every
    member retries, as after an unexpected error)."""
    if len(answers) != len(items):
        raise ValueError(f"batch {form}: {len(answers)} answers for {len(items)} items")
    return list(answers)


class GroupMember:
    """One delivery's view of its group: a `CrmAdapter` for the flow."""

    def __init__(self, group: BatchGroup) -> None:
        self._group = group
        self._inner = group.adapter
        self.name = group.adapter.name
        self.connection: Connection = group.adapter.connection
        self._left = False

    def leave(self) -> None:
        """The delivery's flow ended (any way): the others no longer wait for it."""
        if not self._left:
            self._left = True
            self._group.leave()

    async def _step(
        self,
        form: str,
        batch: BatchCall | None,
        item: Any,
        alone: Callable[[], Awaitable[T]],
        confirm: Confirm | None = None,
    ) -> T:
        if batch is None:
            return await alone()
        answer = await self._group.submit(form, item, batch, confirm)  # raises its error
        if answer is ALONE:
            return await alone()
        return answer  # type: ignore[no-any-return]

    async def find_contact(self, keys: Sequence[LookupKey], confirm: Confirm) -> Contact | None:
        find = self._group.forms.find_contacts
        return await self._step(
            "find_contacts",
            None if find is None else partial(_find_each, find, confirm),
            tuple(keys),
            lambda: self._inner.find_contact(keys, confirm),
            confirm,
        )

    async def create_contact(self, new: NewContact) -> Contact:
        return await self._inner.create_contact(new)

    async def update_contact(self, contact_id: str, patch: ContactPatch) -> None:
        await self._inner.update_contact(contact_id, patch)

    async def list_deals(self, contact: Contact, known: Sequence[Deal] = ()) -> list[Deal]:
        return await self._step(
            "list_deals",
            self._group.forms.list_deals,
            (contact, tuple(known)),
            lambda: self._inner.list_deals(contact, known),
        )

    async def get_deal(self, deal_id: str) -> Deal | None:
        read = self._group.forms.get_deals
        return await self._step(
            "get_deals",
            None if read is None else partial(_each_deal, read),
            deal_id,
            lambda: self._inner.get_deal(deal_id),
        )

    async def create_deal(self, contact: Contact, new: NewDeal) -> Deal:
        forms = self._group.forms
        return await self._step(
            "create_deals",
            forms.create_deals,
            (contact, new),
            lambda: self._inner.create_deal(contact, new),
        )

    async def create_contact_and_deal(
        self, contact: NewContact, deal: NewDeal
    ) -> tuple[Contact, Deal]:
        forms = self._group.forms
        return await self._step(
            "create_contacts_and_deals",
            forms.create_contacts_and_deals,
            (contact, deal),
            lambda: self._inner.create_contact_and_deal(contact, deal),
        )

    async def update_deal(self, deal_id: str, updates: Sequence[FieldUpdate]) -> None:
        if not updates:
            return  # nothing to write: no call, as per call
        forms = self._group.forms
        await self._step(
            "update_deals",
            forms.update_deals,
            (deal_id, tuple(updates)),
            lambda: self._inner.update_deal(deal_id, updates),
        )

    async def deal_notes(self, deal_id: str) -> list[str]:
        return await self._inner.deal_notes(deal_id)

    async def add_note(self, deal_id: str, text: str) -> None:
        forms = self._group.forms
        await self._step(
            "add_notes",
            forms.add_notes,
            (deal_id, text),
            lambda: self._inner.add_note(deal_id, text),
        )

    async def schema(self) -> CrmSchema:
        return await self._inner.schema()


def group_size(forms: BatchForms, configured: int) -> int:
    """Members a group may have: the configured size capped by the CRM's limit."""
    return max(1, min(forms.limit, configured))
