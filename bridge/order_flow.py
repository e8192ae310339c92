"""The order flow of SPEC §8, written once over the `OrderAdapter` interface.

contact (found by the payment flow's rules, or created) · company for a business
customer (by INN, then exact name, or created; the contact linked to it) · the order's
deal (the bridge's link, else the contact's deal carrying the order id, else created in
the stage the status maps to, with its company) · the change (stage when the status
moved, amount, order fields) · the items (replaced) · the note (what changed).

Exactly once on an at-least-once delivery, like payments: each step is journalled and a
retry resumes after the last one journalled. A write whose journal row was lost to a
crash is safe to repeat or is found again: contact and company by the lookups, the deal
by its order-id field, the change and the items are absolute (repeating them leaves the
same state), and the note by its "Order event: <key>" line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge import order_rules, rules
from bridge.crm.base import OrderAdapter
from bridge.domain import (
    CompanyRecord,
    Contact,
    CustomerType,
    DealChange,
    DealResult,
    NewContact,
    NewDeal,
    Order,
    Utm,
)
from bridge.errors import NotFound
from bridge.order_rules import AppliedOrder
from bridge.settings import CrmConfig, OrderRules


@dataclass(frozen=True)
class OrderJournal:
    """What one order delivery has done in its CRM so far; stored one row per step."""

    contact_id: str | None = None
    company_id: str | None = None
    deal: DealResult | None = None
    changed: bool = False  # stage, amount and fields written (a created deal has them)
    items: bool = False
    note: bool = False

    @property
    def is_empty(self) -> bool:
        return self == OrderJournal()

    def steps(self) -> dict[str, object]:
        rows: dict[str, object] = {}
        if self.contact_id is not None:
            rows["contact"] = {"id": self.contact_id}
        if self.company_id is not None:
            rows["company"] = {"id": self.company_id}
        if self.deal is not None:
            rows["deal"] = {
                "id": self.deal.deal_id,
                "created": self.deal.deal_created,
                "pipeline_id": self.deal.pipeline_id,
            }
        for step, done in (("change", self.changed), ("items", self.items), ("note", self.note)):
            if done:
                rows[step] = True
        return rows

    @classmethod
    def from_steps(cls, rows: Mapping[str, Any]) -> OrderJournal:
        """Read what the store kept; a step of an unexpected shape counts as not done."""
        contact_id = _id_of(rows.get("contact"))
        deal, result = rows.get("deal"), None
        if isinstance(deal, dict) and deal.get("id"):
            result = DealResult(
                contact_id or "",
                str(deal["id"]),
                bool(deal.get("created")),
                str(deal.get("pipeline_id") or ""),
            )
        return cls(
            contact_id,
            _id_of(rows.get("company")),
            result,
            rows.get("change") is True,
            rows.get("items") is True,
            rows.get("note") is True,
        )


def _id_of(step: object) -> str | None:
    return str(step["id"]) if isinstance(step, dict) and step.get("id") else None


RecordOrderSteps = Callable[[OrderJournal], Awaitable[None]]


@dataclass(frozen=True)
class KnownOrder:
    """The bridge's link of this order in this CRM: where its last applied event went."""

    contact_id: str
    company_id: str | None
    deal_id: str
    pipeline_id: str
    applied: AppliedOrder


# (deal id, pipeline id, stage id): the bridge moves (or created) a deal in that stage.
OnMove = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True)
class OrderContext:
    adapter: OrderAdapter
    config: CrmConfig
    rules: OrderRules
    create_if_not_found: bool
    # Back-sync's "no echo" (bridge.backsync.echo): told of each stage the flow puts a
    # deal in, before the call that moves it (the CRM may report the move before the
    # call returns) and after the call that creates it in a stage (no id before).
    on_move: OnMove | None = None


@dataclass(frozen=True)
class OrderOutcome:
    result: DealResult
    company_id: str | None


async def deliver_order(
    order: Order,
    key: str,
    ctx: OrderContext,
    journal: OrderJournal,
    record: RecordOrderSteps,
    *,
    first_attempt: bool,
    known: KnownOrder | None = None,
) -> OrderOutcome:
    """Run (or resume) one order event in one CRM; raises the `CrmError` family."""
    contact_id = journal.contact_id or (known.contact_id if known is not None else None)
    company_id = journal.company_id or (known.company_id if known is not None else None)
    # Linked already: journalled after linking, or the link's (its first event linked it).
    linked = company_id is not None
    created_with_deal: DealResult | None = None
    if contact_id is None:
        keys = order.customer.lookup_keys()
        # Nothing to search by (a body without phone and e-mail): a new contact, no call.
        found = await ctx.adapter.find_contact(keys, rules.contact_matches) if keys else None
        if found is None:
            company_id = await _company(order, ctx, record, company_id)
            created_with_deal = await _create_contact_and_deal(order, ctx, record, company_id)
            contact_id = created_with_deal.contact_id
        else:
            contact_id = found.id
            await record(OrderJournal(contact_id=contact_id))
    if created_with_deal is None and not linked:
        company_id = await _company(order, ctx, record, company_id, contact_id=contact_id)
    if created_with_deal is not None:
        deal, changed = created_with_deal, True
    elif journal.deal is not None:
        deal, changed = journal.deal, journal.changed
    else:
        deal, changed = await _deal(order, ctx, record, contact_id, company_id, known)
    if not changed:
        change = _change(order, ctx.config, known)
        if change.status_id is not None:
            await _moving(ctx, deal.deal_id, change.pipeline_id, change.status_id)
        await ctx.adapter.change_deal(deal.deal_id, change)
        await record(OrderJournal(changed=True))
    if not journal.items:
        if _items_to_write(order, ctx.adapter, deal.deal_created, known):
            await ctx.adapter.set_deal_items(deal.deal_id, order.items, order.currency)
        await record(OrderJournal(items=True))
    if not journal.note:
        before = known.applied if known is not None else None
        await _add_note_once(order, key, ctx, deal.deal_id, before, check_remote=not first_attempt)
        await record(OrderJournal(note=True))
    return OrderOutcome(deal, company_id)


async def _company(
    order: Order,
    ctx: OrderContext,
    record: RecordOrderSteps,
    company_id: str | None,
    *,
    contact_id: str | None = None,
) -> str | None:
    """The business customer's company id, found or created; with `contact_id`, the
    contact is linked to it (harmless when it already is) and the step journalled.
    Without, the contact is created with the link. A person has none."""
    if order.customer_type is not CustomerType.BUSINESS or order.company is None:
        return None
    if company_id is None:
        wanted = order.company

        def confirm(hit: CompanyRecord, key: str) -> bool:
            return order_rules.company_matches(hit, wanted, key)

        found = await ctx.adapter.find_company(wanted, confirm)
        if found is None:
            _require_creation(ctx, "company")
            found = await ctx.adapter.create_company(wanted)
        company_id = found.id
    if contact_id is not None:
        await ctx.adapter.link_contact_to_company(contact_id, company_id)
        await record(OrderJournal(company_id=company_id))
    return company_id


async def _create_contact_and_deal(
    order: Order, ctx: OrderContext, record: RecordOrderSteps, company_id: str | None
) -> DealResult:
    _require_creation(ctx, "contact")
    contact, deal = await ctx.adapter.create_contact_and_deal(
        NewContact(order.customer, Utm()), _new_deal(order, ctx, company_id)
    )
    result = DealResult(contact.id, deal.id, True, deal.pipeline_id)
    stage = order_rules.order_stage(order, ctx.config)
    await _moving(ctx, deal.id, stage.pipeline_id, stage.status_id)
    # The contact was linked to the company in the same call; the deal has its fields.
    await record(
        OrderJournal(contact_id=contact.id, company_id=company_id, deal=result, changed=True)
    )
    return result


async def _deal(
    order: Order,
    ctx: OrderContext,
    record: RecordOrderSteps,
    contact_id: str,
    company_id: str | None,
    known: KnownOrder | None,
) -> tuple[DealResult, bool]:
    """The order's deal and whether this event's change is already written on it."""
    if known is not None:
        result = DealResult(contact_id, known.deal_id, False, known.pipeline_id)
        await record(OrderJournal(contact_id=contact_id, deal=result))
        return result, False
    deals = await ctx.adapter.list_deals(Contact(id=contact_id))
    carrying = order_rules.deal_for_order(deals, ctx.config, order.order_id)
    if carrying is not None:
        # The link was lost, or a crash came between creating the deal and journalling
        # it: the change is written again (it is absolute, so that is harmless).
        result = DealResult(contact_id, carrying.id, False, carrying.pipeline_id)
        await record(OrderJournal(contact_id=contact_id, deal=result))
        return result, False
    _require_creation(ctx, "deal")
    new = _new_deal(order, ctx, company_id)
    deal = await ctx.adapter.create_deal(Contact(id=contact_id), new)
    await _moving(ctx, deal.id, new.pipeline_id or "", new.status_id or "")
    result = DealResult(contact_id, deal.id, True, deal.pipeline_id)
    await record(OrderJournal(contact_id=contact_id, deal=result, changed=True))
    return result, True


async def _moving(ctx: OrderContext, deal_id: str, pipeline_id: str | None, status_id: str) -> None:
    if ctx.on_move is not None and status_id:
        await ctx.on_move(deal_id, pipeline_id or "", status_id)


def _new_deal(order: Order, ctx: OrderContext, company_id: str | None) -> NewDeal:
    stage = order_rules.order_stage(order, ctx.config)
    return NewDeal(
        name=order_rules.order_deal_name(order, ctx.rules.deal_name_template),
        price=order.total,
        pipeline_id=stage.pipeline_id,
        status_id=stage.status_id,
        fields=order_rules.order_deal_fields(order, ctx.config),
        company_id=company_id,
    )


def _change(order: Order, config: CrmConfig, known: KnownOrder | None) -> DealChange:
    """Amount and fields always; the stage only when the order's status moved (a stage a
    manager chose by hand is not undone by an update that did not change the status)."""
    fields = order_rules.order_deal_fields(order, config)
    status = order.effective_status.value
    if known is not None and known.applied.status == status:
        return DealChange(price=order.total, fields=fields)
    stage = order_rules.order_stage(order, config)
    return DealChange(stage.pipeline_id, stage.status_id, price=order.total, fields=fields)


def _items_to_write(
    order: Order, adapter: OrderAdapter, created: bool, known: KnownOrder | None
) -> bool:
    """Whether the deal's items must be replaced: the CRM keeps items, and they are not
    already the order's (a new deal has none; a linked one has the last applied)."""
    if not adapter.keeps_items:
        return False
    if created:
        return bool(order.items)
    if known is not None:
        return known.applied.items != order_rules.item_rows(order)
    return True  # a deal found again by its order id: its items are not known


async def _add_note_once(
    order: Order,
    key: str,
    ctx: OrderContext,
    deal_id: str,
    before: AppliedOrder | None,
    *,
    check_remote: bool,
) -> None:
    if check_remote:
        notes = await ctx.adapter.deal_notes(deal_id)
        if any(order_rules.note_mentions_order_event(text, key) for text in notes):
            return
    text = order_rules.order_note_text(order, key, before, ctx.rules.note_template)
    await ctx.adapter.add_note(deal_id, text)


def _require_creation(ctx: OrderContext, what: str) -> None:
    if not ctx.create_if_not_found:
        raise NotFound(ctx.adapter.name, f"no {what} found and CREATE_IF_NOT_FOUND=false")
