"""The payment flow of SPEC §3, written once over the `CrmAdapter` interface.

find contact (Telegram id → phone → email, confirmed) or create it · fill empty contact
fields · find the open deal in any pipeline or create one by the pipeline rules · apply
field changes with increments · add the note.

Exactly-once effects on an at-least-once delivery: each completed step is journalled,
and a retry that finds a step unjournalled checks the CRM before repeating it —
a deal already carrying this payment id has its fields applied; a note already
mentioning this payment id was added; a contact or deal created just before a crash is
found again by the normal lookups (a created deal always carries the payment id).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from bridge import rules
from bridge.crm.base import CrmAdapter
from bridge.domain import (
    Contact,
    ContactPatch,
    Deal,
    DealResult,
    Journal,
    KnownRefs,
    NewContact,
    NewDeal,
    Payment,
)
from bridge.errors import NotFound
from bridge.settings import CrmConfig, PaymentRules

RecordSteps = Callable[[Journal], Awaitable[None]]  # journals the steps just completed


@dataclass(frozen=True)
class FlowContext:
    adapter: CrmAdapter
    config: CrmConfig
    rules: PaymentRules
    create_if_not_found: bool
    display_tz: ZoneInfo


@dataclass(frozen=True)
class FlowOutcome:
    result: DealResult
    warnings: tuple[str, ...]


async def deliver_payment(
    payment: Payment,
    ctx: FlowContext,
    journal: Journal,
    record: RecordSteps,
    *,
    first_attempt: bool,
    known: KnownRefs | None = None,
) -> FlowOutcome:
    """Run (or resume) one payment in one CRM; raises the `CrmError` family."""
    warnings: list[str] = []
    if journal.fields and journal.deal is not None:
        result = journal.deal
    else:
        result = await _resolve_and_apply(payment, ctx, journal, record, warnings, known)
    if not journal.note:
        await _add_note_once(payment, ctx, result.deal_id, check_remote=not first_attempt)
        await record(Journal(note=True))
    return FlowOutcome(result, tuple(warnings))


async def _resolve_and_apply(
    payment: Payment,
    ctx: FlowContext,
    journal: Journal,
    record: RecordSteps,
    warnings: list[str],
    known: KnownRefs | None,
) -> DealResult:
    resolved = await _known_contact_and_deals(ctx, known) if journal.contact_id is None else None
    if resolved is None:
        contact = await _find_contact(payment, ctx, journal)
        if contact is None:
            return await _create_contact_and_deal(payment, ctx, record, warnings)
        await _fill_contact(contact, payment, ctx)
        deals = await ctx.adapter.list_deals(contact)
    else:
        contact, deals = resolved
    carrying = rules.deal_carrying_payment(deals, ctx.config, payment.payment_id)
    if carrying is not None:
        # A previous attempt got as far as writing this payment's fields.
        result = DealResult(contact.id, carrying.id, _created_before(journal), carrying.pipeline_id)
        await record(_steps(result, fields=True))
        return result
    deal = rules.choose_open_deal(deals, ctx.config)
    if deal is None:
        return await _create_deal(contact, payment, ctx, record, warnings)
    await record(_steps(DealResult(contact.id, deal.id, False, deal.pipeline_id)))
    updates, field_warnings = rules.deal_field_updates(
        payment, deal.fields, ctx.config, ctx.display_tz
    )
    warnings.extend(field_warnings)
    await ctx.adapter.update_deal(deal.id, updates)
    result = DealResult(contact.id, deal.id, False, deal.pipeline_id)
    await record(Journal(fields=True))
    return result


async def _known_contact_and_deals(
    ctx: FlowContext, known: KnownRefs | None
) -> tuple[Contact, list[Deal]] | None:
    """Verify the contact and deal of the customer's last payment with one call.

    Still linked, open and not excluded: that deal is used (a newer open deal a manager
    may have opened meanwhile is not looked for — the price of skipping the search). A
    deal the bridge created in an excluded "auto-payment" status counts once a manager
    has moved it on. Closed or excluded: the contact's other deals are read (the deal
    just read is not fetched again). Gone or unlinked: None, and the caller searches as
    for an unknown customer.
    """
    if known is None or not known.deal_id:
        return None
    deal = await ctx.adapter.get_deal(known.deal_id)
    if deal is None or deal.is_deleted or known.contact_id not in deal.contact_ids:
        return None
    contact = Contact(id=known.contact_id)
    if rules.choose_open_deal([deal], ctx.config) is not None:
        return contact, [deal]
    return contact, await ctx.adapter.list_deals(contact, known=[deal])


async def _find_contact(payment: Payment, ctx: FlowContext, journal: Journal) -> Contact | None:
    if journal.contact_id:
        return Contact(id=journal.contact_id)
    return await ctx.adapter.find_contact(payment.customer.lookup_keys(), rules.contact_matches)


async def _fill_contact(contact: Contact, payment: Payment, ctx: FlowContext) -> None:
    if contact.deal_ids is None:
        return  # resumed from the journal: filled on the attempt that found it
    fills = rules.contact_fill_updates(contact, payment.customer, ctx.config)
    if fills:
        await ctx.adapter.update_contact(contact.id, ContactPatch(fills))


async def _create_contact_and_deal(
    payment: Payment, ctx: FlowContext, record: RecordSteps, warnings: list[str]
) -> DealResult:
    _require_creation(ctx, "contact")
    new_deal = _new_deal(payment, ctx, warnings)
    new_contact = NewContact(
        payment.customer, payment.utm, rules.new_contact_fields(payment.customer, ctx.config)
    )
    contact, deal = await ctx.adapter.create_contact_and_deal(new_contact, new_deal)
    result = DealResult(contact.id, deal.id, True, deal.pipeline_id)
    await record(_steps(result, fields=True))
    return result


async def _create_deal(
    contact: Contact,
    payment: Payment,
    ctx: FlowContext,
    record: RecordSteps,
    warnings: list[str],
) -> DealResult:
    _require_creation(ctx, "open deal")
    deal = await ctx.adapter.create_deal(contact, _new_deal(payment, ctx, warnings))
    result = DealResult(contact.id, deal.id, True, deal.pipeline_id)
    await record(_steps(result, fields=True))
    return result


def _new_deal(payment: Payment, ctx: FlowContext, warnings: list[str]) -> NewDeal:
    target = rules.choose_pipeline(payment.utm, ctx.config)
    updates, field_warnings = rules.deal_field_updates(payment, {}, ctx.config, ctx.display_tz)
    warnings.extend(field_warnings)
    return NewDeal(
        name=rules.deal_name(payment, ctx.rules.deal_name_template),
        price=payment.amount,
        pipeline_id=target.pipeline_id,
        status_id=target.status_id,
        fields=updates,
    )


async def _add_note_once(
    payment: Payment, ctx: FlowContext, deal_id: str, *, check_remote: bool
) -> None:
    if check_remote:
        notes = await ctx.adapter.deal_notes(deal_id)
        if any(rules.note_mentions_payment(text, payment.payment_id) for text in notes):
            return
    text = rules.note_text(payment, ctx.rules.note_template, ctx.display_tz)
    await ctx.adapter.add_note(deal_id, text)


def _require_creation(ctx: FlowContext, what: str) -> None:
    if not ctx.create_if_not_found:
        raise NotFound(ctx.adapter.name, f"no {what} found and CREATE_IF_NOT_FOUND=false")


def _steps(result: DealResult, *, fields: bool = False) -> Journal:
    return Journal(contact_id=result.contact_id, deal=result, fields=fields)


def _created_before(journal: Journal) -> bool:
    # A crash between the CRM write and the journal write loses only this flag; the
    # deal itself is found by the payment id it carries. Reported as created (the
    # common case: a new deal is written together with its fields).
    return journal.deal.deal_created if journal.deal is not None else True
