"""Set-up the vendor tests share: adapters closed however a test ends, and a CRM's batch
forms (tests/test_*_batch.py), each taken as one the CRM must have, so that a batch form
and its per-call method can be run side by side on twin fakes seeded alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from bridge.crm.base import BatchForms, batch_forms

Adapter = TypeVar("Adapter")


class Forms:
    """An adapter's `BatchForms`; reading a form the CRM lacks (None) fails the test."""

    def __init__(self, adapter: Any) -> None:
        found = batch_forms(adapter)
        assert found is not None, f"{type(adapter).__name__} has no batch forms"
        self.all: BatchForms = found

    @property
    def limit(self) -> int:
        return self.all.limit

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        form: Callable[..., Awaitable[Any]] | None = getattr(self.all, name)
        assert form is not None, f"no batch form {name}"
        return form


def forms(adapter: Any) -> Forms:
    """The adapter's batch forms, which its CRM must have."""
    return Forms(adapter)


@asynccontextmanager
async def closing(*adapters: Adapter) -> AsyncIterator[tuple[Adapter, ...]]:
    """The adapters, their connections closed after the block."""
    try:
        yield adapters
    finally:
        for adapter in adapters:
            await adapter.connection.aclose()  # type: ignore[attr-defined]
