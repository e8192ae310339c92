"""`crm-bridge discover`: which of the CRM's custom fields is meant for which config key.

A field is matched by its name and type: *exact* when its name, normalised (case, `ё`,
punctuation and spacing ignored), is one of the key's known names in English or Russian
(`Payment ID`, `ID платежа`, `utm_source`, `Telegram ID`…); *near* when one contains the
other or they differ by a letter or two. Only fields of a type the key can take count,
each field serves one key, and two equally good candidates are left to the operator."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.crm.base import CustomField

NAMES: Mapping[str, tuple[str, ...]] = {
    "telegram_id": ("telegram id", "tg id", "tgid", "id telegram", "телеграм id", "id телеграм"),
    "telegram_username": (
        "telegram username",
        "telegram tag",
        "tg username",
        "telegram ник",
        "ник telegram",
        "ник в телеграм",
        "телеграм ник",
    ),
    "subjects": ("subjects", "предметы", "предмет"),
    "direction": ("direction", "направление", "project", "проект"),
    "last_payment_amount": (
        "last payment amount",
        "сумма последней оплаты",
        "сумма последнего платежа",
    ),
    "last_payment_at": (
        "last payment at",
        "last payment date",
        "дата последней оплаты",
        "дата последнего платежа",
    ),
    "payment_id": ("payment id", "id платежа", "id оплаты", "номер платежа"),
    "invoice_id": ("invoice id", "id счета", "номер счета"),
    "total_paid": ("total paid", "всего оплачено", "сумма оплат", "оплачено всего"),
    "purchase_count": (
        "purchase count",
        "количество покупок",
        "число покупок",
        "количество оплат",
    ),
    "utm_source": ("utm source",),
    "utm_medium": ("utm medium",),
    "utm_campaign": ("utm campaign",),
    "utm_term": ("utm term",),
    "utm_content": ("utm content",),
    # Orders (SPEC §8).
    "order_id": ("order id", "id заказа", "номер заказа"),
    "order_status": ("order status", "статус заказа"),
    "installation_date": ("installation date", "дата монтажа", "дата установки"),
    "dismantle_date": ("dismantle date", "дата демонтажа"),
    "delivery_method": ("delivery method", "способ доставки", "доставка"),
    "delivery_address": ("delivery address", "адрес доставки"),
    "comment": ("order comment", "комментарий к заказу", "комментарий"),
    "company_inn": ("inn", "инн", "инн компании", "tax id"),
}


@dataclass(frozen=True)
class Match:
    field: CustomField
    how: str  # "configured" | "exact" | "near"


def normalise(name: str) -> str:
    text = name.lower().replace("ё", "е").replace("_", " ")
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def match_fields(
    kinds: Mapping[str, str],
    configured: Mapping[str, str | None],
    fields: Sequence[CustomField],
    types: Mapping[str, frozenset[str]],
) -> dict[str, Match]:
    """key → the field for it: the configured id when the CRM has it with a fitting type,
    else an exact, else a single near name match."""
    by_id = {f.id: f for f in fields}
    chosen: dict[str, Match] = {}
    used: set[str] = set()
    for key, kind in kinds.items():
        found = by_id.get(configured.get(key) or "")
        if found is not None and found.type in types[kind]:
            chosen[key] = Match(found, "configured")
            used.add(found.id)
    for how in ("exact", "near"):
        for key, kind in kinds.items():
            if key in chosen:
                continue
            names = {normalise(n) for n in (key, *NAMES.get(key, ()))}
            candidates = [
                f
                for f in fields
                if f.id not in used
                and f.type in types[kind]
                and _fits(normalise(f.name), names, how)
            ]
            if len(candidates) == 1:
                chosen[key] = Match(candidates[0], how)
                used.add(candidates[0].id)
    return chosen


def _fits(name: str, names: set[str], how: str) -> bool:
    if how == "exact":
        return name in names
    return any(
        (len(known) >= 5 and (known in name or name in known))
        or difflib.SequenceMatcher(None, name, known).ratio() >= 0.85
        for known in names
        if name
    )
