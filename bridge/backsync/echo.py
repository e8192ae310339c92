"""No echo: a stage change the bridge itself made is not sent back to the platform.

When the bridge applies an order update it moves the deal, and the CRM then reports that
move like any other. Comparing with the order's current status is not enough: after the
bridge applied `reserved` then `in_rent`, the CRM's event for the first move can arrive
after the second, and would forward a stale `reserved`. So the bridge remembers its own
moves (deal, pipeline, stage, when: recorded by the order flow once the CRM accepted the
move) and an event is an echo when it reports a stage the bridge moved that deal to within
`window_seconds` of the event's own time. A manager who moves the deal back to that stage
later is outside the window and is forwarded. For an event whose stage was read later
(Bitrix24), the stage is where the deal is now; if the bridge put it there around the
event's time, that is the bridge's doing too.

The window covers the CRM's delay in reporting and the skew between its clock and ours;
5 minutes, as for signed timestamps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from bridge.backsync.events import DealMoved

DEFAULT_WINDOW_SECONDS = 300.0


@dataclass(frozen=True)
class OwnMove:
    """A stage the bridge moved a deal to (`pipeline_id` None: any pipeline)."""

    deal_id: str
    pipeline_id: str | None
    status_id: str
    at: datetime


def is_echo(
    moved: DealMoved,
    own_moves: Iterable[OwnMove],
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
) -> bool:
    if moved.deleted or moved.status_id is None:
        return False
    for own in own_moves:
        if own.deal_id != moved.deal_id or own.status_id != moved.status_id:
            continue
        pipelines_agree = (
            own.pipeline_id is None
            or moved.pipeline_id is None
            or own.pipeline_id == moved.pipeline_id
        )
        if pipelines_agree and abs((moved.occurred_at - own.at).total_seconds()) <= window_seconds:
            return True
    return False
