"""Issue scenarios 1–8 through HTTP, with Pipedrive as the only CRM (the stateful fake).

The bridge runs with `etc/crm-pipedrive.example.toml` pointed at the fake. Every request
it sends is recorded and, after each test, checked against Pipedrive's published
OpenAPI files. The CRM calls per payment are measured with the fake's call log.
"""

from __future__ import annotations

import pytest

from bridge.crm.richtext import note_text
from tests.conftest import payment_payload
from tests.crm_cases import BY_NAME, CrmCase

CASE = BY_NAME["pipedrive"]


@pytest.fixture
def case() -> CrmCase:
    return CASE


# ---- (7) trouble, and the crash windows ---------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/notes"])  # a lost deal create: test_scenarios
async def test_a_write_whose_answer_was_lost_is_not_repeated(run, fake, path) -> None:
    fake.fail_after_apply(1, status=500, method="POST", path_prefix=path)
    async with run(wait_seconds=0) as bridge:
        await bridge.post_payment(payment_payload("pay_lost"))
        await bridge.settle(timeout=20)
        [(status,)] = bridge.query("SELECT status FROM payment_events")
    assert status == "success"
    assert len(fake.persons()) == 1
    [deal] = fake.deals()
    assert CASE.deal_number(fake, deal["id"], "purchase_count") == 1
    [content] = fake.notes(deal["id"])  # the retry read the notes back and found it
    assert note_text(content).endswith("Payment ID: pay_lost")
