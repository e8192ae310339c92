"""One customer's contact search on Bitrix24: its commands and the reading of their answers.

The same search serves `find_contact` (one customer, its own batches) and the batch form
`find_contacts` (many customers' commands in shared batches, each under its `prefix`), so
both choose the same contact. Two steps:

1. lookup: `crm.contact.list` by the Telegram user field with the first hit's open deals
   chained (`$result[tg][0][ID]`), and `crm.duplicate.findbycomm` per phone / e-mail;
   a confirmed Telegram hit ends it (`first_confirmed` over the Telegram hits only);
2. candidates, only when no Telegram hit is confirmed and findbycomm found ids: their
   records (`crm.contact.list @ID`) and the open deals of the first PREFETCH_CANDIDATES;
   `first_confirmed` over every key's hits then picks.

`found` is the pick and `deals_key` the command whose answer holds its open deals (None:
none was read for it), for the adapter's prefetch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bridge.crm import bitrix24_json as bx
from bridge.crm.base import Confirm, first_confirmed
from bridge.crm.bitrix24_calls import JSON, BatchAnswer
from bridge.domain import Contact, KeyKind, LookupKey
from bridge.settings import CrmConfig

PREFETCH_CANDIDATES = 5  # contacts whose deals the second lookup batch reads too


class ContactSearch:
    def __init__(
        self, keys: Sequence[LookupKey], confirm: Confirm, config: CrmConfig, prefix: str = ""
    ) -> None:
        self.keys, self.confirm, self.config, self.prefix = keys, confirm, config, prefix
        self.found: Contact | None = None
        self.deals_key: str | None = None
        self._tg_key = next((key for key in keys if key.kind is KeyKind.TELEGRAM_ID), None)
        self._comms = [key for key in keys if key.kind in (KeyKind.PHONE, KeyKind.EMAIL)]
        self._hits: dict[LookupKey, list[Contact]] = {}
        self._ids: dict[LookupKey, list[str]] = {}
        self._select = bx.contact_select(config)
        self.lookup = self._lookup_commands()

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def lookup_keys(self) -> list[str]:
        """The lookup commands that must have answered (a chained deal list need not)."""
        return [key for key in self.lookup if key != self.key("tg_deals")]

    def _lookup_commands(self) -> dict[str, tuple[str, Mapping[str, JSON]]]:
        commands: dict[str, tuple[str, Mapping[str, JSON]]] = {}
        tg_field = self.config.contact_fields.telegram_id
        if self._tg_key is not None and tg_field:
            by_tg = {
                "filter": {tg_field: self._tg_key.value},
                "order": {"ID": "ASC"},
                "select": self._select,
            }
            first_hit = f"$result[{self.key('tg')}][0][ID]"
            commands[self.key("tg")] = ("crm.contact.list", by_tg)
            commands[self.key("tg_deals")] = ("crm.item.list", self._open_deals(first_hit))
        for index, key in enumerate(self._comms):
            phone = key.kind is KeyKind.PHONE
            values = bx.phone_variants(key.value) if phone else [key.value]
            search = {"entity_type": "CONTACT", "type": key.kind.name, "values": values}
            commands[self.key(f"comm{index}")] = ("crm.duplicate.findbycomm", search)
        return commands

    def read_lookup(self, answer: BatchAnswer) -> dict[str, tuple[str, Mapping[str, JSON]]]:
        """Read the lookup (inside `reading`); the candidates' commands when they are
        needed, else none (`found` is the pick)."""
        tg_hits = [bx.contact_from_record(r, self.config) for r in answer.rows(self.key("tg"))]
        self._ids = {
            key: bx.findbycomm_ids(answer.results.get(self.key(f"comm{index}")))
            for index, key in enumerate(self._comms)
        }
        if self._tg_key is not None:
            self._hits[self._tg_key] = tg_hits
        self.found = first_confirmed(self.keys, self._hits, self.confirm)
        if self.found is not None:
            first = self.found.id == tg_hits[0].id
            self.deals_key = self.key("tg_deals") if first else None
            return {}
        wanted = list(dict.fromkeys(cid for found in self._ids.values() for cid in found))
        if not wanted:
            return {}
        contacts = {"filter": {"@ID": wanted}, "select": self._select}
        commands: dict[str, tuple[str, Mapping[str, JSON]]] = {
            self.key("contacts"): ("crm.contact.list", contacts)
        }
        for contact_id in wanted[:PREFETCH_CANDIDATES]:
            commands[self.key(f"deals_{contact_id}")] = (
                "crm.item.list",
                self._open_deals(contact_id),
            )
        return commands

    def read_candidates(self, answer: BatchAnswer) -> None:
        """Read the candidates (inside `reading`) and pick among every key's hits."""
        records = [
            bx.contact_from_record(r, self.config) for r in answer.rows(self.key("contacts"))
        ]
        by_id = {contact.id: contact for contact in records}
        for key, found_ids in self._ids.items():
            self._hits[key] = [by_id[cid] for cid in found_ids if cid in by_id]
        self.found = first_confirmed(self.keys, self._hits, self.confirm)
        self.deals_key = self.key(f"deals_{self.found.id}") if self.found is not None else None

    def _open_deals(self, contact_id: str) -> dict[str, JSON]:
        return bx.open_deals_params(contact_id, self.config)
