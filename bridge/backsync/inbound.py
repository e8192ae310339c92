"""One entry point for `POST /webhook/crm/{name}`: verify and parse by the section's kind.

`parse_event` raises `Unauthorized` (answer 401, log the reason, store nothing) or
`Malformed` (400); otherwise it returns the deals the request is about, possibly none
(an event the bridge does not follow: answer 2xx so the CRM does not retry). The reason
of a refusal never holds a secret. Nothing here reads the clock: `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bridge.backsync import amocrm, bitrix24, hubspot, pipedrive
from bridge.backsync.events import DealMoved, InboundRequest

Parser = Callable[[str, InboundRequest, Sequence[str], float], list[DealMoved]]

# CRM kinds that can tell the bridge a deal moved, each with its own verification.
PARSERS: dict[str, Parser] = {
    "amocrm": amocrm.parse,
    "bitrix24": bitrix24.parse,
    "hubspot": hubspot.parse,
    "pipedrive": pipedrive.parse,
}


def sends_events(kind: str) -> bool:
    return kind in PARSERS


def parse_event(
    kind: str, crm: str, request: InboundRequest, secrets: Sequence[str], now: float
) -> list[DealMoved]:
    """The deals `request` says moved, in section `crm` of kind `kind`; `secrets` are the
    section's active event secrets (`config.event_secrets`). KeyError for a kind that
    sends no events: the route answers 404 before calling this."""
    return PARSERS[kind](crm, request, secrets, now)
