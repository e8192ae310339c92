"""A CRM's own schema next to a `[crm.NAME]` config section, both ways (pure).

- `schema_problems`: every pipeline, status, field and enum id the section names that the
  CRM does not have (or a field of the wrong type), each with its config key, for
  `crm-bridge check`; the order keys (`order_stages`, `order_fields`) like the payment ones;
- `config_snippet`: the schema written as TOML in the shape of `etc/bridge.example.toml`,
  for `crm-bridge discover`: ids the section already names and the CRM has are filled in,
  then fields matched by name and type (`bridge.fieldmatch`); only what cannot be decided
  is left commented, with the candidates listed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.crm.base import CrmSchema, CustomField
from bridge.fieldmatch import Match, match_fields
from bridge.settings import CrmConfig

# What each configured field is written as, and the CRM field types that can take it.
FIELD_TYPES: Mapping[str, frozenset[str]] = {
    "multiselect": frozenset({"multiselect"}),
    "select": frozenset({"select", "radiobutton"}),
    "numeric": frozenset({"numeric", "price", "monetary"}),
    "date_time": frozenset({"date_time", "date"}),
    "text": frozenset({"text", "textarea", "url", "tracking_data", "streetaddress"}),
    # A day: a date field (amoCRM's birthday is one too; Zoho's Date keeps the name
    # "zoho:date" so no payment time goes there), or a date-time one.
    "date": frozenset({"date", "date_time", "birthday", "zoho:date"}),
}
DEAL_FIELDS: Mapping[str, str] = {
    "subjects": "multiselect",
    "direction": "select",
    "last_payment_amount": "numeric",
    "last_payment_at": "date_time",
    "payment_id": "text",
    "invoice_id": "text",
    "total_paid": "numeric",
    "purchase_count": "numeric",
    "utm_source": "text",
    "utm_medium": "text",
    "utm_campaign": "text",
    "utm_term": "text",
    "utm_content": "text",
}
CONTACT_FIELDS: Mapping[str, str] = {"telegram_id": "text", "telegram_username": "text"}
# Orders (SPEC §8): deal fields an order writes, and the company field holding the INN.
ORDER_FIELDS: Mapping[str, str] = {
    "order_id": "text",
    "order_status": "text",
    "installation_date": "date",
    "dismantle_date": "date",
    "delivery_method": "text",
    "delivery_address": "text",
    "comment": "text",
}
COMPANY_FIELDS: Mapping[str, str] = {"company_inn": "text"}
_ENTITY_NAME = {"leads": "lead", "contacts": "contact", "companies": "company"}


@dataclass(frozen=True)
class Problem:
    key: str  # the config key, with the value it holds: `crm.amocrm.deal_fields.x = 7`
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def schema_problems(name: str, config: CrmConfig, schema: CrmSchema) -> list[Problem]:
    """Every id in `config` that `schema` lacks, in config order."""
    prefix = f"crm.{name}"
    problems: list[Problem] = []
    statuses_of = {p.id: p.statuses for p in schema.pipelines}
    all_statuses = {status for p in schema.pipelines for status in p.statuses}
    targets = [
        (f"pipeline_rules[{index}]", rule.pipeline_id, rule.status_id)
        for index, rule in enumerate(config.pipeline_rules)
    ]
    targets.append(
        ("default_pipeline", config.default_pipeline.pipeline_id, config.default_pipeline.status_id)
    )
    targets += [
        (f"order_stages.{status}", stage.pipeline_id, stage.status_id)
        for status, stage in config.order_stages.items()
    ]
    for where, pipeline_id, status_id in targets:
        if pipeline_id not in statuses_of:
            problems.append(
                Problem(f"{prefix}.{where}.pipeline_id = {pipeline_id}", "no such pipeline")
            )
        elif status_id not in statuses_of[pipeline_id]:
            problems.append(
                Problem(
                    f"{prefix}.{where}.status_id = {status_id}",
                    f"no such status in pipeline {pipeline_id}",
                )
            )
    for status_id in config.excluded_status_ids:
        if status_id not in all_statuses:
            problems.append(Problem(f"{prefix}.excluded_status_ids: {status_id}", "no such status"))
    if schema.closed_statuses is not None:
        problems += _closed_problems(prefix, config, schema.closed_statuses)
    fields = {(f.entity, f.id): f for f in schema.fields}
    configured = (
        ("deal_fields", "leads", config.deal_fields.model_dump(), DEAL_FIELDS),
        ("contact_fields", "contacts", config.contact_fields.model_dump(), CONTACT_FIELDS),
        *_order_field_tables(config, schema),
    )
    for table, entity, ids, kinds in configured:
        for key, field_id in ids.items():
            if field_id is None:
                continue
            found = fields.get((entity, field_id))
            where = f"{prefix}.{table}.{key} = {field_id}"
            if found is None:
                problems.append(Problem(where, f"no such {_ENTITY_NAME[entity]} field"))
            elif found.type not in FIELD_TYPES[kinds[key]]:
                problems.append(
                    Problem(
                        where,
                        f"{_quote(found.name)} is a {found.type} field; {key} needs"
                        f" {' or '.join(sorted(FIELD_TYPES[kinds[key]]))}",
                    )
                )
    for table, field_key, mapping in (
        ("subjects", "subjects", config.subjects),
        ("directions", "direction", config.directions),
    ):
        field_id = getattr(config.deal_fields, field_key)
        enum_field = fields.get(("leads", field_id)) if field_id else None
        if enum_field is None or enum_field.type not in FIELD_TYPES[DEAL_FIELDS[field_key]]:
            continue  # reported above once, or the field is not written at all
        for label, enum_id in mapping.items():
            if str(enum_id) not in enum_field.enums:
                problems.append(
                    Problem(
                        f"{prefix}.{table}.{_quote(label)} = {enum_id}",
                        f"no such value in lead field {field_id} {_quote(enum_field.name)}",
                    )
                )
    return problems


def _order_field_tables(
    config: CrmConfig, schema: CrmSchema
) -> list[tuple[str, str, dict[str, str | None], Mapping[str, str]]]:
    """`order_fields` as the tables `schema_problems` checks: the deal fields, and the
    company INN field where the CRM lists company fields (one with an INN of its own
    lists none, and ignores the key)."""
    ids = config.order_fields.model_dump()
    inn = {"company_inn": ids.pop("company_inn")}
    tables: list[tuple[str, str, dict[str, str | None], Mapping[str, str]]] = [
        ("order_fields", "leads", ids, ORDER_FIELDS)
    ]
    if any(f.entity == "companies" for f in schema.fields):
        tables.append(("order_fields", "companies", inn, COMPANY_FIELDS))
    return tables


def _closed_problems(prefix: str, config: CrmConfig, closed: frozenset[str]) -> list[Problem]:
    """Where the config decides what is closed, it must say what the CRM says."""
    listed = set(config.closed_status_ids)
    return [
        Problem(f"{prefix}.closed_status_ids", f"{_quote(status)} is won or lost in the CRM")
        for status in sorted(closed - listed)
    ] + [
        Problem(f"{prefix}.closed_status_ids: {status}", "not a won or lost status in the CRM")
        for status in sorted(listed - closed)
    ]


def config_snippet(name: str, config: CrmConfig | None, schema: CrmSchema) -> str:
    """TOML for the `[crm.NAME]` sub-tables, from what the CRM has."""
    lines = [
        f"# `crm-bridge discover {name}`: this CRM's pipelines, statuses and custom fields.",
        f"# Replace the matching [crm.{name}.*] tables of your config with these.",
        "#",
        "# Pipelines and statuses (ids for pipeline_rules, default_pipeline,",
        "# excluded_status_ids):",
    ]
    for pipeline in schema.pipelines:
        lines.append(f"#   pipeline {pipeline.id} = {_quote(pipeline.name)}")
        lines += [
            f"#     status {sid} = {_quote(sname)}" for sid, sname in pipeline.statuses.items()
        ]
    if schema.closed_statuses is not None:
        closed = ", ".join(_quote(status) for status in sorted(schema.closed_statuses))
        lines += [
            "#",
            f"# Won and lost statuses (for [crm.{name}]):",
            f"#   closed_status_ids = [{closed}]",
        ]
    leads = [f for f in schema.fields if f.entity == "leads"]
    contacts = [f for f in schema.fields if f.entity == "contacts"]
    contact_ids = config.contact_fields.model_dump() if config else {}
    deal_ids = config.deal_fields.model_dump() if config else {}
    contact_matches = match_fields(CONTACT_FIELDS, contact_ids, contacts, FIELD_TYPES)
    deal_matches = match_fields(DEAL_FIELDS, deal_ids, leads, FIELD_TYPES)
    lines += ["", f"[crm.{name}.contact_fields]"]
    lines += _field_lines(CONTACT_FIELDS, contact_matches, contacts, "contact")
    lines += ["", f"[crm.{name}.deal_fields]"]
    lines += _field_lines(DEAL_FIELDS, deal_matches, leads, "lead")
    for table, key in (("subjects", "subjects"), ("directions", "direction")):
        lines += ["", f"[crm.{name}.{table}]"]
        match = deal_matches.get(key)
        lines += _enum_lines(leads, match.field.id if match else None, DEAL_FIELDS[key])
    taken = {match.field.id for match in deal_matches.values()}
    lines += _order_lines(name, config, schema, [f for f in leads if f.id not in taken])
    return "\n".join(lines) + "\n"


def _order_lines(
    name: str, config: CrmConfig | None, schema: CrmSchema, leads: Sequence[CustomField]
) -> list[str]:
    """`[crm.NAME.order_stages]` (the configured stages the CRM has, else a commented
    template) and `[crm.NAME.order_fields]` matched like the payment fields."""
    statuses = {(p.id, s) for p in schema.pipelines for s in p.statuses}
    stages = config.order_stages if config else {}
    lines = ["", f"[crm.{name}.order_stages]"]
    if stages and all((s.pipeline_id, s.status_id) in statuses for s in stages.values()):
        lines += [
            f"{status} = {{ pipeline_id = {_toml_id(s.pipeline_id)},"
            f" status_id = {_toml_id(s.status_id)} }}"
            for status, s in stages.items()
        ]
    else:
        lines += [
            "# Orders: every status needs a stage (ids from the list above); cancelled a lost one.",
            *(
                f"# {status} = {{ pipeline_id = …, status_id = … }}"
                for status in ("new", "reserved", "in_rent", "in_progress", "archived", "cancelled")
            ),
        ]
    ids = config.order_fields.model_dump() if config else {}
    companies = [f for f in schema.fields if f.entity == "companies"]
    deal_matches = match_fields(ORDER_FIELDS, ids, leads, FIELD_TYPES)
    lines += ["", f"[crm.{name}.order_fields]"]
    lines += _field_lines(ORDER_FIELDS, deal_matches, leads, "lead")
    if companies:
        inn_matches = match_fields(COMPANY_FIELDS, ids, companies, FIELD_TYPES)
        lines += _field_lines(COMPANY_FIELDS, inn_matches, companies, "company")
    return lines


def _field_lines(
    kinds: Mapping[str, str],
    matches: Mapping[str, Match],
    fields: Sequence[CustomField],
    entity: str,
) -> list[str]:
    lines: list[str] = []
    notes = {"configured": "", "exact": ", matched by name", "near": ", NEAR match: check it"}
    for key, kind in kinds.items():
        match = matches.get(key)
        if match is not None:
            found = match.field
            lines.append(
                f"{f'{key} = {_toml_id(found.id)}':<30}# {_describe(found)}{notes[match.how]}"
            )
        else:
            lines.append(f"{f'# {key} =':<30}# {kind}: pick one below")
    lines.append(f"# {entity.capitalize()} custom fields of this account:")
    lines += [f"#   {f.id} = {_describe(f)}" for f in fields] or ["#   (none)"]
    return lines


def _enum_lines(leads: Sequence[CustomField], field_id: str | None, kind: str) -> list[str]:
    chosen = next(
        (f for f in leads if f.id == field_id and f.type in FIELD_TYPES[kind] and f.enums), None
    )
    if chosen is not None:
        return [f"# values of lead field {chosen.id} {_describe(chosen)}:"] + [
            f"{_quote(label)} = {_toml_id(enum_id)}" for enum_id, label in chosen.enums.items()
        ]
    candidates = [f for f in leads if f.type in FIELD_TYPES[kind] and f.enums]
    lines = [f"# candidates: the {kind} lead fields; set deal_fields first, uncomment one set"]
    for candidate in candidates:
        lines.append(f"# from lead field {candidate.id} {_describe(candidate)}:")
        lines += [
            f"# {_quote(label)} = {_toml_id(enum_id)}" for enum_id, label in candidate.enums.items()
        ]
    return lines + ([] if candidates else ["#   (none)"])


def _describe(found: CustomField) -> str:
    return f"{_quote(found.name)} ({found.type})"


def _quote(text: str) -> str:
    """A TOML basic string: JSON's escapes are valid TOML, and it is always one line."""
    return json.dumps(text, ensure_ascii=False)


def _toml_id(value: str) -> str:
    """amoCRM ids are numbers; HubSpot, Pipedrive and Bitrix24 also use names and hashes."""
    return value if value.isdigit() else json.dumps(value, ensure_ascii=False)
