"""An order's company beside its customer, on every CRM that takes orders (the order
contract's fixtures, tests/test_order_contract.py): the customer's lookup finds people only."""

from __future__ import annotations

from typing import Any

from bridge.domain import Company
from bridge.rules import contact_matches
from tests.test_contract import AdapterCase
from tests.test_order_contract import adapter, case, config, fake, pair, probe  # noqa: F401


async def test_a_company_sharing_the_persons_phone_is_not_the_contact(
    case: AdapterCase,  # noqa: F811
    adapter: Any,  # noqa: F811
) -> None:
    contact = case.new_contact()
    company = await adapter.create_company(Company("ООО Ромашка", phone=contact.customer.phone))
    keys = contact.customer.lookup_keys()
    assert await adapter.find_contact(keys, contact_matches) is None
    person = await adapter.create_contact(contact)
    await adapter.link_contact_to_company(person.id, company.id)
    found = await adapter.find_contact(keys, contact_matches)
    assert found is not None and found.id == person.id
