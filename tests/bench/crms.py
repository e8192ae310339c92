"""The CRMs a burst drains into: each one's fake on loopback, its example config, the
bridge's credentials there, and its state read back per customer for the exactly-once
check.

A fake is served from a thread of the harness (`tests.fakes.server`) and outlives the
bridges that use it in turn (the warm-up one, then the measured one). While the bridge
learns its known customers the fake's limit and latency are lifted (`unthrottled`): the
warm-up is set-up, not measurement, and is left out of every figure.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.bench.config import EXAMPLE_CONFIG, HOST, bridge_env, write_config
from tests.bench.procs import Server, serve_bridge
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.bitrix24 import EXAMPLE_CONFIG as BITRIX_EXAMPLE
from tests.fakes.bitrix24 import FakeBitrix24
from tests.fakes.server import serve_in_thread

# the e-mail every bench payment carries (tests.bench.bodies): the customer's key
_KEY = re.compile(r"c(\d{9})@bench\.example")
_PAYMENT_ID = re.compile(r"Payment ID: ([A-Za-z0-9_.-]+)")


@dataclass
class Deal:
    id: str
    total_paid: Decimal
    purchase_count: Decimal
    payment_ids: list[str]  # of its notes that name a payment, one entry per note


@dataclass
class CustomerState:
    """What the CRM holds for one bench customer (contacts found by its e-mail)."""

    contacts: list[str] = field(default_factory=list)
    deals: list[Deal] = field(default_factory=list)


class BurstCrm(ABC):
    """One CRM's fake, served on loopback, and what the bench needs to know about it."""

    name: str  # the config section, [crm.NAME]
    example: Path  # the example config file with that section
    rate: float  # requests/s the fake admits: the drain's physical limit
    limit_answer: str  # how the fake refuses a request over its limit

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.url = ""

    @property
    @abstractmethod
    def fake(self) -> FakeAmoCrm | FakeBitrix24: ...

    def serve(self, stack: ExitStack) -> str:
        self.fake.latency = self.latency
        self.url, stop = serve_in_thread(self.fake, HOST)
        stack.callback(stop)
        return self.url

    @property
    def calls(self) -> int:
        """HTTP requests the fake received (a Bitrix24 `batch` is one)."""
        return len(self.fake.calls)

    @property
    def refused(self) -> int:
        """Requests refused for the rate limit."""
        return self.fake.throttled

    def serve_bridge(
        self,
        stack: ExitStack,
        name: str,
        directory: Path,
        *,
        batch_size: int,
        rate_limit: float | None = None,
        wait_seconds: float = 0,
    ) -> Server:
        """`crm-bridge serve` in `directory` on the CRM's example config pointed at the
        fake, `batch_size` and `rate_limit` (`rate_limit_per_second`, else the file's) set,
        with its credentials; registered with `stack` for stopping."""
        config = write_config(
            directory,
            self.url,
            source=self.example,
            section=self.name,
            batch_size=batch_size,
            rate_limit=rate_limit,
            file_name=f"{self.name}-{batch_size}-{rate_limit or 'ref'}.toml",
        )
        env = bridge_env(directory, config, self.secrets(), wait_seconds=wait_seconds)
        return serve_bridge(stack, name, directory, env)

    @abstractmethod
    def secrets(self) -> dict[str, str]:
        """The bridge's credentials for the fake, as environment variables."""

    @abstractmethod
    @contextmanager
    def unthrottled(self) -> Iterator[None]:
        """No rate limit and no latency inside the block."""

    @abstractmethod
    def move_on(self, deal_id: str) -> None:
        """A manager takes the deal on: from its auto-payment stage to "В работе"."""

    @abstractmethod
    def customers(self) -> dict[str, CustomerState]:
        """Bench customers by key; a contact or deal no bench customer owns under ""."""


class AmoBurst(BurstCrm):
    name = "amocrm"
    example = EXAMPLE_CONFIG
    rate = 7
    limit_answer = "429s"

    def __init__(self, latency: float) -> None:
        super().__init__(latency)
        self._fake = FakeAmoCrm(rate_limit=int(self.rate))
        self._token = self._fake.issue_token(ttl=30 * 86400)  # a long-lived token it issued
        ids = self._fake.config.deal_fields
        assert ids.total_paid and ids.purchase_count  # the reference config has both
        self._total, self._count = ids.total_paid, ids.purchase_count

    @property
    def fake(self) -> FakeAmoCrm:
        return self._fake

    def secrets(self) -> dict[str, str]:
        return {"AMOCRM_ACCESS_TOKEN": self._token}

    @contextmanager
    def unthrottled(self) -> Iterator[None]:
        self._fake.rate_limit, self._fake.latency = 10**9, 0.0
        try:
            yield
        finally:
            self._fake.rate_limit, self._fake.latency = int(self.rate), self.latency

    def move_on(self, deal_id: str) -> None:
        # the fake seeds "В работе" right after each pipeline's auto-payment status
        self._fake.move_lead(deal_id, int(self._fake.lead(deal_id)["status_id"]) + 1)

    def customers(self) -> dict[str, CustomerState]:
        found: dict[str, CustomerState] = {}
        owner: dict[int, str] = {}
        for contact in self._fake.contacts():
            key = _key_of(contact)
            found.setdefault(key, CustomerState()).contacts.append(str(contact["id"]))
            owner[int(contact["id"])] = key
        for lead in self._fake.leads():
            lead_id = str(lead["id"])
            linked = {owner.get(int(c["id"]), "") for c in lead["_embedded"]["contacts"]}
            key = linked.pop() if len(linked) == 1 else ""
            found.setdefault(key, CustomerState()).deals.append(
                Deal(
                    lead_id,
                    _number(self._fake.lead_field(lead_id, self._total)),
                    _number(self._fake.lead_field(lead_id, self._count)),
                    _payment_ids(self._fake.notes(lead_id)),
                )
            )
        return found


class BitrixBurst(BurstCrm):
    name = "bitrix24"
    example = BITRIX_EXAMPLE
    rate = 2  # the leaky bucket's drain; its 50 requests of headroom come on top
    limit_answer = "503 QUERY_LIMIT_EXCEEDED answers"
    TOTAL, COUNT = "UF_CRM_TOTAL_PAID", "UF_CRM_PURCHASES"

    def __init__(self, latency: float) -> None:
        super().__init__(latency)
        self._fake = FakeBitrix24(drain_per_second=self.rate)

    @property
    def fake(self) -> FakeBitrix24:
        return self._fake

    def secrets(self) -> dict[str, str]:
        # the inbound webhook's URL, on the fake's portal (`auth = "long_lived_token"`)
        return {"BITRIX24_WEBHOOK_URL": self._fake.webhook_url(self.url)}

    @contextmanager
    def unthrottled(self) -> Iterator[None]:
        # the bucket drains as fast as it fills, so it never overflows
        self._fake.drain_per_second, self._fake.latency = 10.0**9, 0.0
        try:
            yield
        finally:
            self._fake.drain_per_second, self._fake.latency = self.rate, self.latency

    def move_on(self, deal_id: str) -> None:
        stage = str(self._fake.deal(deal_id)["STAGE_ID"])  # "UC_AUTOPAY" or "C1:UC_AUTOPAY"
        prefix = stage.rsplit(":", 1)[0] + ":" if ":" in stage else ""
        self._fake.move_deal(deal_id, prefix + "EXECUTING")

    def customers(self) -> dict[str, CustomerState]:
        found: dict[str, CustomerState] = {}
        owner: dict[int, str] = {}
        for contact in self._fake.contacts():
            key = _key_of(contact)
            found.setdefault(key, CustomerState()).contacts.append(str(contact["ID"]))
            owner[int(contact["ID"])] = key
        for deal in self._fake.deals():
            deal_id = str(deal["ID"])
            linked = {owner.get(int(c), "") for c in deal["CONTACT_IDS"]}
            key = linked.pop() if len(linked) == 1 else ""
            found.setdefault(key, CustomerState()).deals.append(
                Deal(
                    deal_id,
                    _number(self._fake.deal_field(deal_id, self.TOTAL)),
                    _number(self._fake.deal_field(deal_id, self.COUNT)),
                    _payment_ids(self._fake.notes(deal_id)),
                )
            )
        return found


def _key_of(record: dict[str, Any]) -> str:
    keys = set(_KEY.findall(json.dumps(record, ensure_ascii=False)))
    return keys.pop() if len(keys) == 1 else ""


def _number(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def _payment_ids(notes: list[str]) -> list[str]:
    return [found for note in notes for found in _PAYMENT_ID.findall(note)]
