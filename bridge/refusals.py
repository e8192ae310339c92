"""A CRM's permanent refusal, said in the operator's terms: the config key to fix.

A CRM refuses a request the bridge built from config (a field id, an enum id, a pipeline
or status id) in its own words — amoCRM: `custom_fields_values.10.field_id: field 900099
not found`. On such a refusal the worker compares the section with the CRM's schema, as
`crm-bridge check` does, and puts what is missing first:
`crm.amocrm.deal_fields.payment_id = 900099: no such lead field; run crm-bridge check`.
The schema is read at most once a minute per CRM, so a run of refusals costs little.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.crm.base import CrmAdapter
from bridge.crmconfig import Problem, schema_problems
from bridge.errors import CrmError
from bridge.settings import CrmConfig

SCHEMA_TTL_SECONDS = 60.0


@dataclass
class RefusalExplainer:
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, list[Problem]]] = field(default_factory=dict)

    async def explain(self, crm: str, adapter: CrmAdapter, config: CrmConfig, message: str) -> str:
        """`message` led by the config keys the CRM lacks (unchanged when none does)."""
        problems = await self._problems(crm, adapter, config)
        if not problems:
            return message
        # The ids the CRM's own words mention are the likeliest culprits: those first.
        named = [p for p in problems if _value_of(p) and _value_of(p) in message]
        ordered = named + [p for p in problems if p not in named]
        return f"{'; '.join(map(str, ordered))}; run `crm-bridge check` (the CRM said: {message})"

    def forget(self) -> None:
        """The config changed (a reload): compare afresh next time."""
        self._cache.clear()

    async def _problems(self, crm: str, adapter: CrmAdapter, config: CrmConfig) -> list[Problem]:
        now = self.clock()
        cached = self._cache.get(crm)
        if cached is not None and now - cached[0] < SCHEMA_TTL_SECONDS:
            return cached[1]
        try:
            schema = await adapter.schema()
        except CrmError:
            return []  # the refusal stays as the CRM said it
        problems = schema_problems(crm, config, schema)
        self._cache[crm] = (now, problems)
        return problems


def _value_of(problem: Problem) -> str:
    _, _, value = problem.key.partition(" = ")
    if not value:
        _, _, value = problem.key.partition(": ")
    return value.strip()
