"""What one CRM event means for the platform: a callback to send, or why none.

The policy of back-sync in one pure function, for the worker to call between its reads
(the deal's stage, the order → deal link, the bridge's own moves) and its writes (the
outbound delivery, the order's new last-known status):

1. a deleted deal changes no order status;
2. a deal no order is linked to is not the platform's (a payment's deal, a manager's own);
3. the bridge's own move (`echo.is_echo`) is not sent back;
4. the stage maps to a status (`statuses.StageMap.resolve`), different from the order's
   current one, or nothing is forwarded.
Every "no" comes with a reason safe to log and to record with the event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.backsync.callback import StatusChanged
from bridge.backsync.echo import DEFAULT_WINDOW_SECONDS, OwnMove, is_echo
from bridge.backsync.events import DealMoved
from bridge.backsync.statuses import StageMap
from bridge.domain import OrderStatus


@dataclass(frozen=True)
class LinkedOrder:
    """The order a deal belongs to, and the status the bridge last knew for it (applied
    from the platform or forwarded to it)."""

    order_id: str
    status: OrderStatus | None


@dataclass(frozen=True)
class Decision:
    callback: StatusChanged | None
    reason: str


def decide(
    moved: DealMoved,
    order: LinkedOrder | None,
    stages: StageMap,
    own_moves: Iterable[OwnMove] = (),
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
) -> Decision:
    """ValueError when the stage is still unknown: `stage_read.read_stage` comes first."""
    if moved.deleted:
        return Decision(None, f"deal {moved.deal_id} was deleted in the CRM")
    if moved.status_id is None:
        raise ValueError(f"deal {moved.deal_id}: stage not read yet")
    if order is None:
        return Decision(None, f"deal {moved.deal_id} is linked to no order")
    if is_echo(moved, own_moves, window_seconds):
        return Decision(None, f"deal {moved.deal_id}: the bridge's own move")
    resolution = stages.resolve(moved.pipeline_id, moved.status_id, order.status)
    if resolution.status is None:
        return Decision(None, f"deal {moved.deal_id}: {resolution.reason}")
    change = StatusChanged(
        order.order_id,
        resolution.status,
        order.status,
        moved.crm,
        moved.deal_id,
        moved.occurred_at,
    )
    return Decision(change, "forwarded")
