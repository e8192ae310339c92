"""The data of the fake HubSpot portal and what its object endpoints do with it.

`Portal` holds contacts, deals, notes, companies and line items with their associations,
and answers the object operations of `/crm/objects/2026-09/{type}` as JSON (or raises
`ApiError` with HubSpot's error body): create (associations in the same request), read by
id (with `associations=`; archived records are not among them), partial update, archive,
batch read, create, update and archive, search, the default association of two records
(`PUT …/{type}/{id}/associations/default/{type}/{id}`, idempotent) and the associations
batch read (`POST /crm/associations/2026-09/{from}/{to}/batch/read`). It does no HTTP and no
locking: `tests.fakes.hubspot.FakeHubSpot` does both around it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bridge.settings import CrmConfig
from tests.fakes.hubspot_account import (
    PIPELINES,
    PipelineDef,
    Problems,
    hs_error,
    invalid,
    iso_ms,
    parse_properties,
    seed_properties,
)
from tests.fakes.hubspot_search import Item, run_search
from tests.fakes.service import ApiError, JSONDict

KINDS = ("contacts", "deals", "notes", "companies", "line_items")
SINGULAR = {
    "contacts": "contact",
    "deals": "deal",
    "notes": "note",
    "companies": "company",
    "line_items": "line_item",
}
# (from, to) → the HUBSPOT_DEFINED association type id creation accepts: contact → primary
# company 1, deal → primary company 5, line item → deal 20
# [developers.hubspot.com/docs/api/crm/associations "HubSpot defined association types"].
ASSOCIATION_TYPES = {
    ("deals", "contacts"): 3,
    ("notes", "deals"): 214,
    ("notes", "contacts"): 202,
    ("contacts", "companies"): 1,
    ("deals", "companies"): 5,
    ("line_items", "deals"): 20,
}
# Pairs the default association may link (either way round).
DEFAULT_PAIRS = {frozenset(pair) for pair in ASSOCIATION_TYPES}
# (from, to) → the HUBSPOT_DEFINED type an associations batch read answers the other way
# round: a contact's deals are "contact to deal", type 4 (the links are the same records)
# [linuxbeast.com/blog/how-to-use-hubspot-v4-associations-api-in-python, the type table;
# developers.hubspot.com/docs/api-reference/latest/crm/associations/associate-records/
# batch/get-associations: `to[].associationTypes[].typeId`, paged per input by `after`].
READ_TYPES = {**ASSOCIATION_TYPES, ("contacts", "deals"): 4}
DEFAULT_PROPERTIES = {
    "contacts": ["firstname", "lastname", "email"],
    "deals": ["dealname", "amount", "dealstage", "pipeline"],
    "notes": ["hs_timestamp"],
    "companies": ["name", "domain"],
    "line_items": ["name", "quantity", "price"],
}
MAX_BATCH = 100
# Inputs of one associations batch read (HubSpot's v4 limit), and links a page answers.
MAX_ASSOCIATION_INPUTS = 1000
ASSOCIATION_PAGE = 500


@dataclass
class Rec:
    id: str
    kind: str
    props: dict[str, str | None]
    created_ms: int
    updated_ms: int
    visible_ms: int  # in search results from then on
    archived: bool = False
    links: dict[str, set[str]] = field(default_factory=dict)


class Portal:
    def __init__(
        self,
        config: CrmConfig,
        clock: Callable[[], float],
        index_lag: float = 0.0,
        phone_region: str = "RU",
    ) -> None:
        self.clock = clock
        self.index_lag = index_lag  # seconds before a record written via the API is searchable
        self.phone_region = phone_region
        self.pipelines: dict[str, PipelineDef] = {p.id: p for p in PIPELINES}
        self.properties = seed_properties(config)
        self.records: dict[str, dict[str, Rec]] = {kind: {} for kind in KINDS}
        self._ids = itertools.count(40_100_000_001)

    # ---- operations -----------------------------------------------------------------

    def create(self, kind: str, body: JSONDict) -> JSONDict:
        values, links = self._checked_create(kind, body)
        return self._created(kind, values, links)

    def _checked_create(self, kind: str, body: Any) -> tuple[dict[str, str | None], list[Rec]]:
        if not isinstance(body, dict):
            raise invalid("Invalid input JSON: expected an object")
        problems = Problems()
        values = parse_properties(self.properties[kind], body.get("properties"), problems)
        problems.check()
        values = {name: value for name, value in values.items() if value is not None}
        links = self._associations(kind, body.get("associations") or [])
        self._check_create(kind, values)
        return values, links

    def _created(self, kind: str, values: dict[str, str | None], links: list[Rec]) -> JSONDict:
        rec = self.store(kind, values, indexed_later=True)
        for other in links:
            self.link(rec, other)
        return self.render(rec, list(values))

    def batch_create(self, kind: str, body: JSONDict) -> tuple[int, JSONDict]:
        """Every input checked before any is created: one invalid input fails the batch
        and creates nothing (what the bridge relies on: a 400 leaves nothing to undo) —
        unless every input carries an `objectWriteTraceId`: then the valid ones are created
        and the refused ones answered in a 207's `errors`, each naming its trace id, and
        each result carries its input's [developers.hubspot.com/docs/api-reference/
        error-handling "Multi-status errors"; .../latest/crm/activities/notes/batch/
        create-notes]. A refused input's error is the one it would get alone (a 409
        CONFLICT for an existing e-mail, a 400's VALIDATION_ERROR)."""
        inputs = _inputs(body)
        traces = [
            entry.get("objectWriteTraceId") if isinstance(entry, dict) else None for entry in inputs
        ]
        if not all(isinstance(trace, str) and trace for trace in traces):
            checked = [self._checked_create(kind, entry) for entry in inputs]
            results = [self._created(kind, values, links) for values, links in checked]
            return 201, {"status": "COMPLETE", "results": results}
        if len(set(traces)) != len(traces):
            raise invalid("objectWriteTraceId values must be unique")
        results, errors = [], []
        for entry, trace in zip(inputs, traces, strict=True):
            try:
                values, links = self._checked_create(kind, entry)
            except ApiError as refused:
                body = refused.response.body if isinstance(refused.response.body, dict) else {}
                error = {key: body.get(key) for key in ("status", "category", "message")}
                errors.append({**error, "context": {"objectWriteTraceId": [trace]}})
                continue
            results.append({**self._created(kind, values, links), "objectWriteTraceId": trace})
        return _multi(results, errors, ok=201)

    def batch_update(self, kind: str, body: JSONDict) -> tuple[int, JSONDict]:
        """Every input's values checked before any is applied: one invalid value refuses
        the whole batch (400, nothing applied), as do two inputs for one record. An id that
        does not exist (or is archived) is skipped: left out of the results, with nothing
        in `errors`, and the answer a 207 (what HubSpot's community saw for unknown ids
        [eshopman-com.pages.dev/insights/hubspot-development/decoding-hubspots-batch-api-
        207-status-e-commerce-integrators-pay-attention])."""
        inputs = _inputs(body)
        ids = [_entry_id(entry) for entry in inputs]
        if len(set(ids)) != len(ids):
            raise invalid("Duplicate IDs found in batch input")
        problems = Problems()
        checked: list[tuple[Rec | None, dict[str, str | None]]] = []
        for entry, record_id in zip(inputs, ids, strict=True):
            raw = entry.get("properties") if isinstance(entry, dict) else None
            values = parse_properties(self.properties[kind], raw, problems)
            checked.append((self._unarchived(kind, record_id), values))
        problems.check()
        for rec, values in checked:
            if rec is not None and kind == "deals":
                self._check_stage({**rec.props, **values})
        results = []
        for (rec, values), entry in zip(checked, inputs, strict=True):
            if rec is None:
                continue
            self.apply(rec, values)
            trace = entry.get("objectWriteTraceId")
            traced = {"objectWriteTraceId": trace} if trace else {}
            results.append({**self.render(rec, list(values)), **traced})
        missing = len(results) < len(inputs)
        return (207 if missing else 200), {"status": "COMPLETE", "results": results}

    def associations_read(self, kind: str, other: str, body: JSONDict) -> tuple[int, JSONDict]:
        """Each input record's live links to `other`, as the v4 associations batch read
        answers them (`to[].toObjectId` with its `associationTypes`), `ASSOCIATION_PAGE`
        a page (`paging.next.after`, given back with the id); a record without links, or
        unknown, is among a 207's `errors`."""
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not 0 < len(inputs) <= MAX_ASSOCIATION_INPUTS:
            raise invalid(f"inputs: a list of 1 to {MAX_ASSOCIATION_INPUTS} entries")
        type_id = READ_TYPES.get((kind, other))
        results, errors = [], []
        for entry in inputs:
            record_id = _entry_id(entry)
            rec = self._unarchived(kind, record_id)
            linked = [] if rec is None else self.live_links(rec, other)
            if not linked:
                errors.append(
                    {
                        "status": "error",
                        "category": "OBJECT_NOT_FOUND",
                        "subCategory": "crm.associations.NO_ASSOCIATIONS_FOUND",
                        "message": f"No {SINGULAR[other]} is associated with {record_id!r}.",
                        "context": {"fromObjectId": [record_id]},
                    }
                )
                continue
            start = int(entry.get("after") or 0)
            page = linked[start : start + ASSOCIATION_PAGE]
            spec = {"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": None}
            result: JSONDict = {
                "from": {"id": record_id},
                "to": [{"toObjectId": int(i), "associationTypes": [spec]} for i in page],
            }
            if start + ASSOCIATION_PAGE < len(linked):
                result["paging"] = {"next": {"after": str(start + ASSOCIATION_PAGE)}}
            results.append(result)
        return _multi(results, errors, ok=200)

    def batch_archive(self, kind: str, body: JSONDict) -> None:
        """Archives the records named; ids already archived or unknown are skipped
        (the answer is 204 either way)."""
        for entry in _inputs(body):
            rec = self._unarchived(kind, _entry_id(entry))
            if rec is not None:
                rec.archived = True

    def associate_default(self, kind: str, record_id: str, other: str, other_id: str) -> JSONDict:
        """The unlabeled association of two live records; linking twice links once."""
        if frozenset((kind, other)) not in DEFAULT_PAIRS:
            raise invalid(f"{kind} cannot be associated to {other}")
        a, b = self.live(kind, record_id), self.live(other, other_id)
        self.link(a, b)
        return {
            "status": "COMPLETE",
            "results": [
                {
                    "from": {"id": a.id},
                    "to": {"id": b.id},
                    "associationSpec": {"associationCategory": "HUBSPOT_DEFINED"},
                }
            ],
        }

    def update(self, kind: str, record_id: str, body: JSONDict) -> JSONDict:
        rec = self.live(kind, record_id)
        problems = Problems()
        values = parse_properties(self.properties[kind], body.get("properties"), problems)
        problems.check()
        if kind == "deals":
            self._check_stage({**rec.props, **values})
        self.apply(rec, values)
        return self.render(rec, list(values))

    def search(self, kind: str, body: JSONDict) -> JSONDict:
        now = self.now()
        items = [
            Item(rec.id, self.values(rec), rec.links)
            for rec in self.records[kind].values()
            if not rec.archived and rec.visible_ms <= now
        ]
        page, total, more = run_search(body, items, self.properties[kind], self.phone_region)
        wanted = body.get("properties") or None
        answer: JSONDict = {
            "total": total,
            "results": [self.render(self.records[kind][item.id], wanted) for item in page],
        }
        if more is not None:
            answer["paging"] = {"next": {"after": str(more)}}
        return answer

    def batch_read(self, kind: str, body: JSONDict) -> tuple[int, JSONDict]:
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or len(inputs) > 100:
            raise invalid("inputs: a list of at most 100 ids")
        found, missing = [], []
        for entry in inputs:
            record_id = _entry_id(entry)
            rec = self._unarchived(kind, record_id)
            if rec is None:
                missing.append(record_id)
            else:
                found.append(self.render(rec, body.get("properties") or None))
        error = {
            "status": "error",
            "category": "OBJECT_NOT_FOUND",
            "message": f"Could not get some {SINGULAR[kind].upper()} objects.",
            "context": {"ids": missing},
        }
        return _multi(found, [error] if missing else [], ok=200)

    # ---- records --------------------------------------------------------------------

    def now(self) -> int:
        return int(self.clock() * 1000)

    def store(
        self,
        kind: str,
        values: Mapping[str, str | None],
        updated_at: float | None = None,
        *,
        indexed_later: bool = False,
    ) -> Rec:
        """A new record; one written through the API reaches search `index_lag` later."""
        now = self.now()
        updated = now if updated_at is None else int(updated_at * 1000)
        visible = now + int(self.index_lag * 1000) if indexed_later else now
        rec = Rec(str(next(self._ids)), kind, dict(values), now, updated, visible)
        self.records[kind][rec.id] = rec
        return rec

    def seed(self, kind: str, props: Mapping[str, str]) -> dict[str, str | None]:
        """Test values checked like an API write (ValueError when HubSpot would refuse)."""
        problems = Problems()
        values = parse_properties(self.properties[kind], dict(props), problems)
        if problems.items:
            raise ValueError(f"invalid seed properties: {problems.items}")
        return values

    def apply(self, rec: Rec, values: Mapping[str, str | None]) -> None:
        rec.props.update(values)
        rec.updated_ms = max(self.now(), rec.updated_ms + 1)

    def link(self, a: Rec, b: Rec) -> None:
        a.links.setdefault(b.kind, set()).add(b.id)
        b.links.setdefault(a.kind, set()).add(a.id)

    def _unarchived(self, kind: str, record_id: str) -> Rec | None:
        rec = self.records[kind].get(record_id)
        return None if rec is None or rec.archived else rec

    def live(self, kind: str, record_id: str) -> Rec:
        rec = self._unarchived(kind, record_id)
        if rec is None:
            message = "Object not found.  objectId are usually numeric."
            raise hs_error(404, "OBJECT_NOT_FOUND", message, context={"id": [record_id]})
        return rec

    def values(self, rec: Rec) -> dict[str, str | None]:
        """Stored properties plus the calculated ones."""
        values = {**rec.props, "hs_object_id": rec.id, "createdate": iso_ms(rec.created_ms)}
        modified = "lastmodifieddate" if rec.kind == "contacts" else "hs_lastmodifieddate"
        values[modified] = iso_ms(rec.updated_ms)
        if rec.kind == "deals":
            stage = self.pipelines[str(rec.props["pipeline"])].stage(str(rec.props["dealstage"]))
            values["hs_is_closed"] = "true" if stage is not None and stage.closed else "false"
        if rec.kind == "line_items":
            total = Decimal(rec.props.get("quantity") or 0) * Decimal(rec.props.get("price") or 0)
            values["amount"] = format(total.normalize(), "f") if total else "0"
        return values

    def render(
        self, rec: Rec, wanted: list[str] | None, associations: list[str] | None = None
    ) -> JSONDict:
        """The record as the API shows it: the `wanted` properties (null when empty)."""
        values = self.values(rec)
        names = [*(wanted or DEFAULT_PROPERTIES[rec.kind]), "hs_object_id", "createdate"]
        known = self.properties[rec.kind]
        answer: JSONDict = {
            "id": rec.id,
            "properties": {name: values.get(name) for name in names if name in known},
            "createdAt": iso_ms(rec.created_ms),
            "updatedAt": iso_ms(rec.updated_ms),
            "archived": rec.archived,
        }
        linked = {
            kind: {
                "results": [
                    {"id": other, "type": f"{SINGULAR[rec.kind]}_to_{SINGULAR[kind]}"}
                    for other in self.live_links(rec, kind)
                ]
            }
            for kind in associations or ()
            if kind in self.records and self.live_links(rec, kind)
        }
        if linked:
            answer["associations"] = linked
        return answer

    def live_links(self, rec: Rec, kind: str) -> list[str]:
        """Associated ids of `kind` whose records are not archived, oldest first."""
        linked = rec.links.get(kind, set())
        return [i for i in sorted(linked, key=int) if not self.records[kind][i].archived]

    # ---- rules of a write -----------------------------------------------------------

    def _associations(self, kind: str, raw: Any) -> list[Rec]:
        linked = []
        for entry in raw if isinstance(raw, list) else [raw]:
            entry = entry if isinstance(entry, dict) else {}
            to_id = str((entry.get("to") or {}).get("id", ""))
            spec = (entry.get("types") or [{}])[0]
            type_id = spec.get("associationTypeId")
            target = next(
                (
                    other
                    for (source, other), known_id in ASSOCIATION_TYPES.items()
                    if source == kind and known_id == type_id
                ),
                None,
            )
            rec = self.records[target].get(to_id) if target else None
            if spec.get("associationCategory") != "HUBSPOT_DEFINED" or rec is None or rec.archived:
                message = f"Association of type {type_id} to {to_id!r} is invalid for {kind}"
                raise invalid(message)
            linked.append(rec)
        return linked

    def _check_create(self, kind: str, values: dict[str, str | None]) -> None:
        if kind == "contacts":
            email = (values.get("email") or "").casefold()
            for other in self.records["contacts"].values():
                if email and (other.props.get("email") or "").casefold() == email:
                    message = f"Contact already exists. Existing ID: {other.id}"
                    raise hs_error(409, "CONFLICT", message)
            if not any(values.get(name) for name in ("email", "firstname", "lastname")):
                raise invalid("A contact needs an email, a firstname or a lastname")
        elif kind == "deals":
            if not values.get("dealname") or not values.get("dealstage"):
                raise invalid("dealname and dealstage are required")
            values.setdefault("pipeline", "default")
            self._check_stage(values)
        elif kind == "notes" and not values.get("hs_timestamp"):
            raise invalid("hs_timestamp is required")
        elif kind == "companies" and not values.get("name") and not values.get("domain"):
            raise invalid("A company needs a name or a domain")
        elif kind == "line_items":
            # "The price specified within the properties field cannot be negative"
            # [developers.hubspot.com/docs-beta/crm/line-items].
            if not values.get("name"):
                raise invalid("A line item needs a name")
            if (values.get("price") or "0").startswith("-"):
                raise invalid("price cannot be negative")

    def _check_stage(self, values: Mapping[str, str | None]) -> None:
        pipeline = self.pipelines.get(str(values.get("pipeline")))
        if pipeline is None or pipeline.stage(str(values.get("dealstage"))) is None:
            message = (
                f"dealstage {values.get('dealstage')!r} is not a valid stage"
                f" of pipeline {values.get('pipeline')!r}"
            )
            raise invalid(message)


def _multi(results: list[JSONDict], errors: list[JSONDict], *, ok: int) -> tuple[int, JSONDict]:
    """A batch answer: `ok` when nothing was refused, else a 207 with the errors."""
    answer: JSONDict = {"status": "COMPLETE", "results": results}
    if not errors:
        return ok, answer
    return 207, {**answer, "numErrors": len(errors), "errors": errors}


def _entry_id(entry: Any) -> str:
    """The record id a batch input names ("" for a malformed input)."""
    return str(entry.get("id")) if isinstance(entry, dict) else ""


def _inputs(body: Any) -> list[Any]:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not 0 < len(inputs) <= MAX_BATCH:
        raise invalid(f"inputs: a list of 1 to {MAX_BATCH} entries")
    return inputs


def pipeline_json(pipeline: PipelineDef) -> JSONDict:
    stamp = "2024-01-01T00:00:00.000Z"
    stages = [
        {
            "id": s.id,
            "label": s.label,
            "displayOrder": s.order,
            "metadata": {"isClosed": str(s.closed).lower(), "probability": s.probability},
            "archived": False,
            "writePermissions": "CRUD_ALL",
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        for s in pipeline.stages
    ]
    return {
        "id": pipeline.id,
        "label": pipeline.label,
        "displayOrder": pipeline.order,
        "archived": False,
        "createdAt": stamp,
        "updatedAt": stamp,
        "stages": stages,
    }
