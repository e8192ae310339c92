"""The stage of a deal whose event did not carry it (Bitrix24), read from the CRM."""

from __future__ import annotations

from dataclasses import replace

from bridge.backsync.events import DealMoved
from bridge.crm.base import CrmAdapter


async def read_stage(adapter: CrmAdapter, moved: DealMoved) -> DealMoved | None:
    """`moved` with the deal's current pipeline and stage; None when the deal is gone
    (deleted since, or never readable). Events that carry their stage, and deletions,
    are returned as they are, without a call. CRM errors propagate: the caller's
    delivery retries them like any other CRM call."""
    if moved.deleted or moved.status_id is not None:
        return moved
    deal = await adapter.get_deal(moved.deal_id)
    if deal is None or deal.is_deleted:
        return None
    return replace(moved, pipeline_id=deal.pipeline_id, status_id=deal.status_id)
