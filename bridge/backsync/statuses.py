"""Stage → order status: the inverse of a section's `order_stages`.

`order_stages` maps each of the six order statuses to a (pipeline, stage). The inverse
is not always a function, and the decisions are these (README, "Back-sync"):

- a stage no status maps to (a manager's intermediate stage, another pipeline): no
  status, recorded and not forwarded;
- a stage two or more statuses share (say `in_rent` and `in_progress` both on one
  "Rented" stage): when the order's current status is one of them, the move says nothing
  new and the current status stands (nothing forwarded); otherwise the stage cannot say
  which status the manager meant, so nothing is forwarded and the reason names the
  candidates for the log;
- an event without a pipeline (HubSpot: stage ids are unique in a portal) matches the
  stage in any pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bridge.domain import OrderStatus
from bridge.settings import CrmConfig


@dataclass(frozen=True)
class Resolution:
    """`status` to forward, or None with `reason` (safe to log) saying why not."""

    status: OrderStatus | None
    reason: str

    @property
    def forwards(self) -> bool:
        return self.status is not None


@dataclass(frozen=True)
class StageMap:
    statuses: Mapping[tuple[str, str], tuple[OrderStatus, ...]]

    @classmethod
    def from_config(cls, config: CrmConfig) -> StageMap:
        found: dict[tuple[str, str], list[OrderStatus]] = {}
        # In OrderStatus order, so candidates are always listed the same way.
        for status in OrderStatus:
            stage = config.order_stages.get(status.value)
            if stage is not None:
                found.setdefault((stage.pipeline_id, stage.status_id), []).append(status)
        return cls({key: tuple(value) for key, value in found.items()})

    def candidates(self, pipeline_id: str | None, status_id: str) -> tuple[OrderStatus, ...]:
        if pipeline_id is not None:
            return self.statuses.get((pipeline_id, status_id), ())
        matched = {
            status
            for (_, stage), statuses in self.statuses.items()
            if stage == status_id
            for status in statuses
        }
        return tuple(status for status in OrderStatus if status in matched)

    def resolve(
        self, pipeline_id: str | None, status_id: str, current: OrderStatus | None
    ) -> Resolution:
        """The status a deal now at this stage gives its order, whose last known status
        (what the bridge last applied or forwarded) is `current`. A status equal to
        `current` is not a change: nothing to forward."""
        candidates = self.candidates(pipeline_id, status_id)
        where = f"stage {status_id}" + (f" of pipeline {pipeline_id}" if pipeline_id else "")
        if not candidates:
            return Resolution(None, f"{where} maps to no order status")
        if current in candidates:
            return Resolution(None, f"{where} is the order's current status {current}")
        if len(candidates) > 1:
            names = ", ".join(status.value for status in candidates)
            return Resolution(None, f"{where} is shared by {names}: not forwarded")
        return Resolution(candidates[0], "mapped")
