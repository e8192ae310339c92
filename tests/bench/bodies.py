"""Payment bodies for the load generators, in the platform's format (`tests.conftest`).

Every body has a unique `payment_id`; the customer comes from a nine-digit `key`: phone
`89<key>`, e-mail `c<key>@bench.example`, Telegram id `7<key>`. Payments with the same key
are the same customer. The first digit of a key says which section made it, so sections
never share customers.
"""

from __future__ import annotations

import json

from tests.conftest import payment_payload

KEY_MARK = "QQKEYQQ"  # replaced by the wrk script with a key per request
# (utm_source, utm_medium) → the reference rules' Site, Partners and Yandex pipelines
UTM_VARIANTS = (("platform", "direct"), ("advcake", "cpa"), ("yandex", "cpc"))


def payment_body(
    payment_id: str, key: str, *, variant: int = 0, costs: tuple[int, ...] = (5000, 5000)
) -> str:
    """`costs`: the items' prices; the payment's amount is their sum."""
    source, medium = UTM_VARIANTS[variant % len(UTM_VARIANTS)]
    payload = payment_payload(
        payment_id,
        costs=costs,
        phone=f"89{key}",
        email=f"c{key}@bench.example",
        telegram_id=f"7{key}",
        telegram_tag=f"b{key}",
        utm_source=source,
        utm_medium=medium,
    )
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def wrk_template(run_id: str) -> list[str]:
    """A body cut where the per-request key goes (payment id, invoice id and customer)."""
    return payment_body(f"w{run_id}-{KEY_MARK}", KEY_MARK).split(KEY_MARK)


def customer_key(section: int, number: int) -> str:
    return f"{section}{number:08d}"


def manager_phone(key: str) -> str:
    """The phone of customer `key` (89<key> in its payments) typed the way a manager would."""
    national = f"9{key}"
    return f"+7 ({national[:3]}) {national[3:6]}-{national[6:8]}-{national[8:]}"
