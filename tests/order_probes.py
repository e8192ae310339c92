"""Each CRM's `OrderProbe`: its section with the order settings, and how the order
contract (`test_order_contract.py`) and the order scenarios read its fake back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bridge.settings import CrmConfig, OrderFieldIds
from tests import test_hubspot_adapter as hs
from tests import test_pipedrive_adapter as pd
from tests import test_salesforce_adapter as sf
from tests import test_zoho_adapter as zo
from tests.fakes.megaplan import COMPANY_CATEGORY, DEAL_CATEGORY
from tests.fakes.pipedrive_openapi import PipedriveOpenApi
from tests.order_support import order_settings

Fake = Any
Item = tuple[str, Decimal, Decimal]  # name, quantity, unit price


@dataclass(frozen=True)
class OrderProbe:
    """One CRM's order settings and the reads of its fake the contract needs.

    `order_config(config)` adds `order_stages` (every status; `cancelled` a lost stage)
    and `order_fields` to the case's section; `items` is None for a CRM whose deals hold
    no items of their own (`keeps_items` False: the note lists them)."""

    kind: str  # str(AdapterCase): "amocrm", "odoo-18", …
    order_config: Callable[[CrmConfig], CrmConfig]
    add_company: Callable[[Fake, str, str], str]  # name, INN → id
    company_ids: Callable[[Fake], list[str]]
    deal_company: Callable[[Fake, str], str | None]
    contact_companies: Callable[[Fake, str], set[str]]
    stage: Callable[[Fake, str], tuple[str, str]]  # the deal's (pipeline id, status id)
    price: Callable[[Fake, str], Decimal]
    items: Callable[[Fake, str], list[Item]] | None
    make_fake: Callable[[], Fake] | None = None  # default: the case's own
    # What the vendor's published OpenAPI files do not allow in the requests sent since
    # the last call (which forgets them); None where there are no such files.
    sent_problems: Callable[[], list[str]] | None = None
    # Requests a stage move with price and fields costs: 1 where the API allows it; more
    # where a move is its own request (Megaplan: read the deal's possible transitions,
    # write, apply the transition).
    change_calls: int = 1


# The deal fields an order writes (every order field but the company's INN).
DEAL_ORDER_FIELDS = [name for name in OrderFieldIds.model_fields if name != "company_inn"]


def _named(field_id: Callable[[str], str], **more: str) -> OrderFieldIds:
    """Order fields whose ids follow from their names (`x_order_id`), and `more`."""
    return OrderFieldIds(**{name: field_id(name) for name in DEAL_ORDER_FIELDS}, **more)


def _amo_orders(config: CrmConfig) -> CrmConfig:
    """A rental pipeline 9100001 (new … in_progress its own statuses; archived won 142,
    cancelled lost 143, both in every pipeline), the order fields, an INN company field
    and the products catalog."""
    rental = "9100001"
    stages = {"new": "9100011", "reserved": "9100012", "in_rent": "9100013"}
    stages |= {"in_progress": "9100014", "archived": "142", "cancelled": "143"}
    fields = OrderFieldIds(
        order_id="700301",
        order_status="700302",
        installation_date="700303",
        dismantle_date="700304",
        delivery_method="700305",
        delivery_address="700306",
        comment="700307",
        company_inn="700401",
    )
    return order_settings(config, rental, stages, fields, order_catalog_id="7001")


def _amo_fake() -> Any:
    from tests import test_amocrm_adapter as amo

    return amo.FakeAmoCrm(_amo_orders(amo.CONFIG), rate_limit=1000)


def _amo_stage(fake: Fake, deal_id: str) -> tuple[str, str]:
    lead = fake.lead(deal_id)
    return str(lead["pipeline_id"]), str(lead["status_id"])


def _amo_contact_companies(fake: Fake, contact_id: str) -> set[str]:
    return {str(company) for company in fake.contact_companies(contact_id)}


def _amo_deal_company(fake: Fake, deal_id: str) -> str | None:
    company = fake.lead_company(deal_id)
    return None if company is None else str(company)


AMOCRM = OrderProbe(
    kind="amocrm",
    order_config=_amo_orders,
    add_company=lambda fake, name, inn: str(fake.add_company(name, inn)),
    company_ids=lambda fake: [str(company["id"]) for company in fake.companies()],
    deal_company=_amo_deal_company,
    contact_companies=_amo_contact_companies,
    stage=_amo_stage,
    price=lambda fake, deal_id: Decimal(fake.lead(deal_id)["price"]),
    items=lambda fake, deal_id: fake.lead_items(deal_id),
    make_fake=_amo_fake,
)


def _bitrix_orders(config: CrmConfig) -> CrmConfig:
    """A rental pipeline (category 3) whose stages the orders walk; archived is won
    (C3:WON), cancelled lost (C3:LOSE); the INN lives in company requisites."""
    stages = {"new": "C3:NEW", "reserved": "C3:PREPARATION", "in_rent": "C3:EXECUTING"}
    stages |= {"in_progress": "C3:FINAL_INVOICE", "archived": "C3:WON", "cancelled": "C3:LOSE"}
    fields = OrderFieldIds(
        order_id="UF_CRM_ORDER_ID",
        order_status="UF_CRM_ORDER_STATUS",
        installation_date="UF_CRM_INSTALL_DATE",
        dismantle_date="UF_CRM_DISMANTLE_DATE",
        delivery_method="UF_CRM_DELIVERY",
        delivery_address="UF_CRM_ADDRESS",
        comment="UF_CRM_ORDER_COMMENT",
    )
    return order_settings(config, "3", stages, fields)


def _bitrix_fake() -> Any:
    from tests import test_bitrix24_adapter as bx

    return bx.FakeBitrix24(_bitrix_orders(bx.CONFIG))


def _bitrix_rows(fake: Fake, deal_id: str) -> list[Item]:
    return [
        (row["PRODUCT_NAME"], Decimal(str(row["QUANTITY"])), Decimal(str(row["PRICE"])))
        for row in fake.deal_rows(deal_id)
    ]


BITRIX24 = OrderProbe(
    kind="bitrix24",
    order_config=_bitrix_orders,
    add_company=lambda fake, name, inn: str(fake.add_company(name, inn)),
    company_ids=lambda fake: [str(company["ID"]) for company in fake.companies()],
    deal_company=lambda fake, deal_id: fake.deal(deal_id)["COMPANY_ID"],
    contact_companies=lambda fake, contact_id: {
        str(company) for company in fake.contact_companies(contact_id)
    },
    stage=lambda fake, deal_id: (fake.deal(deal_id)["CATEGORY_ID"], fake.deal(deal_id)["STAGE_ID"]),
    price=lambda fake, deal_id: Decimal(fake.deal(deal_id)["OPPORTUNITY"]),
    items=_bitrix_rows,
    make_fake=_bitrix_fake,
)

PROBES: list[OrderProbe] = [AMOCRM, BITRIX24]


def _with_orders(example: CrmConfig) -> Callable[[CrmConfig], CrmConfig]:
    """The order settings of a CRM's example config, on the case's section."""

    def apply(config: CrmConfig) -> CrmConfig:
        update = {"order_stages": example.order_stages, "order_fields": example.order_fields}
        return config.model_copy(update=update)

    return apply


def _hubspot_items(fake: Fake, deal_id: str) -> list[Item]:
    rows = fake.line_items(deal_id)
    return [(name, Decimal(qty), Decimal(price)) for name, qty, price, _ in rows]


def _hubspot_stage(fake: Fake, deal_id: str) -> tuple[str, str]:
    return (str(fake.deal_field(deal_id, "pipeline")), str(fake.deal_field(deal_id, "dealstage")))


def _pipedrive_sent_problems() -> list[str]:
    spec = PipedriveOpenApi.load()
    problems = [] if spec is None else pd.SENT.problems(spec)
    pd.SENT.clear()
    return problems


def _pipedrive_stage(fake: Fake, deal_id: str) -> tuple[str, str]:
    deal = fake.deal(deal_id)
    return (str(deal["pipeline_id"]), str(deal["stage_id"]))


PROBES += [
    OrderProbe(
        "hubspot",
        _with_orders(hs.CONFIG),
        add_company=lambda fake, name, inn: fake.add_company(name, inn),
        company_ids=lambda fake: fake.company_ids(),
        deal_company=lambda fake, deal_id: next(iter(fake.deal_companies(deal_id)), None),
        contact_companies=lambda fake, contact_id: set(fake.contact_companies(contact_id)),
        stage=_hubspot_stage,
        price=lambda fake, deal_id: Decimal(fake.deal_field(deal_id, "amount") or 0),
        items=_hubspot_items,
    ),
    OrderProbe(
        "pipedrive",
        _with_orders(pd.CONFIG),
        add_company=lambda fake, name, inn: str(fake.add_organization(name, inn)),
        company_ids=lambda fake: [str(org["id"]) for org in fake.organizations()],
        deal_company=lambda fake, deal_id: fake.deal_org(deal_id),
        contact_companies=lambda fake, person_id: fake.person_orgs(person_id),
        stage=_pipedrive_stage,
        price=lambda fake, deal_id: Decimal(str(fake.deal(deal_id)["value"])),
        items=lambda fake, deal_id: fake.deal_products(deal_id),
        sent_problems=_pipedrive_sent_problems,
    ),
]


PROBES += [
    OrderProbe(
        "salesforce",
        sf.order_config,
        lambda fake, name, inn: fake.add_company(name, inn),
        lambda fake: [row["Id"] for row in fake.companies()],
        lambda fake, deal_id: fake.deal(deal_id).get("AccountId"),
        lambda fake, contact_id: {fake.contact(contact_id)["AccountId"]} - {None},
        sf.deal_stage,
        lambda fake, deal_id: Decimal(str(fake.deal(deal_id)["Amount"])),
        sf.line_items_of,
        make_fake=sf.order_fake,
    ),
    OrderProbe(
        "zoho",
        zo.order_config,
        lambda fake, name, inn: fake.add_company(name, inn),
        lambda fake: [row["id"] for row in fake.companies()],
        lambda fake, deal_id: zo.lookup(fake.deal(deal_id), "Account_Name"),
        lambda fake, contact_id: {zo.lookup(fake.contact(contact_id), "Account_Name")} - {None},
        zo.deal_stage,
        lambda fake, deal_id: Decimal(str(fake.deal(deal_id)["Amount"])),
        None,  # Zoho deals hold no items: keeps_items False, the note lists them
    ),
]


# ---- Odoo (18 over JSON-RPC, 19 over JSON-2) -------------------------------------------


def odoo_orders(config: CrmConfig) -> CrmConfig:
    """Stages of the example database (1 New, 3 In progress, 4 Won) and the lost
    pseudo-stage for `cancelled`; the x_ order fields the example database has (the
    example's commented [crm.odoo.order_fields])."""
    team = config.default_pipeline.pipeline_id
    stages = {"new": "1", "reserved": "1", "in_rent": "3", "in_progress": "3"}
    stages |= {"archived": "4", "cancelled": "lost"}
    return order_settings(config, team, stages, _named(lambda name: f"x_{name}"))


def _odoo_parent(fake: Fake, partner_id: Any) -> str | None:
    parent = fake.partner(partner_id)["parent_id"]
    return str(parent) if parent else None


def _odoo_stage(fake: Fake, deal_id: str) -> tuple[str, str]:
    """The lead's team and stage; a lost lead (archived, Odoo keeps its stage) is in the
    `lost` pseudo-stage that `order_stages` names for it."""
    lead = fake.lead(deal_id)
    stage = "lost" if not lead.get("active", True) else str(lead["stage_id"])
    return str(lead["team_id"]), stage


def _odoo_probe(version: int) -> OrderProbe:
    def add_company(fake: Fake, name: str, inn: str) -> str:
        return str(fake.add_partner(name, is_company=True, fields={"vat": inn or False}))

    return OrderProbe(
        kind=f"odoo-{version}",
        order_config=odoo_orders,
        add_company=add_company,
        company_ids=lambda fake: [str(p["id"]) for p in fake.partners() if p["is_company"]],
        # The lead's customer is the person; its company is the person's parent.
        deal_company=lambda fake, deal_id: _odoo_parent(fake, fake.lead(deal_id)["partner_id"]),
        contact_companies=lambda fake, contact_id: {
            parent for parent in [_odoo_parent(fake, contact_id)] if parent
        },
        stage=_odoo_stage,
        price=lambda fake, deal_id: Decimal(str(fake.lead(deal_id)["expected_revenue"])),
        items=None,  # crm.lead has no lines: keeps_items is False
    )


PROBES += [_odoo_probe(18), _odoo_probe(19)]


# ---- Megaplan ---------------------------------------------------------------------------


def megaplan_orders(config: CrmConfig) -> CrmConfig:
    """States of the program "Сайт" (11 Новая, 13 В работе, 14 Завершена успешно, 15
    Отказ: negative) and the example account's order extra fields."""
    stages = {"new": "11", "reserved": "11", "in_rent": "13", "in_progress": "13"}
    stages |= {"archived": "14", "cancelled": "15"}
    # order_id → {DEAL_CATEGORY}OrderId, …; the INN is a company extra field.
    camel = _named(
        lambda name: DEAL_CATEGORY + name.title().replace("_", ""),
        company_inn=f"{COMPANY_CATEGORY}Inn",
    )
    return order_settings(config, "1", stages, camel)


def _megaplan_items(fake: Fake, deal_id: str) -> list[Item]:
    rows = fake.deal(deal_id).get("positions") or []
    return [
        (row["name"], Decimal(str(row["quantity"])), Decimal(str(row["price"]["value"])))
        for row in rows
    ]


PROBES.append(
    OrderProbe(
        kind="megaplan",
        order_config=megaplan_orders,
        add_company=lambda fake, name, inn: str(fake.add_company(name, inn=inn)),
        company_ids=lambda fake: [str(c["id"]) for c in fake.companies()],
        # The deal's client is the person; its company is the person's (`company`).
        deal_company=lambda fake, deal_id: fake.human_company(
            fake.deal(deal_id)["contractor"]["id"]
        ),
        contact_companies=lambda fake, contact_id: {
            company for company in [fake.human_company(contact_id)] if company
        },
        stage=lambda fake, deal_id: (
            str(fake.deal(deal_id)["program"]["id"]),
            str(fake.deal(deal_id)["state"]["id"]),
        ),
        price=lambda fake, deal_id: Decimal(str(fake.deal(deal_id)["price"]["value"])),
        items=_megaplan_items,
        change_calls=3,
    )
)
