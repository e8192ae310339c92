"""The ORM side of the fake Odoo: one database, its models, domains and methods.

Behaviour follows what a real Odoo 18.0 Community server answered
(`crm-notes/odoo18-jsonrpc-transcript.md`, cited as §N) and, where the recording has
nothing, Odoo's source as cited in place:
- records with many2one values read as `[id, display_name]`, many2many as id lists,
  empty values as `false`; ids, names and the seed data of a fresh `crm` database
  (partners 1-6, admin user 2 / partner 3, team "Sales", stages New / Qualified /
  Proposition / Won, crm.lead's ir.model id 400, the next ir.model.fields id 3827);
- domains in Polish notation (`&`, `|`, `!`), dotted paths (`stage_id.is_won`),
  `child_of`, `=`/`!=`/`<`/`>`/`in`/`not in`, `like`/`ilike`/`=like`/`=ilike` with SQL
  wildcards, archived records hidden unless `active_test` is false (§8.38);
- phone_mobile_search as the sms module computes it (§5 table, below), e-mail `=`
  case-sensitive and `=ilike` not (§8.24-8.26), email_normalized and phone_sanitized
  computed and stored (§8.8);
- writes and creates refuse unknown fields (`ValueError: Invalid field …`, §8.45), wrong
  selection keys and dangling many2one ids; x2many commands 0/1/2/3/4/5/6;
- message_post: a str body is HTML-escaped, its line breaks become <br>, and it is
  wrapped in <p> (tools.plaintext2html, §8.46); `body_is_html` keeps it (§8.47);
  lead creation and tracked changes post notifications (§8.49);
- action_set_won (is_won stage, probability 100) and action_set_lost (archived,
  probability 0, stage unchanged, None returned §6.7) writing its `**additional_values`
  afterwards (addons/crm/models/crm_lead.py `action_set_lost`); won_status computed;
- companies: res.partner with `is_company` and the built-in `vat` (the INN under the
  Russian localisation); a person's `parent_id` makes the company its commercial
  partner, and `vat`, a commercial field, is synced from the company to its people
  (odoo/addons/base/models/res_partner.py `_commercial_fields`, `_fields_sync`).

Errors are `OdooFault(name, message, http_status)`; the HTTP side (`tests.fakes.odoo`)
renders them as JSON-RPC or JSON-2 answers.
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import phonenumbers

JSON = Any
Record = dict[str, Any]


class OdooFault(Exception):
    """An exception as Odoo would raise it: qualified name, message, JSON-2 status
    (odoo/exceptions.py `http_status`; anything not a UserError answers 500)."""

    def __init__(self, name: str, message: str, http_status: int = 500) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.http_status = http_status


def user_error(message: str) -> OdooFault:
    return OdooFault("odoo.exceptions.UserError", message, 422)


def validation_error(message: str) -> OdooFault:
    return OdooFault("odoo.exceptions.ValidationError", message, 422)


def value_error(message: str) -> OdooFault:
    return OdooFault("builtins.ValueError", message, 500)


def access_denied() -> OdooFault:
    return OdooFault("odoo.exceptions.AccessDenied", "Access Denied", 403)


def missing_error(model: str, ids: Iterable[int], uid: int) -> OdooFault:
    listed = ", ".join(str(i) for i in ids)
    message = (
        f"Record does not exist or has been deleted.\n(Record: {model}({listed},), User: {uid})"
    )
    return OdooFault("odoo.exceptions.MissingError", message, 404)


# ---- fields and models ----------------------------------------------------------------


@dataclass
class FieldDef:
    name: str
    ttype: str  # char text html integer float monetary boolean date datetime selection
    # many2one many2many one2many
    string: str
    relation: str = ""
    selection: tuple[tuple[str, str], ...] = ()
    stored: bool = True
    readonly: bool = False
    state: str = "base"  # "manual": created through ir.model.fields (an x_ field)
    search: Callable[[str, JSON], set[int]] | None = None  # a non-stored searchable field
    inverse: str = ""  # one2many: the many2one on the other model
    field_id: int = 0


@dataclass
class Model:
    name: str
    description: str
    fields: dict[str, FieldDef] = field(default_factory=dict)
    rows: dict[int, Record] = field(default_factory=dict)
    ids: Iterable[int] = field(default_factory=lambda: itertools.count(1))
    model_id: int = 0
    order: str = "id"

    def next_id(self) -> int:
        return next(iter(self.ids))  # type: ignore[call-overload]

    @property
    def has_active(self) -> bool:
        return "active" in self.fields


# crm.lead's selections: its type and priority.
LEAD_TYPES = (("lead", "Lead"), ("opportunity", "Opportunity"))
PRIORITIES = (("0", "Low"), ("1", "Medium"), ("2", "High"), ("3", "Very High"))
PHONE_PATTERN = re.compile(r"[\s\\./()\-]")  # what regexp_replace strips (§5 table)
TRACKED = {"crm.lead": ("expected_revenue", "stage_id", "partner_id", "user_id", "team_id")}
SUBTYPES = {
    "mail.mt_comment": (1, "Discussions"),
    "mail.mt_note": (2, "Note"),
    "crm.mt_lead_create": (5, "Opportunity Created"),
    "crm.mt_lead_stage": (6, "Stage Changed"),
    "crm.mt_lead_won": (7, "Opportunity Won"),
    "crm.mt_lead_lost": (8, "Opportunity Lost"),
}


class OdooDb:
    """A fresh database with the `crm` module (and `sms`, unless told otherwise)."""

    def __init__(
        self,
        name: str = "crm_lab",
        *,
        clock: Callable[[], float],
        sms_installed: bool = True,
        partner_mobile: bool = True,
        won_status: bool = True,
    ) -> None:
        self.name = name
        self.clock = clock
        self.models: dict[str, Model] = {}
        self.field_ids = itertools.count(1)
        self.model_ids = itertools.count(80)
        self.uid = 2
        self.sms_installed = sms_installed
        self._build(partner_mobile, won_status)
        self._seed()

    # ---- schema ---------------------------------------------------------------------

    def _model(
        self,
        name: str,
        description: str,
        *specs: tuple[str, str, str] | tuple[str, str, str, str] | FieldDef,
        model_id: int | None = None,
    ) -> Model:
        """A model with the fields every model has, then those of `specs` (a field, or
        its name, type, label[, relation])."""
        model = Model(name, description, model_id=model_id or next(self.model_ids))
        self.models[name] = model
        self._add(model, FieldDef("id", "integer", "ID", readonly=True))
        self._add(model, FieldDef("display_name", "char", "Display Name", stored=False))
        self._add(model, FieldDef("create_date", "datetime", "Created on", readonly=True))
        self._add(model, FieldDef("write_date", "datetime", "Last Updated on", readonly=True))
        for spec in specs:
            self._add(model, spec if isinstance(spec, FieldDef) else FieldDef(*spec))
        return model

    def _add(self, model: Model, definition: FieldDef) -> FieldDef:
        definition.field_id = next(self.field_ids)
        model.fields[definition.name] = definition
        return definition

    def _build(self, partner_mobile: bool, won_status: bool) -> None:
        partner = self._model(
            "res.partner",
            "Contact",
            ("name", "char", "Name"),
            ("active", "boolean", "Active"),
            ("is_company", "boolean", "Is a Company"),
            ("phone", "char", "Phone"),
            ("email", "char", "Email"),
            ("vat", "char", "Tax ID"),
            ("country_id", "many2one", "Country", "res.country"),
            ("parent_id", "many2one", "Related Company", "res.partner"),
            ("commercial_partner_id", "many2one", "Commercial Entity", "res.partner"),
            ("email_normalized", "char", "Normalized Email"),
            model_id=85,
        )
        partner.order = "name, id desc"  # res.partner _order: complete_name ASC, id DESC
        if partner_mobile:
            self._add(partner, FieldDef("mobile", "char", "Mobile"))
        self._add(
            partner,
            FieldDef("child_ids", "one2many", "Contact", "res.partner", inverse="parent_id"),
        )
        self._add(
            partner,
            FieldDef(
                "opportunity_ids", "one2many", "Opportunities", "crm.lead", inverse="partner_id"
            ),
        )
        if self.sms_installed:
            self._add_phone_mixin(partner)
        self._model(
            "res.users",
            "User",
            ("name", "char", "Name"),
            ("login", "char", "Login"),
            ("active", "boolean", "Active"),
            ("partner_id", "many2one", "Related Partner", "res.partner"),
        )
        self._model("res.currency", "Currency", ("name", "char", "Currency"))
        self._model("res.country", "Country", ("name", "char", "Country Name"))
        self._model(
            "crm.team",
            "Sales Team",
            ("name", "char", "Sales Team"),
            ("active", "boolean", "Active"),
            ("sequence", "integer", "Sequence"),
        )
        stage = self._model(
            "crm.stage",
            "CRM Stages",
            ("name", "char", "Stage Name"),
            ("sequence", "integer", "Sequence"),
            ("is_won", "boolean", "Is Won Stage?"),
            ("fold", "boolean", "Folded in Pipeline"),
            ("team_id", "many2one", "Sales Team", "crm.team"),
        )
        stage.order = "sequence, id"
        self._model("crm.tag", "CRM Tag", ("name", "char", "Tag Name"))
        self._model("crm.lost.reason", "Opp. Lost Reason", ("name", "char", "Description"))
        lead = self._model(
            "crm.lead",
            "Lead/Opportunity",
            ("name", "char", "Opportunity"),
            ("active", "boolean", "Active"),
            ("partner_id", "many2one", "Customer", "res.partner"),
            ("team_id", "many2one", "Sales Team", "crm.team"),
            ("stage_id", "many2one", "Stage", "crm.stage"),
            ("user_id", "many2one", "Salesperson", "res.users"),
            ("company_currency", "many2one", "Currency", "res.currency"),
            ("expected_revenue", "monetary", "Expected Revenue"),
            ("probability", "float", "Probability"),
            ("email_from", "char", "Email"),
            ("phone", "char", "Phone"),
            ("description", "html", "Notes"),
            ("date_deadline", "date", "Expected Closing"),
            ("tag_ids", "many2many", "Tags", "crm.tag"),
            ("lost_reason_id", "many2one", "Lost Reason", "crm.lost.reason"),
            FieldDef("type", "selection", "Type", selection=LEAD_TYPES),
            FieldDef("priority", "selection", "Priority", selection=PRIORITIES),
            model_id=400,
        )
        lead.order = "priority desc, id desc"  # crm.lead _order
        if won_status:
            states = (("won", "Won"), ("lost", "Lost"), ("pending", "Pending"))
            self._add(
                lead, FieldDef("won_status", "selection", "Is Won", selection=states, readonly=True)
            )
        self._add_phone_mixin(lead)  # crm.lead has it without sms (§6.4)
        message = self._model(
            "mail.message",
            "Message",
            ("body", "html", "Contents"),
            ("preview", "char", "Preview"),
            ("message_type", "char", "Type"),
            ("subtype_id", "many2one", "Subtype", "mail.message.subtype"),
            ("is_internal", "boolean", "Employee Only"),
            ("author_id", "many2one", "Author", "res.partner"),
            ("model", "char", "Related Document Model"),
            ("res_id", "integer", "Related Document ID"),
            ("date", "datetime", "Date"),
        )
        message.order = "id desc"
        self._model("mail.message.subtype", "Message subtypes", ("name", "char", "Message Type"))
        self._model(
            "ir.model", "Models", ("model", "char", "Model"), ("name", "char", "Model Description")
        )
        self._model(
            "ir.model.fields",
            "Fields",
            ("name", "char", "Field Name"),
            ("model", "char", "Model Name"),
            ("model_id", "many2one", "Model", "ir.model"),
            ("field_description", "char", "Field Label"),
            ("ttype", "char", "Field Type"),
            ("relation", "char", "Related Model"),
            ("state", "char", "Type"),
            ("index", "boolean", "Indexed"),
            ("copied", "boolean", "Copied"),
            FieldDef(
                "selection_ids",
                "one2many",
                "Selection Options",
                "ir.model.fields.selection",
                inverse="field_id",
            ),
        )
        selection = self._model(
            "ir.model.fields.selection",
            "Fields Selection",
            ("field_id", "many2one", "Field", "ir.model.fields"),
            ("value", "char", "Value"),
            ("name", "char", "Name"),
            ("sequence", "integer", "Sequence"),
        )
        selection.order = "sequence, id"
        self._reflect()

    def _add_phone_mixin(self, model: Model) -> None:
        self._add(model, FieldDef("phone_sanitized", "char", "Sanitized Number", readonly=True))
        self._add(
            model,
            FieldDef(
                "phone_mobile_search",
                "char",
                "Phone/Mobile",
                stored=False,
                search=lambda op, value, m=model.name: self._phone_search(m, op, value),
            ),
        )

    def _reflect(self) -> None:
        """ir.model and ir.model.fields rows mirror the registry, as Odoo reflects it."""
        ir_model, ir_fields = self.models["ir.model"], self.models["ir.model.fields"]
        for model in list(self.models.values()):
            ir_model.rows[model.model_id] = {
                "id": model.model_id,
                "model": model.name,
                "name": model.description,
            }
            for definition in model.fields.values():
                self._reflect_field(model, definition)
        ir_model.ids = itertools.count(max(ir_model.rows) + 1)
        ir_fields.ids = itertools.count(3827)  # the next id in the recorded database (§8.41)

    def _reflect_field(self, model: Model, definition: FieldDef) -> None:
        self.models["ir.model.fields"].rows[definition.field_id] = {
            "id": definition.field_id,
            "name": definition.name,
            "model": model.name,
            "model_id": model.model_id,
            "field_description": definition.string,
            "ttype": definition.ttype,
            "relation": definition.relation or False,
            "state": definition.state,
            "index": False,
            "copied": False,
        }
        selection = self.models.get("ir.model.fields.selection")
        if selection is None:
            return
        for sequence, (value, label) in enumerate(definition.selection):
            option_id = len(selection.rows) + 1
            selection.rows[option_id] = {
                "id": option_id,
                "field_id": definition.field_id,
                "value": value,
                "name": label,
                "sequence": sequence,
            }
        selection.ids = itertools.count(len(selection.rows) + 1)

    def _seed(self) -> None:
        now = self.now()
        partners = self.models["res.partner"]
        for pid, name, active, company in (
            (1, "YourCompany", True, True),
            (2, "OdooBot", False, False),
            (3, "Administrator", True, False),
            (4, "Public user", False, False),
            (5, "Default User Template", False, False),
            (6, "Portal User Template", False, False),
        ):
            partners.rows[pid] = self._defaults(partners) | {
                "id": pid,
                "name": name,
                "active": active,
                "is_company": company,
                "commercial_partner_id": pid,
                "create_date": now,
                "write_date": now,
            }
        partners.ids = itertools.count(7)
        users = self.models["res.users"]
        for uid, name, login, active, partner_id in (
            (1, "OdooBot", "__system__", False, 2),
            (2, "Administrator", "admin", True, 3),
        ):
            users.rows[uid] = {
                "id": uid,
                "name": name,
                "login": login,
                "active": active,
                "partner_id": partner_id,
            }
        users.ids = itertools.count(3)
        self._insert("res.currency", {"name": "USD"})
        self._insert("crm.team", {"name": "Sales", "active": True, "sequence": 10})
        for name, sequence, won in (
            ("New", 1, False),
            ("Qualified", 2, False),
            ("Proposition", 3, False),
            ("Won", 70, True),
        ):
            self._insert(
                "crm.stage",
                {
                    "name": name,
                    "sequence": sequence,
                    "is_won": won,
                    "fold": False,
                    "team_id": False,
                },
            )
        for reason in ("Too expensive", "We don't have people/skills", "Not enough stock"):
            self._insert("crm.lost.reason", {"name": reason})
        for xmlid, (subtype_id, name) in SUBTYPES.items():
            del xmlid
            self.models["mail.message.subtype"].rows[subtype_id] = {"id": subtype_id, "name": name}
        self.models["mail.message"].ids = itertools.count(9)  # §8.49: the first lead's is 9

    def _defaults(self, model: Model) -> Record:
        values: Record = {}
        for definition in model.fields.values():
            if not definition.stored or definition.ttype == "one2many":
                continue
            if definition.ttype == "many2many":
                values[definition.name] = []
            elif definition.name == "active":
                values[definition.name] = True
            else:
                values[definition.name] = False
        return values

    def _insert(self, model_name: str, values: Record) -> int:
        """Setup: a row as stored, with no checks and no side effects."""
        model = self.models[model_name]
        record_id = model.next_id()
        now = self.now()
        model.rows[record_id] = (
            self._defaults(model)
            | values
            | {
                "id": record_id,
                "create_date": now,
                "write_date": now,
            }
        )
        return record_id

    def now(self) -> str:
        return odoo_time(self.clock())

    # ---- manual (x_) fields -----------------------------------------------------------

    def add_field(
        self,
        model_name: str,
        name: str,
        ttype: str,
        *,
        string: str = "",
        relation: str = "",
        selection: Sequence[tuple[str, str]] = (),
    ) -> int:
        """A custom field, as Studio or ir.model.fields.create makes it (§8.41)."""
        if not name.startswith("x_"):
            raise validation_error("Custom fields must have a name that starts with 'x_' !")
        model = self.models[model_name]
        if name in model.fields:
            raise validation_error(f"Field names must be unique per model. ({name})")
        if ttype in ("many2one", "many2many") and relation not in self.models:
            raise user_error(f"Model {relation!r} does not exist")
        field_id = next(iter(self.models["ir.model.fields"].ids))  # type: ignore[call-overload]
        definition = FieldDef(
            name,
            ttype,
            string or name,
            relation,
            tuple(selection),
            state="manual",
            field_id=field_id,
        )
        model.fields[name] = definition
        self._reflect_field(model, definition)
        empty: JSON = [] if ttype == "many2many" else False
        for row in model.rows.values():
            row.setdefault(name, empty)
        return field_id

    # ---- reading ----------------------------------------------------------------------

    def model(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise user_error(f"Object {name} doesn't exist")
        return model

    def display_name(self, model_name: str, record_id: int) -> str:
        row = self.models[model_name].rows.get(record_id, {})
        if model_name == "ir.model.fields":
            return str(row.get("field_description") or "")
        return str(row.get("name") or "")

    def value(self, model: Model, row: Record, name: str) -> JSON:
        """One field as read() answers it."""
        definition = model.fields[name]
        if name == "display_name":
            return self.display_name(model.name, row["id"])
        if definition.ttype == "one2many":
            other = self.models[definition.relation]
            return sorted(
                i for i, r in other.rows.items() if r.get(definition.inverse) == row["id"]
            )
        if name == "won_status":
            return self._won_status(row)
        if not definition.stored:
            return False
        raw = row.get(name, False)
        if definition.ttype == "many2one":
            if not raw:
                return False
            return [raw, self.display_name(definition.relation, raw)]
        if definition.ttype == "many2many":
            return list(raw or [])
        return raw

    def read_rows(
        self, model: Model, ids: Sequence[int], fields: Sequence[str] | None
    ) -> list[Record]:
        names = (
            list(fields)
            if fields
            else [f.name for f in model.fields.values() if f.stored and f.name != "id"]
        )
        for name in names:
            if name not in model.fields:
                raise value_error(f"Invalid field {name!r} on model {model.name!r}")
        missing = [i for i in ids if i not in model.rows]
        if missing:
            raise missing_error(model.name, missing, self.uid)
        answer: list[Record] = []
        for record_id in ids:
            row = model.rows[record_id]
            out: Record = {"id": record_id}
            for name in names:
                if name != "id":
                    out[name] = self.value(model, row, name)
            answer.append(out)
        return answer

    def _won_status(self, row: Record) -> str:
        stage = self.models["crm.stage"].rows.get(row.get("stage_id") or 0, {})
        if row.get("probability") == 100 and stage.get("is_won"):
            return "won"
        if not row.get("active") and row.get("probability") == 0:
            return "lost"
        return "pending"

    # ---- searching --------------------------------------------------------------------

    def search(
        self,
        model: Model,
        domain: Sequence[JSON],
        *,
        context: Mapping[str, JSON] | None = None,
        order: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[int]:
        if not isinstance(domain, list):
            raise value_error(f"Invalid domain: {domain!r}")
        active_test = (context or {}).get("active_test", True) is not False
        mentions_active = any(isinstance(t, list) and t and t[0] == "active" for t in domain)
        tree = _parse(domain)
        matched = [
            row["id"]
            for row in model.rows.values()
            if (not active_test or not model.has_active or mentions_active or row.get("active"))
            and self._matches(model, tree, row)
        ]
        ordered = self._ordered(model, matched, order or model.order)
        end = None if limit is None else offset + limit
        return ordered[offset:end]

    def _ordered(self, model: Model, ids: list[int], order: str) -> list[int]:
        keys = [part.split() for part in order.split(",") if part.strip()]
        result = list(ids)
        for parts in reversed(keys):
            name = parts[0]
            if name not in model.fields:
                raise value_error(f"Invalid field {name!r} on model {model.name!r}")
            descending = len(parts) > 1 and parts[1].lower() == "desc"
            result.sort(key=lambda i, n=name: _sort_key(model.rows[i].get(n)), reverse=descending)
        return result

    def _matches(self, model: Model, node: JSON, row: Record) -> bool:
        kind = node[0]
        if kind == "&":
            return all(self._matches(model, child, row) for child in node[1])
        if kind == "|":
            return any(self._matches(model, child, row) for child in node[1])
        if kind == "!":
            return not self._matches(model, node[1], row)
        return self._leaf(model, node[1], row)

    def _leaf(self, model: Model, leaf: Sequence[JSON], row: Record) -> bool:
        path, operator, value = leaf
        if not isinstance(path, str):
            raise value_error(f"Invalid leaf {list(leaf)!r}")
        head, _, rest = path.partition(".")
        definition = model.fields.get(head)
        if definition is None:
            raise value_error(f"Invalid field {model.name}.{head} in leaf {tuple(leaf)!r}")
        if rest:
            if definition.ttype != "many2one":
                raise value_error(f"Invalid path {path!r} in leaf {tuple(leaf)!r}")
            target = self.models[definition.relation]
            linked = target.rows.get(row.get(head) or 0)
            return linked is not None and self._leaf(target, [rest, operator, value], linked)
        if definition.search is not None:
            return row["id"] in definition.search(operator, value)
        if operator == "child_of":
            wanted = set(value if isinstance(value, list) else [value])
            tree = self._descendants(definition.relation or model.name, wanted)
            current = row["id"] if head == "id" else row.get(head)
            return current in tree
        current = row.get(head, False)
        if definition.ttype == "many2many":
            items = current or []
            if operator in ("in", "="):
                wanted = set(value if isinstance(value, list) else [value])
                return bool(wanted & set(items)) if value is not False else not items
            raise value_error(f"Unsupported operator {operator!r} on many2many {path!r}")
        return _compare(current, operator, value, path)

    def _descendants(self, model_name: str, roots: set[int]) -> set[int]:
        model = self.models[model_name]
        found = set(roots)
        changed = True
        while changed:
            changed = False
            for record_id, row in model.rows.items():
                if record_id not in found and row.get("parent_id") in found:
                    found.add(record_id)
                    changed = True
        return found

    def _phone_search(self, model_name: str, operator: str, value: JSON) -> set[int]:
        """mail.thread.phone `_search_phone_mobile_search` (§5 table): phone and mobile
        stripped of spaces . / \\ ( ) -; a `+` or `00` prefixed term matches either
        prefix (`=`: the whole number, `ilike`: a number starting with it); any other
        term: `=` exact, `ilike` anywhere. Fewer than 3 characters is a UserError."""
        if not isinstance(value, str):
            raise value_error(f"Invalid value {value!r} for phone_mobile_search")
        if len(value) < 3:
            raise user_error(
                "Please enter at least 3 characters when searching a Phone/Mobile number."
            )
        model = self.models[model_name]
        columns = [name for name in ("phone", "mobile") if name in model.fields]
        like = operator not in ("=", "!=")
        if value.startswith(("+", "00")):
            term = PHONE_PATTERN.sub("", value[1 if value.startswith("+") else 2 :])
            candidates = ["00" + term, "+" + term]
        else:
            candidates = [PHONE_PATTERN.sub("", value)]
        prefixed = value.startswith(("+", "00"))
        found: set[int] = set()
        for record_id, row in model.rows.items():
            for column in columns:
                stored = row.get(column)
                if not stored:
                    continue
                stripped = PHONE_PATTERN.sub("", str(stored))
                for candidate in candidates:
                    if not like:
                        hit = stripped == candidate
                    elif prefixed:
                        hit = stripped.startswith(candidate)
                    else:
                        hit = candidate in stripped
                    if hit:
                        found.add(record_id)
        if operator in ("!=", "not ilike", "not like"):
            return set(model.rows) - found
        return found

    # ---- writing ----------------------------------------------------------------------

    def create(self, model: Model, values: Mapping[str, JSON]) -> int:
        if not isinstance(values, dict):
            raise value_error("create() expects a dict or a list of dicts")
        clean = self._checked(model, values)
        record_id = model.next_id()
        now = self.now()
        row = self._defaults(model) | {"id": record_id, "create_date": now, "write_date": now}
        commands = {
            k: v for k, v in clean.items() if model.fields[k].ttype in ("many2many", "one2many")
        }
        row.update({k: v for k, v in clean.items() if k not in commands})
        model.rows[record_id] = row
        try:
            for name, value in commands.items():
                self._x2many(model, row, name, value)
        except OdooFault:
            del model.rows[record_id]  # the call's transaction rolls back: nothing created
            raise
        self._computed_on_create(model, row)
        return record_id

    def write(self, model: Model, ids: Sequence[int], values: Mapping[str, JSON]) -> None:
        if not isinstance(values, dict):
            raise value_error("write() expects a dict of values")
        clean = self._checked(model, values)
        missing = [i for i in ids if i not in model.rows]
        if missing:
            raise missing_error(model.name, missing, self.uid)
        for record_id in ids:
            row = model.rows[record_id]
            before = dict(row)
            try:
                for name, value in clean.items():
                    if model.fields[name].ttype in ("many2many", "one2many"):
                        self._x2many(model, row, name, value)
                    else:
                        row[name] = value
            except OdooFault:
                # Each call is one transaction in Odoo: a refused value (an unknown tag)
                # rolls back the values written before it in the same call.
                row.clear()
                row.update(before)
                raise
            row["write_date"] = self.now()
            self._computed_on_write(model, row)
            self._track(model, before, row)

    def _checked(self, model: Model, values: Mapping[str, JSON]) -> Record:
        clean: Record = {}
        for name, value in values.items():
            definition = model.fields.get(name)
            if definition is None:
                raise value_error(f"Invalid field {name!r} on model {model.name!r}")
            if definition.ttype == "selection" and value is not False:
                keys = {key for key, _ in definition.selection}
                if value not in keys:
                    raise value_error(f"Wrong value for {model.name}.{name}: {value!r}")
            if definition.ttype == "many2one" and value:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise value_error(f"Wrong value for {model.name}.{name}: {value!r}")
                if value not in self.models[definition.relation].rows:
                    # IntegrityError, turned into a ValidationError by
                    # odoo/service/model.py retrying() → _as_validation_error.
                    raise validation_error(
                        "The operation cannot be completed: another model requires the"
                        f" record being deleted. If possible, archive it instead.\n\nModel:"
                        f" {model.description} ({model.name}), Field: {definition.string} ({name})"
                    )
            numeric = definition.ttype in ("integer", "float", "monetary")
            if numeric and value is not False and not _is_number(value):
                raise value_error(f"Wrong value for {model.name}.{name}: {value!r}")
            if definition.ttype in ("many2many", "one2many") and not isinstance(value, list):
                raise value_error(f"Wrong value for {model.name}.{name}: {value!r}")
            clean[name] = value
        return clean

    def _x2many(self, model: Model, row: Record, name: str, commands: Sequence[JSON]) -> None:
        """Command tuples [odoo/fields.py Command]: 0 create, 1 update, 2 delete, 3 unlink,
        4 link, 5 clear, 6 set; a bare list of ids is refused as in recent Odoo."""
        definition = model.fields[name]
        other = self.models[definition.relation]
        if definition.ttype == "one2many":
            for command in commands:
                if isinstance(command, list) and command and command[0] == 0:
                    self.create(other, {**command[2], definition.inverse: row["id"]})
                else:
                    raise value_error(f"Unsupported one2many command {command!r}")
            return
        current: list[int] = list(row.get(name) or [])
        for command in commands:
            if not isinstance(command, list) or not command or not isinstance(command[0], int):
                raise value_error(f"Wrong value for {model.name}.{name}: {commands!r}")
            code = command[0]
            if code == 0:
                current.append(self.create(other, command[2]))
            elif code == 4:
                if command[1] not in other.rows:
                    raise missing_error(other.name, [command[1]], self.uid)
                if command[1] not in current:
                    current.append(command[1])
            elif code == 3:
                current = [i for i in current if i != command[1]]
            elif code == 5:
                current = []
            elif code == 6:
                ids = list(command[2])
                dangling = [i for i in ids if i not in other.rows]
                if dangling:
                    raise missing_error(other.name, dangling, self.uid)
                current = list(dict.fromkeys(ids))
            else:
                raise value_error(f"Unsupported command {command!r} for {model.name}.{name}")
        row[name] = current

    def _computed_on_create(self, model: Model, row: Record) -> None:
        if model.name == "res.partner":
            self._partner_computed(row)
        elif model.name == "crm.lead":
            self._lead_defaults(row)
            self.post(
                model.name, row["id"], "crm.mt_lead_create", "notification", self._created_text(row)
            )

    def _computed_on_write(self, model: Model, row: Record) -> None:
        if model.name == "res.partner":
            self._partner_computed(row)
            self._sync_children(row)

    def _sync_children(self, row: Record) -> None:
        """A company's commercial fields (`vat` here) written down to its people."""
        if not row.get("is_company"):
            return
        for child in self.models["res.partner"].rows.values():
            if child.get("parent_id") == row["id"]:
                child["vat"] = row.get("vat") or False

    def _partner_computed(self, row: Record) -> None:
        email = row.get("email")
        row["email_normalized"] = str(email).strip().lower() if email else False
        if self.sms_installed:
            row["phone_sanitized"] = _sanitized(row.get("phone")) or _sanitized(row.get("mobile"))
        parent = row.get("parent_id")
        if parent and not row.get("is_company"):
            row["vat"] = self.models["res.partner"].rows[parent].get("vat") or False
        row["commercial_partner_id"] = (
            row["id"]
            if row.get("is_company") or not parent
            else self.models["res.partner"].rows[parent].get("commercial_partner_id") or parent
        )

    def _lead_defaults(self, row: Record) -> None:
        if not row.get("type"):
            row["type"] = "lead"
        if not row.get("team_id"):
            row["team_id"] = min(self.models["crm.team"].rows)
        if not row.get("stage_id"):
            stages = self.search(self.models["crm.stage"], [["is_won", "=", False]])
            row["stage_id"] = stages[0] if stages else False
        if not row.get("user_id"):
            row["user_id"] = self.uid
        row["company_currency"] = 1
        if not row.get("probability"):
            row["probability"] = 0.0  # predictive scoring without history (§5)
        partner = self.models["res.partner"].rows.get(row.get("partner_id") or 0)
        if partner is not None:
            row["email_from"] = row.get("email_from") or partner.get("email") or False
            row["phone"] = row.get("phone") or partner.get("phone") or False
        row["phone_sanitized"] = _sanitized(row.get("phone"))

    def _created_text(self, row: Record) -> str:
        team = self.display_name("crm.team", row.get("team_id") or 0)
        return f'A new lead has been created for the team "{team}".'

    def _track(self, model: Model, before: Record, after: Record) -> None:
        changed = [n for n in TRACKED.get(model.name, ()) if before.get(n) != after.get(n)]
        if changed:
            self.post(model.name, after["id"], "mail.mt_note", "notification", "", tracking=True)

    # ---- actions ----------------------------------------------------------------------

    def set_won(self, ids: Sequence[int]) -> bool:
        leads = self.models["crm.lead"]
        won = self.search(self.models["crm.stage"], [["is_won", "=", True]])
        for record_id in ids:
            row = leads.rows[record_id]
            if won:
                row["stage_id"] = won[0]
            row["probability"] = 100.0
            row["write_date"] = self.now()
            self.post("crm.lead", record_id, "crm.mt_lead_won", "notification", "")
        return True

    def set_lost(self, ids: Sequence[int], additional: Mapping[str, JSON] | None = None) -> None:
        """action_archive (toggle_active: probability 0), then `write(additional)`."""
        leads = self.models["crm.lead"]
        missing = [i for i in ids if i not in leads.rows]
        if missing:
            raise missing_error("crm.lead", missing, self.uid)
        clean = self._checked(leads, dict(additional or {}))
        for record_id in ids:
            row = leads.rows[record_id]
            row["active"] = False
            row["probability"] = 0.0
            row["write_date"] = self.now()
            self.post("crm.lead", record_id, "crm.mt_lead_lost", "notification", "")
        if clean:
            self.write(leads, ids, clean)

    def post(
        self,
        model_name: str,
        res_id: int,
        subtype_xmlid: str | None,
        message_type: str,
        body: str,
        *,
        tracking: bool = False,
        preview: str | None = None,
    ) -> int:
        subtype = SUBTYPES.get(subtype_xmlid or "mail.mt_note", SUBTYPES["mail.mt_note"])
        return self._insert(
            "mail.message",
            {
                "body": body,
                "preview": preview
                if preview is not None
                else html.unescape(re.sub(r"<[^>]+>", "", body)),
                "message_type": message_type,
                "subtype_id": subtype[0],
                "is_internal": False,  # internal-ness is the subtype's (§6.9)
                "author_id": 3,
                "model": model_name,
                "res_id": res_id,
                "date": self.now(),
                "tracking": tracking,
            },
        )

    def message_post(self, model: Model, ids: Sequence[int], kwargs: Mapping[str, JSON]) -> int:
        """mail.thread.message_post (keyword-only parameters, §6.9)."""
        allowed = {
            "body",
            "subject",
            "message_type",
            "subtype_xmlid",
            "subtype_id",
            "partner_ids",
            "body_is_html",
            "attachments",
            "attachment_ids",
            "author_id",
            "email_from",
            "parent_id",
        }
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise OdooFault(
                "builtins.TypeError",
                f"MailThread.message_post() got an unexpected keyword argument {unknown[0]!r}",
                500,
            )
        if len(ids) != 1:
            raise value_error(f"Expected singleton: {model.name}({', '.join(map(str, ids))},)")
        if ids[0] not in model.rows:
            raise missing_error(model.name, ids, self.uid)
        body = kwargs.get("body", "") or ""
        if not isinstance(body, str):
            raise value_error("message_post body must be a string")
        if kwargs.get("body_is_html"):
            stored, preview = body, html.unescape(re.sub(r"<[^>]+>", "", body))
        else:
            stored, preview = plaintext2html(body), body
        subtype = kwargs.get("subtype_xmlid")
        if subtype is not None and subtype not in SUBTYPES:
            raise value_error(f"External ID not found in the system: {subtype}")
        return self.post(
            model.name,
            ids[0],
            subtype or "mail.mt_note",
            str(kwargs.get("message_type") or "notification"),
            stored,
            preview=preview,
        )


# ---- helpers --------------------------------------------------------------------------


def odoo_time(moment: float) -> str:
    """A datetime as Odoo stores and reads it: UTC, `YYYY-MM-DD HH:MM:SS`."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def plaintext2html(text: str) -> str:
    """odoo.tools.mail.plaintext2html: escape, newlines as <br/>, two or more breaks
    start a new paragraph, all inside <p>."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"\r\n|\r|\n", "<br/>", escaped)
    escaped = re.sub(r"(<br/>\s*){2,}", "</p><p>", escaped)
    return f"<p>{escaped}</p>"


def _sanitized(value: JSON) -> str | bool:
    """phone_sanitized: E.164 when the number parses without a country (a `+` prefix);
    a national number with no country on the partner or company is false (§8.21)."""
    if not value:
        return False
    try:
        number = phonenumbers.parse(str(value), None)
    except phonenumbers.NumberParseException:
        return False
    if not phonenumbers.is_possible_number(number):
        return False
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _parse(domain: Sequence[JSON]) -> JSON:
    """A domain list as a tree: ("&", [...]), ("|", [...]), ("!", node), ("leaf", leaf);
    terms without an operator between them are ANDed."""
    position = 0

    def node() -> JSON:
        nonlocal position
        if position >= len(domain):
            raise value_error(f"Invalid domain {list(domain)!r}")
        term = domain[position]
        position += 1
        if term in ("&", "|"):
            return (term, [node(), node()])
        if term == "!":
            return ("!", node())
        if isinstance(term, list | tuple) and len(term) == 3:
            return ("leaf", list(term))
        raise value_error(f"Invalid domain term {term!r}")

    parts = []
    while position < len(domain):
        parts.append(node())
    return ("&", parts)


def _like(pattern: str, value: str, *, insensitive: bool) -> bool:
    regex = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            regex += re.escape(pattern[index + 1])
            index += 2
            continue
        regex += ".*" if char == "%" else "." if char == "_" else re.escape(char)
        index += 1
    flags = re.IGNORECASE | re.DOTALL if insensitive else re.DOTALL
    return re.fullmatch(regex, value, flags) is not None


def _compare(current: JSON, operator: str, value: JSON, path: str) -> bool:
    if operator in ("=", "=="):
        if value is False or value is None:
            return _empty(current)
        return current == value and not (_empty(current) and not _empty(value))
    if operator in ("!=", "<>"):
        if value is False or value is None:
            return not _empty(current)
        return current != value
    if operator in ("in", "not in"):
        if not isinstance(value, list):
            raise value_error(f"Invalid value for operator {operator!r} in {path!r}")
        inside = any(item is not False and item == current for item in value) or (
            _empty(current) and any(item is False for item in value)
        )
        return inside if operator == "in" else not inside
    if operator in ("like", "ilike", "not like", "not ilike", "=like", "=ilike"):
        if _empty(current):
            return operator.startswith("not")
        pattern = str(value) if operator.startswith("=") else f"%{value}%"
        hit = _like(pattern, str(current), insensitive="ilike" in operator)
        return not hit if operator.startswith("not") else hit
    if operator in ("<", ">", "<=", ">="):
        if _empty(current):
            return False
        return {
            "<": current < value,
            ">": current > value,
            "<=": current <= value,
            ">=": current >= value,
        }[operator]
    raise value_error(f"Invalid operator {operator!r} in leaf ({path!r}, {operator!r}, {value!r})")


def _is_number(value: JSON) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _empty(value: JSON) -> bool:
    """False / NULL (and an empty text, as Odoo stores none): never 0 or 0.0."""
    return value is None or value is False or (value == "" and isinstance(value, str))


def _sort_key(value: JSON) -> tuple[int, Any]:
    if _empty(value):
        return (0, 0)
    return (1, value)
