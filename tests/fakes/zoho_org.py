"""The fake Zoho org's metadata and how it checks record values (API v8).

Built from a `[crm.zoho]` config section (`Org.from_config`): one Deals layout
("Standard") whose pipelines are the config's pipeline names, all mapping the one Stage
picklist (the config's stages plus "В работе" and the rental stages of the example's
order settings; "Closed Won" / "Closed Lost" carry those forecast types); the Contacts,
Deals and Accounts standard fields the bridge meets (Contacts and Deals link an account
by their `Account_Name` lookup) and one custom field per configured API name, typed as
its role asks (subjects a multi-select picklist of the subject values, direction a
picklist, amounts currency, the payment date a datetime, order dates dates, the count an
integer, the rest single lines). The order fields of the example (`ORDER_FIELDS`, the
Accounts `INN`) are there whether or not the section names them.

Values are checked the way Zoho answers writes
(https://www.zoho.com/crm/developer/docs/api/v8/insert-records.html): a field it does
not know, a value of the wrong JSON type, a picklist value it does not have, a date or
date-time in another format, a lookup to no record → `INVALID_DATA` naming `api_name`
and `json_path`; a mandatory field missing on create → `MANDATORY_NOT_FOUND`. Keys that
start with "$" are meta keys and are not stored. Picklists take the display or the
actual value and store the display value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.settings import CrmConfig

DEAL_ROLES = {
    "subjects": "multiselectpicklist",
    "direction": "picklist",
    "last_payment_amount": "currency",
    "last_payment_at": "datetime",
    "payment_id": "text",
    "invoice_id": "text",
    "total_paid": "currency",
    "purchase_count": "integer",
}
WORKING_STAGE = "В работе"
# The example's order settings (commented there): stages and fields the org has anyway.
RENTAL_STAGES = ("Новый заказ", "Забронирован", "В аренде")
ORDER_FIELDS = {
    "order_id": "Order_ID",
    "order_status": "Order_Status",
    "installation_date": "Installation_Date",
    "dismantle_date": "Dismantle_Date",
    "delivery_method": "Delivery_Method",
    "delivery_address": "Delivery_Address",
    "comment": "Order_Comment",
}
ORDER_ROLES = {"installation_date": "date", "dismantle_date": "date", "comment": "textarea"}
ACCOUNT_INN = "INN"
DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")
DATE = re.compile(r"\d{4}-\d\d-\d\d")
TEXT_LENGTH = {"text": 255, "email": 100, "phone": 50, "textarea": 32000, "website": 255}


@dataclass
class FieldDef:
    api_name: str
    label: str
    data_type: str
    custom: bool = False
    mandatory: bool = False
    read_only: bool = False
    options: list[tuple[str, str]] = field(default_factory=list)  # (display, actual)
    lookup_module: str = ""
    id: str = ""

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "api_name": self.api_name,
            "field_label": self.label,
            "display_label": self.label,
            "data_type": self.data_type,
            "json_type": _json_type(self.data_type),
            "custom_field": self.custom,
            "system_mandatory": self.mandatory,
            "read_only": self.read_only,
            "id": self.id,
            "visible": True,
            "length": TEXT_LENGTH.get(self.data_type, 16),
        }
        if self.data_type in ("picklist", "multiselectpicklist"):
            out["pick_list_values"] = [
                {
                    "display_value": display,
                    "actual_value": actual,
                    "id": f"{self.id}{index:03d}",
                    "sequence_number": index,
                    "type": "used",
                    "colour_code": None,
                }
                for index, (display, actual) in enumerate(self.options, start=1)
            ]
        if self.lookup_module:
            out["lookup"] = {"module": {"api_name": self.lookup_module}}
        return out


def _json_type(data_type: str) -> str:
    return {
        "integer": "integer",
        "bigint": "integer",
        "currency": "double",
        "double": "double",
        "multiselectpicklist": "jsonarray",
        "lookup": "jsonobject",
    }.get(data_type, "string")


@dataclass
class Stage:
    name: str
    forecast_type: str  # "Open" | "Closed Won" | "Closed Lost"
    id: str


@dataclass
class Org:
    fields: dict[str, dict[str, FieldDef]]  # module → api name → field
    pipelines: dict[str, str]  # display value → id
    stages: list[Stage]
    layout_id: str = "5725767000000091033"
    layout_name: str = "Standard"

    @classmethod
    def from_config(cls, config: CrmConfig) -> Org:
        targets = [config.default_pipeline, *config.pipeline_rules]
        pipeline_names = list(
            dict.fromkeys(
                [
                    *(target.pipeline_id for target in targets),
                    *(stage.pipeline_id for stage in config.order_stages.values()),
                ]
            )
        )
        pipelines = {name: f"57257670000001{n:05d}" for n, name in enumerate(pipeline_names)}
        names: list[str] = list(
            dict.fromkeys(
                [
                    *config.excluded_status_ids,
                    *(t.status_id for t in targets),
                    *RENTAL_STAGES,
                    *(stage.status_id for stage in config.order_stages.values()),
                    WORKING_STAGE,
                    "Closed Won",
                    "Closed Lost",
                ]
            )
        )
        stages = [
            Stage(name, name if name in ("Closed Won", "Closed Lost") else "Open", f"5725{i:07d}")
            for i, name in enumerate(names, start=1)
        ]
        ids = iter(range(5725767000000002000, 5725767000000003000))

        def make(api: str, label: str, kind: str, **extra: Any) -> FieldDef:
            return FieldDef(api, label, kind, id=str(next(ids)), **extra)

        contacts = [
            make("First_Name", "First Name", "text"),
            make("Last_Name", "Last Name", "text", mandatory=True),
            make("Full_Name", "Full Name", "text", read_only=True),
            make("Email", "Email", "email"),
            make("Secondary_Email", "Secondary Email", "email"),
            make("Phone", "Phone", "phone"),
            make("Mobile", "Mobile", "phone"),
            make("Description", "Description", "textarea"),
            make("Account_Name", "Account Name", "lookup", lookup_module="Accounts"),
        ]
        for api in config.contact_fields.model_dump().values():
            if api:
                contacts.append(make(api, api.replace("_", " "), "text", custom=True))
        deals = [
            make("Deal_Name", "Deal Name", "text", mandatory=True),
            make(
                "Stage",
                "Stage",
                "picklist",
                mandatory=True,
                options=[(s.name, s.name) for s in stages],
            ),
            make("Pipeline", "Pipeline", "picklist", options=[(p, p) for p in pipelines]),
            make("Amount", "Amount", "currency"),
            make("Closing_Date", "Closing Date", "date", mandatory=True),
            make("Contact_Name", "Contact Name", "lookup", lookup_module="Contacts"),
            make("Account_Name", "Account Name", "lookup", lookup_module="Accounts"),
            make("Description", "Description", "textarea"),
        ]
        subjects = [(str(v), str(v)) for v in config.subjects.values()]
        directions = [(str(v), str(v)) for v in config.directions.values()] + [("Другое",) * 2]
        for role, api in config.deal_fields.model_dump().items():
            if not api:
                continue
            kind = DEAL_ROLES.get(role, "text")
            options = subjects if role == "subjects" else directions if role == "direction" else []
            deals.append(make(api, api.replace("_", " "), kind, custom=True, options=options))
        taken = {f.api_name for f in deals}
        for role, api in [
            *config.order_fields.model_dump(exclude={"company_inn"}).items(),
            *ORDER_FIELDS.items(),
        ]:
            if api and api not in taken:
                taken.add(api)
                kind = ORDER_ROLES.get(role, "text")
                deals.append(make(api, api.replace("_", " "), kind, custom=True))
        accounts = [
            make("Account_Name", "Account Name", "text", mandatory=True),
            make("Phone", "Phone", "phone"),
            make("Website", "Website", "website"),
        ]
        for api in dict.fromkeys([config.order_fields.company_inn or ACCOUNT_INN, ACCOUNT_INN]):
            accounts.append(make(api, api.replace("_", " "), "text", custom=True))
        notes = [
            make("Note_Title", "Note Title", "text"),
            make("Note_Content", "Note Content", "textarea"),
            make("Parent_Id", "Parent ID", "lookup", lookup_module="Deals"),
        ]
        return cls(
            fields={
                "Contacts": {f.api_name: f for f in contacts},
                "Deals": {f.api_name: f for f in deals},
                "Notes": {f.api_name: f for f in notes},
                "Accounts": {f.api_name: f for f in accounts},
            },
            pipelines=pipelines,
            stages=stages,
        )

    # ---- metadata answers -------------------------------------------------------------

    def field_type(self, module: str) -> Callable[[str], str | None]:
        def kind(name: str) -> str | None:
            if name == "id":
                return "bigint"
            found = self.fields.get(module, {}).get(name.removesuffix(".id"))
            return found.data_type if found else None

        return kind

    def fields_json(self, module: str) -> list[dict[str, Any]]:
        return [f.json() for f in self.fields[module].values()]

    def pipelines_json(self) -> list[dict[str, Any]]:
        return [
            {
                "display_value": name,
                "actual_value": name,
                "id": pipeline_id,
                "default": index == 0,
                "child_available": False,
                "maps": [
                    {
                        "display_value": stage.name,
                        "actual_value": stage.name,
                        "id": stage.id,
                        "sequence_number": number,
                        "forecast_type": stage.forecast_type,
                        "forecast_category": {
                            "name": "Closed"
                            if stage.forecast_type == "Closed Won"
                            else "Omitted"
                            if stage.forecast_type == "Closed Lost"
                            else "Pipeline",
                            "id": f"{stage.id}9",
                        },
                        "colour_code": None,
                    }
                    for number, stage in enumerate(self.stages, start=1)
                ],
            }
            for index, (name, pipeline_id) in enumerate(self.pipelines.items())
        ]

    # ---- checking written values -------------------------------------------------------

    def check_record(
        self,
        module: str,
        record: Any,
        *,
        creating: bool,
        exists: Callable[[str, str], bool],
        index: int = 0,
    ) -> dict[str, Any]:
        """The values to store, or `RecordError` for the first problem, as Zoho names it."""
        if not isinstance(record, dict):
            raise RecordError("INVALID_DATA", "invalid data", "data", f"$.data[{index}]")
        defs = self.fields[module]
        out: dict[str, Any] = {}
        for name, value in record.items():
            path = f"$.data[{index}].{name}"
            if name.startswith("$") or name == "id":
                continue
            definition = defs.get(name)
            if definition is None or definition.read_only:
                raise RecordError("INVALID_DATA", "invalid field", name, path)
            if value is None:
                if definition.mandatory:
                    raise RecordError.missing(name, index)
                out[name] = None
                continue
            out[name] = self._check_value(definition, value, path, exists)
        if creating:
            for definition in defs.values():
                if definition.mandatory and out.get(definition.api_name) in (None, ""):
                    raise RecordError.missing(definition.api_name, index)
        return out

    def _check_value(
        self, definition: FieldDef, value: Any, path: str, exists: Callable[[str, str], bool]
    ) -> Any:
        kind, name = definition.data_type, definition.api_name

        def bad(expected: str) -> RecordError:
            return RecordError("INVALID_DATA", "invalid data", name, path, expected)

        if kind in TEXT_LENGTH:
            return _text_value(
                kind,
                value,
                bad,
                lambda: RecordError("INVALID_DATA", "value exceeds maximum length", name, path),
            )
        scalar = SCALARS.get(kind)
        if scalar is not None:
            expected, fits = scalar
            if not fits(value):
                raise bad(expected)
            return value
        if kind == "picklist":
            return self._option(definition, value, bad)
        if kind == "multiselectpicklist":
            if not isinstance(value, list):
                raise bad("jsonarray")
            return [self._option(definition, item, bad) for item in value]
        if kind == "lookup":
            target = value.get("id") if isinstance(value, dict) else value
            if not isinstance(target, str) or not exists(definition.lookup_module, target):
                message = "the related id given seems to be invalid"
                raise RecordError("INVALID_DATA", message, name, path)
            return {"id": target}
        raise bad(kind)

    @staticmethod
    def _option(definition: FieldDef, value: Any, bad: Callable[[str], RecordError]) -> str:
        if isinstance(value, str):
            for display, actual in definition.options:
                if value in (display, actual):
                    return display
        raise bad("picklist value")


def _text_value(
    kind: str, value: Any, bad: Callable[[str], RecordError], too_long: Callable[[], RecordError]
) -> str:
    if not isinstance(value, str):
        raise bad("string")
    if len(value) > TEXT_LENGTH[kind]:
        raise too_long()
    if kind == "email" and value and "@" not in value:
        raise bad("email")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# data_type → (expected type named in the error, check)
SCALARS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "integer": ("integer", _is_int),
    "bigint": ("integer", _is_int),
    "currency": ("double", _is_number),
    "double": ("double", _is_number),
    "decimal": ("double", _is_number),
    "datetime": ("datetime", lambda v: isinstance(v, str) and bool(DATETIME.fullmatch(v))),
    "date": ("date", lambda v: isinstance(v, str) and bool(DATE.fullmatch(v))),
}


class RecordError(Exception):
    def __init__(
        self, code: str, message: str, api_name: str, json_path: str, expected: str = ""
    ) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.details: dict[str, Any] = {"api_name": api_name, "json_path": json_path}
        if expected:
            self.details["expected_data_type"] = expected

    @classmethod
    def missing(cls, api_name: str, index: int) -> RecordError:
        """A mandatory field that `data[index]` does not give."""
        path = f"$.data[{index}].{api_name}"
        return cls("MANDATORY_NOT_FOUND", "required field not found", api_name, path)

    def json(self) -> dict[str, Any]:
        return zoho_item(self.code, self.message, self.details)


def zoho_item(
    code: str, message: str, details: Mapping[str, Any], status: str = "error"
) -> dict[str, Any]:
    """One answer item (or a whole error answer) as Zoho words it."""
    return {"code": code, "details": dict(details), "message": message, "status": status}
