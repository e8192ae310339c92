"""What `GET /webhook/health` says, built from the store and the worker (pure).

It tells the truth an operator acts on: `degraded` while any delivery is failed or dead
or a CRM is paused (by the bridge or by the operator), with the counts and the reason;
a CRM's `last_error` with its time, cleared by a later success; every time in one
format, ISO 8601 UTC with milliseconds and `Z`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bridge.crm.base import CrmAdapter
from bridge.store import CrmState, QueueStats
from bridge.store.backsync import PLATFORM
from bridge.store.oversight import DeliveryCounts, Hold


def iso_text(stored: str | None) -> str | None:
    """A stored UTC time (`YYYY-MM-DD HH:MM:SS.fff`) as ISO 8601 `…T…Z`."""
    return None if stored is None else stored.replace(" ", "T") + "Z"


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def health_content(
    *,
    now: float,
    queue: QueueStats,
    states: Mapping[str, CrmState],
    paused: Mapping[str, str],
    holds: Mapping[str, Hold],
    counts: DeliveryCounts,
    adapters: Mapping[str, CrmAdapter],
    config_loaded_at: float | None = None,
    backsync: bool = False,
) -> dict[str, Any]:
    """`backsync`: callbacks to the platform are configured; their queue is then shown
    under `platform` (failed and dead ones are in the totals and `reasons` already)."""
    crms: dict[str, Any] = {}
    for name, adapter in adapters.items():
        state = states.get(name)
        hold = holds.get(name)
        per = counts.by_crm.get(name, {})
        crms[name] = {
            "paused": name in paused or hold is not None,
            "paused_reason": hold.reason if hold else paused.get(name),
            "paused_by": hold.by if hold else ("bridge" if name in paused else None),
            "paused_at": iso_text(hold.at) if hold else None,
            "failed": per.get("failed", 0),
            "dead": per.get("dead", 0),
            "waiting": per.get("pending", 0) + per.get("retrying", 0) + per.get("processing", 0),
            "last_success_at": iso_text(state.last_success_at) if state else None,
            "last_error": state.last_error if state else None,
            "last_error_at": iso_text(state.last_error_at) if state else None,
            "token_expires_at": iso_time(adapter.connection.token_expires_at()),
            **adapter.connection.health_details(),
        }
    failed, dead = counts.count("failed"), counts.count("dead")
    reasons = []
    if failed or dead:
        reasons.append(
            f"{failed} failed and {dead} dead deliveries (crm-bridge events --status failed)"
        )
    for name, crm in crms.items():
        if crm["paused"]:
            reasons.append(f"{name} paused by {crm['paused_by']}: {crm['paused_reason']}")
    oldest_age = now - queue.oldest_pending_at if queue.oldest_pending_at else None
    content: dict[str, Any] = {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "time": iso_time(now),
        "database": {"ok": True},
        "queue_depth": queue.depth,
        "oldest_pending_age_seconds": round(oldest_age, 3) if oldest_age else None,
        "deliveries": {"failed": failed, "dead": dead},
        "crms": crms,
    }
    if backsync:
        per, state = counts.by_crm.get(PLATFORM, {}), states.get(PLATFORM)
        content["platform"] = {
            "failed": per.get("failed", 0),
            "dead": per.get("dead", 0),
            "waiting": per.get("pending", 0) + per.get("retrying", 0) + per.get("processing", 0),
            "last_success_at": iso_text(state.last_success_at) if state else None,
            "last_error": state.last_error if state else None,
            "last_error_at": iso_text(state.last_error_at) if state else None,
        }
    if config_loaded_at is not None:
        content["config_loaded_at"] = iso_time(config_loaded_at)
    return content
