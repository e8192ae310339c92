"""One order delivery as the worker runs it: the order → deal link, the stale check per
CRM, the journal, the flow, and the link to keep when it succeeds.

Intake already refuses an event older than one received for its order; the check here
covers what intake cannot see: an operator retrying an old failed event after a newer one
was applied. Such an event changes nothing and succeeds with the linked deal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

from bridge import order_rules
from bridge.domain import DealResult, Order
from bridge.order_flow import KnownOrder, OrderContext, OrderJournal, deliver_order
from bridge.order_normalize import order_stamp
from bridge.order_rules import AppliedOrder
from bridge.store import DeliveryJob, OrderLink, Store

ORDER_KIND = "order"  # `events.kind` of an order event


@dataclass(frozen=True)
class OrderDelivered:
    result: DealResult
    warnings: tuple[str, ...]
    link: OrderLink | None  # None: stale here, the link stays as it is


async def deliver_order_event(
    store: Store, job: DeliveryJob, order: Order, ctx: OrderContext
) -> OrderDelivered:
    stamp = order_stamp(order.updated_at)
    link = await store.order_link(job.crm, order.order_id)
    if link is not None and (link.applied > stamp or link.event_key == job.key):
        result = DealResult(link.contact_id, link.deal_id, False, link.pipeline_id)
        warning = f"stale: {job.crm} already has the update of {link.applied}; nothing changed"
        return OrderDelivered(result, (warning,), None)
    journal = OrderJournal.from_steps(await store.journal_steps(job.delivery_id))

    async def moving(deal_id: str, pipeline_id: str, status_id: str) -> None:
        # Back-sync recognises the CRM's report of this move as the bridge's own.
        await store.record_own_move(job.crm, deal_id, pipeline_id, status_id)

    ctx = replace(ctx, on_move=moving)

    async def record(done: OrderJournal) -> None:
        await store.record_steps(job.delivery_id, done.steps())

    outcome = await deliver_order(
        order,
        job.key,
        ctx,
        journal,
        record,
        first_attempt=job.attempts == 1 and journal.is_empty,
        known=_known(link),
    )
    result = outcome.result
    new_link = OrderLink(
        crm=job.crm,
        order_id=order.order_id,
        contact_id=result.contact_id,
        company_id=outcome.company_id,
        deal_id=result.deal_id,
        pipeline_id=result.pipeline_id,
        status=order.effective_status.value,
        total=str(order.total),
        items=order_rules.item_rows(order),
        applied=stamp,
        event_key=job.key,
    )
    return OrderDelivered(result, (), new_link)


def _known(link: OrderLink | None) -> KnownOrder | None:
    if link is None:
        return None
    try:
        total = Decimal(link.total)
    except InvalidOperation:
        total = Decimal(0)
    applied = AppliedOrder(link.status, total, link.items)
    return KnownOrder(link.contact_id, link.company_id, link.deal_id, link.pipeline_id, applied)
