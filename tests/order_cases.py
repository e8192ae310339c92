"""The CRMs the order scenarios run against: every `CrmCase` whose CRM has an
`OrderProbe` in tests/order_probes.py, and the in-memory CRM.

A `CrmCase` of kind K takes orders when the contract suite has a probe for K: the probe's
`order_config` is applied to the case's section and its reads of the fake (stage, price,
items, companies) are used here, so a CRM's order branch lights these scenarios up when
it is merged. The in-memory CRM (tests/fakes/memory.py) runs the whole app through the
`adapters` seam of `create_app`, so the scenarios are exercised before any branch lands.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from bridge.app import create_app
from bridge.settings import CrmConfig, FileConfig
from tests.conftest import Bridge, make_settings, reference_file_config, signed
from tests.crm_cases import CASES, CrmCase, running
from tests.fakes.memory import MemoryCrm
from tests.order_probes import PROBES, OrderProbe
from tests.order_support import with_orders

Fake = Any
Item = tuple[str, Decimal, Decimal]
Run = Callable[..., AbstractAsyncContextManager[Bridge]]


@dataclass(frozen=True)
class OrderCase:
    """One CRM taking orders, and how to read its fake back in common terms."""

    name: str
    make_fake: Callable[[], Fake]
    running: Callable[[Fake, Path], Run]
    config: Callable[[], CrmConfig]  # the section, with its order settings
    contacts: Callable[[Fake], list[str]]
    deals: Callable[[Fake], list[str]]
    companies: Callable[[Fake], list[str]]
    add_company: Callable[[Fake, str, str], str]  # name, INN → id
    deal_company: Callable[[Fake, str], str | None]
    contact_companies: Callable[[Fake, str], set[str]]
    stage: Callable[[Fake, str], tuple[str, str]]
    price: Callable[[Fake, str], Decimal]
    items: Callable[[Fake, str], list[Item]] | None  # None: the CRM's deals keep none
    notes: Callable[[Fake, str], list[str]]
    api_calls: Callable[[Fake], int]

    def __str__(self) -> str:
        return self.name


async def post_order(bridge: Bridge, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body).encode()
    return await bridge.client.post("/webhook/order", content=raw, headers=signed(raw))


# ---- the in-memory CRM ---------------------------------------------------------------


def _memory_file() -> FileConfig:
    file = reference_file_config()
    return file.model_copy(update={"crm": {"amocrm": with_orders(file.crm["amocrm"])}})


def _memory_running(crm: MemoryCrm, tmp_path: Path) -> Run:
    @asynccontextmanager
    async def run(file: FileConfig | None = None, **overrides: Any) -> AsyncIterator[Bridge]:
        settings = make_settings(tmp_path, file or _memory_file(), **overrides)
        crm.config = settings.file.crm["amocrm"]
        app = create_app(settings, adapters=lambda _settings, _store: {"amocrm": crm})
        async with AsyncTestClient(app=app) as client:
            yield Bridge(client, settings, crm)  # type: ignore[arg-type]

    return run


MEMORY = OrderCase(
    name="memory",
    make_fake=lambda: MemoryCrm(_memory_file().crm["amocrm"], name="amocrm"),
    running=_memory_running,
    config=lambda: _memory_file().crm["amocrm"],
    contacts=lambda crm: list(crm.contacts),
    deals=lambda crm: list(crm.deals),
    companies=lambda crm: list(crm.companies),
    add_company=lambda crm, name, inn: crm.add_company(name, inn),
    deal_company=lambda crm, deal: crm.deal_company.get(deal),
    contact_companies=lambda crm, contact: set(crm.contact_companies.get(contact, set())),
    stage=lambda crm, deal: crm.stage(deal),
    price=lambda crm, deal: crm.deals[deal].price,
    items=lambda crm, deal: list(crm.items.get(deal, [])),
    notes=lambda crm, deal: list(crm.notes.get(deal, [])),
    api_calls=lambda crm: len(crm.calls),
)


# ---- every CRM case with an OrderProbe -----------------------------------------------


def _probe_for(case: CrmCase) -> OrderProbe | None:
    """The probe of the case's CRM: by its name ("odoo-19"), else by its kind for the
    case named after its kind ("odoo" is the contract's "odoo-18")."""
    names = {c.name for c in CASES}
    exact = [p for p in PROBES if p.kind == case.name]
    if exact:
        return exact[0]
    by_kind = [p for p in PROBES if p.kind.split("-")[0] == case.name and p.kind not in names]
    return by_kind[0] if by_kind else None


def _from_crm_case(case: CrmCase, probe: OrderProbe) -> OrderCase:
    def file(**changes: Any) -> FileConfig:
        base = case.file_config(**changes)
        section = probe.order_config(base.crm[case.name])
        return base.model_copy(update={"crm": {case.name: section}})

    return OrderCase(
        name=case.name,
        make_fake=probe.make_fake or case.make_fake,
        running=functools.partial(running, replace(case, file_config=file)),
        config=lambda: file().crm[case.name],
        contacts=case.contacts,
        deals=case.deals,
        companies=probe.company_ids,
        add_company=probe.add_company,
        deal_company=probe.deal_company,
        contact_companies=probe.contact_companies,
        stage=lambda fake, deal: tuple(str(part) for part in probe.stage(fake, deal)),  # type: ignore[return-value]
        price=probe.price,
        items=probe.items,
        notes=case.notes,
        api_calls=case.api_calls,
    )


ORDER_CASES = [MEMORY] + [
    _from_crm_case(case, probe) for case in CASES if (probe := _probe_for(case)) is not None
]
