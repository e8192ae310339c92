"""The order flow's rules (SPEC §8), pure and CRM-neutral like `bridge.rules` for payments."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.domain import Company, CompanyRecord, Deal
from bridge.rules import recency
from bridge.settings import CrmConfig


def company_matches(record: CompanyRecord, wanted: Company, key: str) -> bool:
    """Whether a company search hit really is `wanted`: by INN, the same digits; by name,
    the same name ignoring case and runs of spaces (CRM searches match substrings)."""
    if key == "inn":
        digits = "".join(ch for ch in record.inn if ch.isdigit())
        return bool(wanted.inn) and digits == wanted.inn
    return bool(wanted.name) and _name_key(record.name) == _name_key(wanted.name)


def deal_for_order(deals: Sequence[Deal], crm: CrmConfig, order_id: str) -> Deal | None:
    """The deal whose order-id field holds `order_id` (a lost order → deal link found
    again); None when the section has no order-id field."""
    field_id = crm.order_fields.order_id
    if not field_id:
        return None
    carrying = [
        deal
        for deal in deals
        if not deal.is_deleted and deal.fields.get(field_id, "").strip() == order_id
    ]
    return max(carrying, key=recency, default=None)


def _name_key(name: str) -> str:
    return " ".join(name.casefold().split())
