"""Shared test harness: the real app, a real SQLite file, the stateful fake amoCRM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from bridge.app import create_app
from bridge.settings import FileConfig, Settings, load_file_config
from bridge.signing import hmac_signature
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.openapi_check import SentRequests

if TYPE_CHECKING:
    from tests.process import ServedAmoCrm

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "etc" / "bridge.example.toml"
AMO_URL = "https://reference.amocrm.test"
SECRET = "test-hmac-secret"


# The note of `payment_payload("pay_new", utm_source="advcake")`, as every CRM shows it.
EXPECTED_NOTE = """Оплата проведена

Имя клиента: Иван Петров
Дата/время: 2025-01-20 14:49:20 (Moscow)
Дата/время UTC: 2025-01-20T11:49:20Z
Статус: CONFIRMED
Сумма: 10000 RUB
Метод оплаты: SBP
Курсы:
  Годовой 2к25 стандарт (Русский)
  Годовой 2к25 стандарт (Обществознание)
Промокод: PROMO2025
TGID: 123456789 | TG Username: @ivan_petrov | Телефон: +79991234567
Источник: advcake
Invoice ID: inv_pay_new
Payment ID: pay_new"""


def example_file_config(path: Path, name: str, **fixed: Any) -> Callable[..., FileConfig]:
    """`file_config(**changes)`: the example section `name` of `path`, enabled, as the only
    CRM, with `fixed` and `changes` on top. A short request timeout: a write whose answer
    was lost is looked for again only after it (it may still land), and tests should not
    wait 15 s for that."""

    def file_config(**changes: Any) -> FileConfig:
        config = load_file_config(path)
        update = {
            "enabled": True,
            "request_timeout_seconds": 1.0,
            "late_write_seconds": 1.0,
            **fixed,
            **changes,
        }
        return config.model_copy(update={"crm": {name: config.crm[name].model_copy(update=update)}})

    return file_config


# The example config (the reference account), pointed at the fake.
reference_file_config = example_file_config(EXAMPLE_CONFIG, "amocrm", base_url=AMO_URL)


def make_settings(tmp_path: Path, file: FileConfig | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_path": tmp_path / "bridge.sqlite",
        "webhook_secrets": SECRET,
        "amocrm_access_token": "set-by-fixture",
        "retry_schedule_seconds": "0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2",
        "wait_seconds": 5,
        "file": file or reference_file_config(),
    }
    values.update(overrides)
    return Settings(**values)


def payment_payload(
    payment_id: str = "pay_1",
    *,
    status: str = "CONFIRMED",
    phone: str | None = "89991234567",
    email: str | None = "ivan@example.com",
    telegram_id: str | None = "123456789",
    telegram_tag: str | None = "ivan_petrov",
    first_name: str = "Иван",
    last_name: str = "Петров",
    costs: tuple[int, ...] = (5000, 5000),
    subjects: tuple[str, ...] = ("Русский", "Обществознание"),
    utm_source: str = "platform",
    utm_medium: str = "direct",
    created_at: str = "2025-01-20 14:49:20",
) -> dict[str, Any]:
    items = [
        {
            "cost": cost,
            "number_lessons": 10,
            "package_id": None,
            "course": {
                "name": "Годовой 2к25 стандарт",
                "subject": {"name": subject, "project": "ЕГЭ"},
            },
        }
        for cost, subject in zip(costs, subjects, strict=False)
    ]
    return {
        "course_order": {
            "status": status,
            "amount": 100,
            "created_at": created_at,
            "updated_at": created_at,
            "code": "PROMO2025",
            "payment_id": payment_id,
            "invoice_id": f"inv_{payment_id}",
            "payment_method": "SBP",
            "currency": "RUB",
            "course_order_items": items,
            "user": {
                "first_name": first_name,
                "last_name": last_name,
                "phone": phone,
                "email": email,
                "telegram_id": telegram_id,
                "telegram_tag": telegram_tag,
            },
            "utm": {
                "source": utm_source,
                "medium": utm_medium,
                "compaign": "summer2025",
                "term": "",
                "content": "",
                "ym": "1234567890",
            },
            "domain": "pl.el-ed.ru",
        }
    }


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "X-Signature": f"sha256={hmac_signature(body, secret)}",
        "Content-Type": "application/json",
    }


@dataclass
class Bridge:
    client: AsyncTestClient[Any]
    settings: Settings
    fake: FakeAmoCrm

    async def post_payment(self, payload: dict[str, Any] | bytes) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await self.client.post("/webhook/payment", content=body, headers=signed(body))

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.settings.database_path)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.db() as conn:
            return list(conn.execute(sql, params).fetchall())

    async def settle(self, timeout: float = 15.0) -> None:
        """Wait until no delivery is pending, retrying or processing."""
        await wait_until(lambda: unfinished(self.settings.database_path) == 0, timeout=timeout)


def unfinished(database: Path) -> int:
    """How many deliveries in `database` are pending, retrying or processing."""
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as conn:
        [(count,)] = conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'retrying', 'processing')"
        ).fetchall()
    return int(count)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def fake_amo() -> FakeAmoCrm:
    return FakeAmoCrm()


@pytest.fixture
def run_bridge(tmp_path: Path, fake_amo: FakeAmoCrm) -> Callable[..., Any]:
    """`async with run_bridge(**settings_overrides) as bridge:` — app with lifespan."""

    @asynccontextmanager
    async def factory(file: FileConfig | None = None, **overrides: Any) -> AsyncIterator[Bridge]:
        overrides.setdefault("amocrm_access_token", fake_amo.issue_token(ttl=3600))
        settings = make_settings(tmp_path, file, **overrides)
        app = create_app(settings, transports={"amocrm": fake_amo.transport()})
        async with AsyncTestClient(app=app) as client:
            yield Bridge(client, settings, fake_amo)

    return factory


@pytest.fixture
def amo_server() -> Iterator[ServedAmoCrm]:
    """The fake amoCRM served on loopback, for tests that run `crm-bridge` processes."""
    from tests.process import ServedAmoCrm, serving  # process imports this module

    fake = FakeAmoCrm(rate_limit=60)  # rate limits are not what these tests are about
    with serving(fake) as base_url:
        yield ServedAmoCrm(fake, base_url)


# ---- a module's `case` fixture (a CrmCase, or an order or adapter case) puts these on it ----


@pytest.fixture
def fake(case: Any) -> Any:
    """The stateful fake of the test's `case`."""
    return case.make_fake()


@pytest.fixture
def run(tmp_path: Path, case: Any, fake: Any) -> Iterator[Callable[..., Any]]:
    """`async with run(file=None, **settings_overrides) as bridge:` — the app with the
    CrmCase's CRM only, authorised on its fake. Where the case has the vendor's published
    OpenAPI files (`openapi`), every request the test sent is checked against them."""
    from tests.crm_cases import running  # crm_cases imports this module

    sent = SentRequests()
    yield running(case, fake, tmp_path, sent.recording)
    spec = case.openapi() if case.openapi is not None else None
    if spec is not None:
        assert sent.problems(spec) == []


def crm_calls(bridge: Bridge, payment_id: str) -> int:
    """The CRM calls the delivery of one payment made (as the audit row records them)."""
    [(calls,)] = bridge.query(
        "SELECT d.crm_calls FROM deliveries d JOIN events e ON e.id = d.event_id WHERE e.key = ?",
        (payment_id,),
    )
    return int(calls)
