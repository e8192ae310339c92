"""Section `lone`: a payment arriving alone, batching off and on (issue 20: "unchanged").

Each setting gets its own `crm-bridge serve` (the example config, `batch_size` 1 or the
default; WAIT_SECONDS=5, the default, so the answer comes once the payment is delivered)
and its own fake amoCRM on loopback (7 requests/s, 100 ms a call, as in the burst). A
first payment pays what a process pays once and is not counted; then, per round, three
payments, each alone (the previous one delivered and the rate window empty):
- returning: a contact with an open deal a manager entered, found by phone;
- known: that customer's next payment (the bridge remembers contact and deal);
- new: a customer the CRM does not have.
Calls are the delivery's `crm_calls` and the requests the fake received meanwhile; times
are the answer to the POST (what the platform waits) and the POST's start to the
delivery's `updated_at` (success), medians over the rounds.
"""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.bench.bodies import customer_key, manager_phone, payment_body
from tests.bench.burst import BATCH_OFF, BATCH_ON, CRM_LATENCY
from tests.bench.config import SECRET
from tests.bench.crms import AmoBurst
from tests.bench.procs import Server, query_database
from tests.conftest import payment_payload, signed

QUICK = 2  # rounds
FULL = 5
WAIT_SECONDS = 5  # the bridge's default
PAUSE = 1.2  # seconds between payments: the bridge's and the fake's rate windows empty
SCENARIOS = ("returning", "known", "new")
TARGETS = {"returning": 4, "known": 3, "new": 5}  # the README's amoCRM row
# "unchanged": batching on may take this much longer than off (noise of a shared machine)
TIME_TOLERANCE = (0.025, 0.10)  # seconds, fraction: whichever is larger


def lone_payments(rounds: int) -> dict[str, Any]:
    runs = {"off": _measure(BATCH_OFF, rounds), "on": _measure(BATCH_ON, rounds)}
    return {
        "rounds": rounds,
        "fake_latency_ms": CRM_LATENCY * 1000,
        "batch_sizes": {"off": BATCH_OFF, "on": BATCH_ON},
        "targets": TARGETS,
        "time_tolerance": {"seconds": TIME_TOLERANCE[0], "fraction": TIME_TOLERANCE[1]},
        "runs": runs,
    }


def within_tolerance(off: float, on: float) -> bool:
    seconds, fraction = TIME_TOLERANCE
    return on <= off + max(seconds, fraction * off)


def _measure(batch_size: int, rounds: int) -> dict[str, Any]:
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-lone-")))
        crm = AmoBurst(CRM_LATENCY)
        crm.serve(stack)
        server = crm.serve_bridge(
            stack, f"lone-{batch_size}", directory, batch_size=batch_size, wait_seconds=WAIT_SECONDS
        )
        payer = _Payer(server, crm, directory)
        payer.pay("lone-warm", payment_body("lone-warm", customer_key(5, 99_999_999)))
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in SCENARIOS}
        for round_ in range(rounds):
            key, new_key = customer_key(5, 2 * round_), customer_key(5, 2 * round_ + 1)
            _managers_customer(crm, key)
            for name, payment_id, body in (
                ("returning", f"lone-r{round_}", _by_phone(f"lone-r{round_}", key)),
                ("known", f"lone-k{round_}", _by_phone(f"lone-k{round_}", key)),
                ("new", f"lone-n{round_}", payment_body(f"lone-n{round_}", new_key)),
            ):
                samples[name].append(payer.pay(payment_id, body))
        return {
            "batch_size": batch_size,
            "throttled": crm.refused,
            **{name: _summary(values) for name, values in samples.items()},
        }


def _managers_customer(crm: AmoBurst, key: str) -> None:
    """A contact and an open deal entered by a manager: phone typed their way, no
    e-mail or Telegram id, the deal in "В работе" of the default pipeline."""
    fake = crm.fake
    contact = fake.add_contact("Иван Петров", phones=[manager_phone(key)])
    target = fake.config.default_pipeline
    fake.add_lead(contact, pipeline_id=int(target.pipeline_id), status_id=int(target.status_id) + 1)


def _by_phone(payment_id: str, key: str) -> str:
    payload = payment_payload(
        payment_id, phone=f"89{key}", email=None, telegram_id=None, telegram_tag=None
    )
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class _Payer:
    def __init__(self, server: Server, crm: AmoBurst, directory: Path) -> None:
        self.server, self.crm, self.database = server, crm, directory / "bridge.sqlite"

    def pay(self, payment_id: str, body_text: str) -> dict[str, float]:
        """Post one payment alone and wait for its answer; what it cost and took."""
        time.sleep(PAUSE)
        body = body_text.encode()
        headers = signed(body, SECRET)
        calls_before = self.crm.calls
        address = urlsplit(self.server.url)
        conn = http.client.HTTPConnection(
            str(address.hostname), address.port, timeout=WAIT_SECONDS + 10
        )
        try:
            sent_wall, sent = time.time(), time.perf_counter()
            conn.request("POST", "/webhook/payment", body, headers)
            answer = conn.getresponse()
            text = answer.read().decode(errors="replace")
            answered = time.perf_counter() - sent
        finally:
            conn.close()
        if answer.status != 200:
            raise RuntimeError(f"{payment_id}: HTTP {answer.status} {text[:300]}")
        [(status, crm_calls, updated_at)] = query_database(
            self.database,
            "SELECT d.status, d.crm_calls, d.updated_at FROM deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE e.key = ?",
            (payment_id,),
        )
        if status != "success":
            raise RuntimeError(f"{payment_id}: delivery {status} after its answer")
        finished = datetime.strptime(str(updated_at), "%Y-%m-%d %H:%M:%S.%f")
        return {
            "crm_calls": float(str(crm_calls)),
            "fake_calls": float(self.crm.calls - calls_before),
            "answer_seconds": answered,
            "delivered_seconds": finished.replace(tzinfo=UTC).timestamp() - sent_wall,
        }


def _summary(values: list[dict[str, float]]) -> dict[str, Any]:
    def each(name: str) -> list[float]:
        return [value[name] for value in values]

    return {
        "crm_calls": max(each("crm_calls")),
        "crm_calls_min": min(each("crm_calls")),
        "fake_calls": max(each("fake_calls")),
        "answer_ms": round(statistics.median(each("answer_seconds")) * 1000, 1),
        "delivered_ms": round(statistics.median(each("delivered_seconds")) * 1000, 1),
    }
