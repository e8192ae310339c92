"""The fake Salesforce org's data: objects and their describe results, records, and the
checks Salesforce makes on a write, answered as Salesforce answers them.

Objects: Contact, Opportunity, OpportunityContactRole, Note (what the bridge touches), and
for orders Account (with the INN custom field `order_fields.company_inn` names), Product2,
Pricebook2 (the standard price book `STANDARD_PRICEBOOK` is always there), PricebookEntry
and OpportunityLineItem. A line item must be of an entry of the opportunity's price book
(FIELD_INTEGRITY_EXCEPTION otherwise), takes its product's code and name, and the
opportunity's Amount is the sum of its lines while it has any: a PATCH of Amount then
answers 204 and changes nothing
(https://help.salesforce.com/s/articleView?id=004052228&type=1).
Their fields are the standard ones the bridge reads or writes plus the custom fields of
the config (types by what each config key holds: subjects a multi-select picklist with the
`subjects` values, direction a picklist, amounts currency, the count a number, the
payment time a date/time, the rest text; the Telegram id is a unique External ID).

Opportunity record types (the pipelines) and their sales processes are those of
`etc/crm-salesforce.example.toml`: Site, Yandex and Partners, each with "Autopay"
(Автооплаты ООО), working stages and "Closed Won" / "Closed Lost"; a stage decides
`IsClosed` and `IsWon` (OpportunityStage). `record_types=False` gives an org without
record types (only the master one).

A write is checked before anything is applied, like the REST API does
(https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_concepts_core_data_objects.htm#i1421192):
unknown field → INVALID_FIELD; read-only → INVALID_FIELD_FOR_INSERT_UPDATE; required one
missing → REQUIRED_FIELD_MISSING; a value of the wrong JSON type → JSON_PARSER_ERROR; too
long → STRING_TOO_LONG; an option a picklist does not have (each part of a `;`-joined
multi-select) → INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST; a stage outside the record
type's sales process likewise; a reference to nothing → INVALID_CROSS_REFERENCE_KEY;
a second record with a unique value → DUPLICATE_VALUE; a malformed e-mail →
INVALID_EMAIL_ADDRESS. Dates are `YYYY-MM-DD`, date-times ISO 8601 (stored and returned as
`2026-12-02T10:00:00.000+0000`).

The search index (SOSL) trails writes by `index_lag` seconds; queries (SOQL) never do.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from bridge.settings import CrmConfig
from tests.fakes.salesforce_soql import Row, sf_error

ORG_ID = "00DQy000000FakeOrg"
USER_ID = "005Qy000000BridgeU"
MASTER = "012000000000000AAA"
PREFIXES = {
    "Contact": "003",
    "Opportunity": "006",
    "OpportunityContactRole": "00K",
    "Note": "002",
    "Account": "001",
    "Product2": "01t",
    "Pricebook2": "01s",
    "PricebookEntry": "01u",
    "OpportunityLineItem": "00k",
}
STANDARD_PRICEBOOK = "01sQy00000StdPbAAA"
# The order fields of the example config (commented there): the org has them anyway.
ORDER_FIELDS = {
    "order_id": "Order_Id__c",
    "order_status": "Order_Status__c",
    "installation_date": "Installation_Date__c",
    "dismantle_date": "Dismantle_Date__c",
    "delivery_method": "Delivery_Method__c",
    "delivery_address": "Delivery_Address__c",
    "comment": "Order_Comment__c",
}
ACCOUNT_INN = "INN__c"


@dataclass(frozen=True)
class Stage:
    value: str
    label: str
    closed: bool = False
    won: bool = False
    probability: int = 10


STAGES = [
    Stage("Autopay", "Автооплаты ООО"),
    Stage("Prospecting", "Новая"),
    Stage("Partner Review", "Проверка партнёра", probability=20),
    Stage("In Progress", "В работе", probability=50),
    Stage("Closed Won", "Успешно реализовано", True, True, 100),
    Stage("Closed Lost", "Закрыто и не реализовано", True, False, 0),
]
STAGE = {stage.value: stage for stage in STAGES}


@dataclass(frozen=True)
class RecordType:
    id: str
    developer_name: str
    name: str
    stages: tuple[str, ...]  # the sales process


RECORD_TYPES = [
    RecordType(
        "012Qy000001RtAaIAS",
        "Site",
        "Site",
        ("Autopay", "Prospecting", "In Progress", "Closed Won", "Closed Lost"),
    ),
    RecordType(
        "012Qy000001RtBbIAS",
        "Yandex",
        "Yandex",
        ("Autopay", "In Progress", "Closed Won", "Closed Lost"),
    ),
    RecordType(
        "012Qy000001RtCcIAS",
        "Partners",
        "Partners",
        ("Autopay", "Partner Review", "In Progress", "Closed Won", "Closed Lost"),
    ),
]


@dataclass
class FieldDef:
    name: str
    label: str
    type: str  # id string textarea email phone picklist multipicklist currency double
    #             boolean date datetime reference
    custom: bool = False
    createable: bool = True
    updateable: bool = True
    required: bool = False  # on create (nillable false, no default)
    length: int = 0
    options: dict[str, str] = field(default_factory=dict)  # API value → label
    reference_to: tuple[str, ...] = ()
    unique: bool = False
    external_id: bool = False

    def json(self) -> dict[str, Any]:
        """The field as `GET /sobjects/X/describe` lists it (the properties a client reads)."""
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "custom": self.custom,
            "createable": self.createable,
            "updateable": self.updateable,
            "nillable": not self.required and self.type != "boolean",
            "defaultedOnCreate": self.type == "boolean" or not self.createable,
            "calculated": False,
            "length": self.length,
            "precision": 18 if self.type in ("currency", "double") else 0,
            "scale": 2 if self.type == "currency" else 0,
            "unique": self.unique,
            "externalId": self.external_id,
            "idLookup": self.type == "id" or self.external_id,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.name.removesuffix("Id") if self.reference_to else None,
            "restrictedPicklist": self.type in ("picklist", "multipicklist"),
            "picklistValues": [
                {
                    "active": True,
                    "defaultValue": False,
                    "label": label,
                    "validFor": None,
                    "value": value,
                }
                for value, label in self.options.items()
            ],
        }


READ_ONLY: dict[str, Any] = {"createable": False, "updateable": False}
FIXED: dict[str, Any] = {"updateable": False, "required": True}  # set once, on create


def _system(*extra: FieldDef) -> list[FieldDef]:
    return [
        FieldDef("Id", "Record ID", "id", **READ_ONLY),
        FieldDef("IsDeleted", "Deleted", "boolean", **READ_ONLY),
        FieldDef("CreatedDate", "Created Date", "datetime", **READ_ONLY),
        FieldDef("LastModifiedDate", "Last Modified Date", "datetime", **READ_ONLY),
        FieldDef("SystemModstamp", "System Modstamp", "datetime", **READ_ONLY),
        *extra,
    ]


def _text(name: str, label: str, length: int = 255, **kw: Any) -> FieldDef:
    return FieldDef(name, label, "string", custom=name.endswith("__c"), length=length, **kw)


def _ref(name: str, label: str, *objects: str, **kw: Any) -> FieldDef:
    return FieldDef(name, label, "reference", reference_to=objects, **kw)


def object_fields(config: CrmConfig) -> dict[str, list[FieldDef]]:
    contact = _system(
        FieldDef("Name", "Full Name", "string", length=121, **READ_ONLY),
        _text("FirstName", "First Name", 40),
        _text("LastName", "Last Name", 80, required=True),
        FieldDef("Email", "Email", "email", length=80),
        *(
            FieldDef(n, label, "phone", length=40)
            for n, label in (
                ("Phone", "Business Phone"),
                ("MobilePhone", "Mobile Phone"),
                ("HomePhone", "Home Phone"),
                ("OtherPhone", "Other Phone"),
            )
        ),
        _ref("AccountId", "Account ID", "Account"),
    )
    ids = config.contact_fields
    if ids.telegram_id:
        contact.append(_text(ids.telegram_id, "Telegram ID", 50, unique=True, external_id=True))
    if ids.telegram_username:
        contact.append(_text(ids.telegram_username, "Telegram Username", 100))
    opportunity = _system(
        _text("Name", "Name", 120, required=True),
        FieldDef(
            "StageName",
            "Stage",
            "picklist",
            required=True,
            options={s.value: s.label for s in STAGES},
        ),
        FieldDef("CloseDate", "Close Date", "date", required=True),
        FieldDef("Amount", "Amount", "currency"),
        FieldDef("IsClosed", "Closed", "boolean", **READ_ONLY),
        FieldDef("IsWon", "Won", "boolean", **READ_ONLY),
        _ref("RecordTypeId", "Record Type ID", "RecordType"),
        _ref("AccountId", "Account ID", "Account"),
        FieldDef("Description", "Description", "textarea", length=32000),
        _ref("Pricebook2Id", "Price Book ID", "Pricebook2"),
    )
    opportunity.extend(_deal_custom_fields(config))
    role = _system(
        _ref("OpportunityId", "Opportunity ID", "Opportunity", **FIXED),
        _ref("ContactId", "Contact ID", "Contact", required=True),
        FieldDef(
            "Role",
            "Role",
            "picklist",
            options={r: r for r in ("Decision Maker", "Business User", "Other")},
        ),
        FieldDef("IsPrimary", "Primary", "boolean"),
    )
    note = _system(
        _ref("ParentId", "Parent ID", "Opportunity", "Contact", **FIXED),
        _text("Title", "Title", 80, required=True),
        FieldDef("Body", "Body", "textarea", length=32000),
        FieldDef("IsPrivate", "Private", "boolean"),
    )
    return {
        "Contact": contact,
        "Opportunity": opportunity,
        "OpportunityContactRole": role,
        "Note": note,
        **_order_objects(config),
    }


def _order_objects(config: CrmConfig) -> dict[str, list[FieldDef]]:
    """Account and the objects of opportunity products, as orders use them."""
    account = _system(
        _text("Name", "Account Name", 255, required=True),
        FieldDef("Phone", "Account Phone", "phone", length=40),
        FieldDef("Website", "Website", "url", length=255),
    )
    for inn in dict.fromkeys([config.order_fields.company_inn or ACCOUNT_INN, ACCOUNT_INN]):
        account.append(_text(inn, "INN", 12))
    product = _system(
        _text("Name", "Product Name", 255, required=True),
        _text("ProductCode", "Product Code", 255),
        FieldDef("IsActive", "Active", "boolean"),
    )
    pricebook = _system(
        _text("Name", "Price Book Name", 255, required=True),
        FieldDef("IsActive", "Active", "boolean"),
        FieldDef("IsStandard", "Is Standard Price Book", "boolean", **READ_ONLY),
    )
    entry = _system(
        _ref("Pricebook2Id", "Price Book ID", "Pricebook2", **FIXED),
        _ref("Product2Id", "Product ID", "Product2", **FIXED),
        FieldDef("UnitPrice", "List Price", "currency", required=True),
        FieldDef("IsActive", "Active", "boolean"),
        _text("ProductCode", "Product Code", 255, **READ_ONLY),
        _text("Name", "Product Name", 255, **READ_ONLY),
    )
    line = _system(
        _ref("OpportunityId", "Opportunity ID", "Opportunity", **FIXED),
        _ref("PricebookEntryId", "Price Book Entry ID", "PricebookEntry", **FIXED),
        _ref("Product2Id", "Product ID", "Product2", **READ_ONLY),
        _text("ProductCode", "Product Code", 255, **READ_ONLY),
        _text("Name", "Opportunity Product Name", 376, **READ_ONLY),
        FieldDef("Quantity", "Quantity", "double", required=True),
        FieldDef("UnitPrice", "Sales Price", "currency"),
        FieldDef("TotalPrice", "Total Price", "currency", **READ_ONLY),
        _text("Description", "Line Description", 255),
    )
    return {
        "Account": account,
        "Product2": product,
        "Pricebook2": pricebook,
        "PricebookEntry": entry,
        "OpportunityLineItem": line,
    }


def _deal_custom_fields(config: CrmConfig) -> list[FieldDef]:
    ids = config.deal_fields
    kinds: dict[str, tuple[str, str]] = {
        "subjects": ("multipicklist", "Subjects"),
        "direction": ("picklist", "Exam Direction"),
        "last_payment_amount": ("currency", "Last Payment Amount"),
        "last_payment_at": ("datetime", "Last Payment At"),
        "total_paid": ("currency", "Total Paid"),
        "purchase_count": ("double", "Purchase Count"),
        "installation_date": ("date", "Installation Date"),
        "dismantle_date": ("date", "Dismantle Date"),
        "comment": ("textarea", "Order Comment"),
    }
    found = []
    roles = [
        *ids.model_dump().items(),
        *config.order_fields.model_dump(exclude={"company_inn"}).items(),
        *ORDER_FIELDS.items(),  # the org has them whether or not the section names them
    ]
    taken: set[str] = set()
    for key, name in roles:
        if not name or name in taken:
            continue
        taken.add(name)
        kind, label = kinds.get(key) or ("string", key.replace("_", " ").title())
        options: dict[str, str] = {}
        if key == "subjects":
            options = {str(v): subject for subject, v in config.subjects.items()}
        elif key == "direction":
            options = {str(v): direction for direction, v in config.directions.items()}
        length = {"string": 255, "multipicklist": 4099, "textarea": 32000}.get(kind, 0)
        found.append(FieldDef(name, label, kind, custom=True, length=length, options=options))
    return found


# (parent, relationship name in lower case) → (relationship name, child, child's field
# naming the parent)
CHILDREN = {
    (parent, name.lower()): (name, child, field)
    for parent, name, child, field in (
        ("Opportunity", "OpportunityContactRoles", "OpportunityContactRole", "OpportunityId"),
        ("Opportunity", "Notes", "Note", "ParentId"),
        ("Contact", "OpportunityContactRoles", "OpportunityContactRole", "ContactId"),
        ("Contact", "Notes", "Note", "ParentId"),
        ("Opportunity", "OpportunityLineItems", "OpportunityLineItem", "OpportunityId"),
    )
}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def sf_datetime(moment: float) -> str:
    """Salesforce's dateTime as it returns it: 2026-12-02T10:00:00.000+0000."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


class Org:
    """One org's records, schema and search index (not thread-safe: the fake locks)."""

    def __init__(
        self,
        config: CrmConfig,
        clock: Callable[[], float],
        *,
        index_lag: float = 0.0,
        record_types: bool = True,
        version: str = "68.0",
    ) -> None:
        self.config = config
        self.clock = clock
        self.index_lag = index_lag
        self.version = version
        self.fields = object_fields(config)
        self.record_types = list(RECORD_TYPES) if record_types else []
        self.records: dict[str, dict[str, Row]] = {name: {} for name in self.fields}
        self.index: dict[str, list[tuple[float, Row]]] = {}  # id → (searchable from, values)
        self._serial = 0
        # Every org has its standard price book (Setup creates none: it is just there).
        standard = self.create("Pricebook2", {"Name": "Standard Price Book", "IsActive": True})
        del self.records["Pricebook2"][standard["Id"]]
        standard.update(Id=STANDARD_PRICEBOOK, IsStandard=True)
        self.records["Pricebook2"][STANDARD_PRICEBOOK] = standard

    # ---- schema -------------------------------------------------------------------

    def canonical_object(self, name: str) -> str:
        for known in self.fields:
            if known.lower() == name.lower():
                return known
        raise sf_error(400, "INVALID_TYPE", f"sObject type '{name}' is not supported.")

    def field(self, sobject: str, name: str) -> FieldDef:
        for known in self.fields[sobject]:
            if known.name.lower() == name.lower():
                return known
        message = f"No such column '{name}' on entity '{sobject}'."
        raise sf_error(400, "INVALID_FIELD", message)

    def canonical_field(self, sobject: str, name: str) -> str:
        return self.field(sobject, name).name

    def field_type(self, sobject: str, name: str) -> str:
        return self.field(sobject, name).type

    def relationship(self, sobject: str, name: str) -> tuple[str, str, str]:
        found = CHILDREN.get((sobject, name.lower()))
        if found is None:
            message = f"Didn't understand relationship '{name}' in FROM part of query call."
            raise sf_error(400, "INVALID_TYPE", message)
        return found

    def rows(self, sobject: str) -> Iterable[Row]:
        return [row for row in self.records[sobject].values() if not row["IsDeleted"]]

    def search_rows(self, sobject: str) -> Iterable[tuple[Row, Row]]:
        now = self.clock()
        for row in self.rows(sobject):
            versions = [values for since, values in self.index.get(row["Id"], ()) if since <= now]
            if versions:
                yield row, versions[-1]

    def stages_of(self, record_type: str | None) -> tuple[str, ...]:
        if not self.record_types:
            return tuple(stage.value for stage in STAGES)
        found = next((rt for rt in self.record_types if rt.id == record_type), None)
        return found.stages if found else ()

    def describe(self, sobject: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": sobject,
            "label": sobject,
            "custom": False,
            "keyPrefix": PREFIXES[sobject],
            "createable": True,
            "updateable": True,
            "queryable": True,
            "searchable": sobject != "OpportunityContactRole",
            "fields": [f.json() for f in self.fields[sobject]],
            "childRelationships": [
                {"childSObject": child, "field": fk, "relationshipName": rel, "cascadeDelete": True}
                for (parent, _), (rel, child, fk) in CHILDREN.items()
                if parent == sobject
            ],
            "recordTypeInfos": [],
            "urls": {"describe": f"/services/data/v{self.version}/sobjects/{sobject}/describe"},
        }
        if sobject == "Opportunity":
            stage = next(f for f in body["fields"] if f["name"] == "StageName")
            for value in stage["picklistValues"]:
                value["defaultValue"] = value["value"] == STAGES[0].value
            body["recordTypeInfos"] = self._record_type_infos()
        return body

    def _record_type_infos(self) -> list[dict[str, Any]]:
        """The record types, the first the default, then the master one (the default when
        there are no others)."""
        types = [(rt.developer_name, rt.name, rt.id) for rt in self.record_types]
        return [
            {
                "active": True,
                "available": True,
                "defaultRecordTypeMapping": n == 0,
                "master": rt_id == MASTER,
                "developerName": developer_name,
                "name": name,
                "recordTypeId": rt_id,
            }
            for n, (developer_name, name, rt_id) in enumerate(
                [*types, ("Master", "Master", MASTER)]
            )
        ]

    def stage_values(self, record_type: str) -> dict[str, Any]:
        """The UI API's picklist values of StageName for one record type."""
        if record_type != MASTER and not any(rt.id == record_type for rt in self.record_types):
            raise sf_error(
                404, "NOT_FOUND", f"The requested resource does not exist: {record_type}"
            )
        values = self.stages_of(None if record_type == MASTER else record_type)
        if record_type == MASTER:
            values = tuple(stage.value for stage in STAGES)
        return {
            "controllerValues": {},
            "defaultValue": None,
            "eTag": f"etag-{record_type}",
            "url": f"/services/data/v{self.version}/ui-api/object-info/Opportunity"
            f"/picklist-values/{record_type}/StageName",
            "values": [
                {
                    "attributes": {
                        "closed": STAGE[v].closed,
                        "won": STAGE[v].won,
                        "defaultProbability": STAGE[v].probability,
                        "picklistAtrributesValueType": "OpportunityStage",
                    },
                    "label": STAGE[v].label,
                    "validFor": [],
                    "value": v,
                }
                for v in values
            ],
        }

    # ---- writes -------------------------------------------------------------------

    def new_id(self, sobject: str) -> str:
        self._serial += 1
        return f"{PREFIXES[sobject]}Qy{self._serial:010d}AAA"

    def live(self, sobject: str, record_id: str) -> Row:
        row = self.records[sobject].get(record_id)
        if row is None or row["IsDeleted"]:
            raise sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        return row

    def create(self, sobject: str, body: Any, *, seeded: bool = False) -> Row:
        if sobject == "Opportunity" and self.record_types and isinstance(body, dict):
            # Without a record type the user's default one applies (the first here).
            body = {"RecordTypeId": self.record_types[0].id, **body}
        values = self._checked(sobject, body, creating=True, seeded=seeded)
        now = sf_datetime(self.clock())
        record_id = self.new_id(sobject)
        row: Row = {f.name: None for f in self.fields[sobject]}
        row.update({f.name: False for f in self.fields[sobject] if f.type == "boolean"})
        row.update(values)
        row.update(
            Id=record_id,
            CreatedDate=now,
            LastModifiedDate=now,
            SystemModstamp=now,
            IsDeleted=False,
            __url=f"/services/data/v{self.version}/sobjects/{sobject}/{record_id}",
        )
        self._derive(sobject, row)
        self.records[sobject][record_id] = row
        self._index(sobject, row)
        if sobject == "OpportunityLineItem":
            self.roll_up(row["OpportunityId"])
        return row

    def update(self, sobject: str, record_id: str, body: Any, *, seeded: bool = False) -> Row:
        row = self.live(sobject, record_id)
        values = self._checked(sobject, body, creating=False, seeded=seeded, current=row)
        moved = values.get("Pricebook2Id", row.get("Pricebook2Id")) != row.get("Pricebook2Id")
        if sobject == "Opportunity" and moved and self.lines_of(record_id):
            # The price book of an opportunity with products cannot change under them.
            message = "field integrity exception: Pricebook2Id (opportunity has line items)"
            raise sf_error(400, "FIELD_INTEGRITY_EXCEPTION", message, ["Pricebook2Id"])
        row.update(values)
        row["LastModifiedDate"] = row["SystemModstamp"] = sf_datetime(self.clock())
        self._derive(sobject, row)
        self._index(sobject, row)
        if sobject == "OpportunityLineItem":
            self.roll_up(row["OpportunityId"])
        if sobject == "Opportunity":
            self.roll_up(record_id)  # an Amount written over products does not stick
        return row

    def delete(self, sobject: str, record_id: str) -> None:
        row = self.live(sobject, record_id)
        row["IsDeleted"] = True
        if sobject == "OpportunityLineItem":
            self.roll_up(row["OpportunityId"])

    def lines_of(self, deal_id: str) -> list[Row]:
        return [r for r in self.rows("OpportunityLineItem") if r["OpportunityId"] == deal_id]

    def snapshot(self) -> Any:
        return copy.deepcopy((self.records, self.index, self._serial))

    def restore(self, state: Any) -> None:
        self.records, self.index, self._serial = copy.deepcopy(state)

    def _derive(self, sobject: str, row: Row) -> None:
        if sobject == "Contact":
            row["Name"] = " ".join(p for p in (row.get("FirstName"), row.get("LastName")) if p)
        if sobject == "Opportunity":
            stage = STAGE[row["StageName"]]
            row["IsClosed"], row["IsWon"] = stage.closed, stage.won
        if sobject == "PricebookEntry":
            product = self.records["Product2"][row["Product2Id"]]
            row["ProductCode"], row["Name"] = product.get("ProductCode"), product["Name"]
        if sobject == "OpportunityLineItem":
            self._derive_line(row)

    def _derive_line(self, row: Row) -> None:
        entry = self.records["PricebookEntry"][row["PricebookEntryId"]]
        deal = self.records["Opportunity"][row["OpportunityId"]]
        if deal.get("Pricebook2Id") != entry["Pricebook2Id"]:
            message = (
                "field integrity exception: PricebookEntryId (pricebook entry is in a"
                " different pricebook than the one assigned to the opportunity)"
            )
            raise sf_error(400, "FIELD_INTEGRITY_EXCEPTION", message, ["PricebookEntryId"])
        if row.get("UnitPrice") is None:
            row["UnitPrice"] = entry["UnitPrice"]
        row["Product2Id"], row["ProductCode"] = entry["Product2Id"], entry["ProductCode"]
        row["Name"] = f"{deal['Name']} {entry['Name']}"[:376]
        row["TotalPrice"] = round(row["Quantity"] * row["UnitPrice"], 2)

    def roll_up(self, deal_id: str) -> None:
        """The opportunity's Amount: the sum of its line items, while it has any."""
        lines = self.lines_of(deal_id)
        deal = self.records["Opportunity"].get(deal_id)
        if lines and deal is not None:
            deal["Amount"] = round(sum(r["TotalPrice"] for r in lines), 2)

    def _index(self, sobject: str, row: Row) -> None:
        searchable = {
            f.name: row.get(f.name)
            for f in self.fields[sobject]
            if f.type in ("string", "email", "phone", "textarea")
        }
        self.index.setdefault(row["Id"], []).append((self.clock() + self.index_lag, searchable))

    # ---- checks -------------------------------------------------------------------

    def _checked(
        self, sobject: str, body: Any, *, creating: bool, seeded: bool, current: Row | None = None
    ) -> Row:
        if not isinstance(body, dict):
            raise sf_error(
                400, "JSON_PARSER_ERROR", "Json Deserialization failed: expected an object"
            )
        values: Row = {}
        locked = []
        for key, value in body.items():
            if key == "attributes":
                continue
            definition = self.field(sobject, key)
            allowed = definition.createable if creating else definition.updateable
            if not allowed and not seeded:
                locked.append(definition.name)
                continue
            values[definition.name] = self._value(sobject, definition, value)
        if locked:
            message = (
                f"Unable to create/update fields: {', '.join(locked)}. Please check the"
                " security settings of this field and verify that it is read/write for"
                " your profile or permission set."
            )
            raise sf_error(400, "INVALID_FIELD_FOR_INSERT_UPDATE", message, locked)
        merged = {**(current or {}), **values}
        if creating:
            missing = [
                f.name
                for f in self.fields[sobject]
                if f.required and merged.get(f.name) in (None, "")
            ]
            if missing:
                raise sf_error(
                    400,
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    missing,
                )
        if sobject == "Opportunity":
            self._check_stage(merged)
        self._check_unique(sobject, values, current)
        return values

    def _value(self, sobject: str, definition: FieldDef, value: Any) -> Any:
        name, kind = definition.name, definition.type
        if value is None:
            if definition.required:
                raise sf_error(
                    400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name]
                )
            return None
        if kind in ("currency", "double"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _json_type("double", value)
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise _json_type("boolean", value)
            return value
        if not isinstance(value, str):
            raise _json_type("String", value)
        return self._text_value(definition, value)

    def _text_value(self, definition: FieldDef, value: str) -> Any:
        """A field written as a JSON string: dates, text, e-mail, picklists, references."""
        name, kind = definition.name, definition.type
        if kind == "date":
            try:
                return date.fromisoformat(value).isoformat()
            except ValueError:
                raise _json_type("date", value) from None
        if kind == "datetime":
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise _json_type("datetime", value) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return sf_datetime(moment.timestamp())
        if definition.length and len(value) > definition.length:
            limit = definition.length
            message = f"{definition.label}: data value too large: {value[:40]} (max length={limit})"
            raise sf_error(400, "STRING_TOO_LONG", message, [name])
        if kind == "email" and value and not _EMAIL.fullmatch(value):
            raise sf_error(
                400, "INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {value}", [name]
            )
        if kind in ("picklist", "multipicklist"):
            parts = value.split(";") if kind == "multipicklist" else [value]
            bad = [part for part in parts if part not in definition.options]
            if bad:
                message = f"{definition.label}: bad value for restricted picklist field: {bad[0]}"
                raise sf_error(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", message, [name])
        if kind == "reference":
            self._check_reference(definition, value)
        return value

    def _check_reference(self, definition: FieldDef, value: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9]{15}([A-Za-z0-9]{3})?", value):
            raise sf_error(
                400,
                "MALFORMED_ID",
                f"{definition.label}: id value of incorrect type: {value}",
                [definition.name],
            )
        if definition.reference_to == ("RecordType",):
            if not any(rt.id == value for rt in self.record_types):
                message = f"Record Type ID: this ID value isn't valid for the user: {value}"
                raise sf_error(400, "INVALID_CROSS_REFERENCE_KEY", message, [definition.name])
            return
        targets = [t for t in definition.reference_to if t in self.records]
        if not any(
            value in self.records[t] and not self.records[t][value]["IsDeleted"] for t in targets
        ):
            raise sf_error(
                400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [definition.name]
            )

    def _check_stage(self, merged: Mapping[str, Any]) -> None:
        stage = merged.get("StageName")
        if stage is None:
            return
        if stage not in self.stages_of(merged.get("RecordTypeId")):
            message = f"Stage: bad value for restricted picklist field: {stage}"
            raise sf_error(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", message, ["StageName"])

    def _check_unique(self, sobject: str, values: Row, current: Row | None) -> None:
        for definition in self.fields[sobject]:
            value = values.get(definition.name)
            if not definition.unique or value in (None, ""):
                continue
            for row in self.rows(sobject):
                if (
                    row is current
                    or str(row.get(definition.name) or "").lower() != str(value).lower()
                ):
                    continue
                message = (
                    f"duplicate value found: {definition.name} duplicates value on record"
                    f" with id: {row['Id']}"
                )
                raise sf_error(400, "DUPLICATE_VALUE", message)


def _json_type(kind: str, value: Any) -> Exception:
    token = (
        "VALUE_STRING"
        if isinstance(value, str)
        else "VALUE_NUMBER_INT"
        if isinstance(value, int)
        else "VALUE"
    )
    message = (
        f"Cannot deserialize instance of {kind} from {token} value {value}"
        " or request may be missing a required field"
    )
    return sf_error(400, "JSON_PARSER_ERROR", message)
