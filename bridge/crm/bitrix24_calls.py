"""Calling Bitrix24 REST methods through the connection: one method, a batch, a paged list.

Reads go out as GET with PHP-style query parameters, so `CrmHttp` may retry them after a
5xx or a timeout; writes as POST with a JSON body, never repeated blindly. A method's
refusal is an HTTP error (`CrmHttp` maps it); a `batch` answers 200 and reports each
command's error in `result_error`, which `raise_for` maps here: QUERY_LIMIT_EXCEEDED and
OPERATION_TIME_LIMIT are `RateLimited`, credential refusals `AuthError`, an internal error
transient, anything else (a field or value Bitrix refuses) permanent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.crm import bitrix24_json as bx
from bridge.crm.bitrix24_rest import CREDENTIAL_CODES, RATE_CODES
from bridge.crm.connection import Connection
from bridge.errors import (
    AuthError,
    CrmError,
    PermanentCrmError,
    RateLimited,
    TransientCrmError,
)

JSON = Any
Commands = Mapping[str, tuple[str, Mapping[str, JSON]]]
MAX_PAGES = 40  # lists are read 50 at a time; a runaway `next` must not loop forever
MAX_COMMANDS = 50
AUTH_CODES = frozenset({"expired_token", "invalid_token", "NO_AUTH_FOUND", *CREDENTIAL_CODES})
TRANSIENT_CODES = frozenset({"INTERNAL_SERVER_ERROR", "OVERLOAD_LIMIT"})


@dataclass(frozen=True)
class BatchAnswer:
    results: Mapping[str, JSON]
    errors: Mapping[str, Mapping[str, JSON]]
    more: frozenset[str]  # commands whose list has a next page

    def rows(self, key: str) -> list[dict[str, JSON]]:
        return [row for row in bx.as_list(self.results.get(key)) if isinstance(row, dict)]


class BitrixCalls:
    def __init__(self, connection: Connection) -> None:
        self.crm = connection.name
        self.reading = connection.reading
        self._send = connection.send

    async def call(
        self, api_method: str, operation: str, params: Mapping[str, JSON], *, write: bool = False
    ) -> tuple[JSON, JSON]:
        """One method: its `result` and `next`."""
        path = f"{api_method}.json"
        if write:
            body = await self._send("POST", path, operation, json=params)
        else:
            body = await self._send("GET", path, operation, params=bx.php_query(params))
        with self.reading(operation):
            answer = bx.as_map(body)
            return answer["result"], answer.get("next")

    async def batch(
        self, commands: Commands, operation: str, *, write: bool = False
    ) -> BatchAnswer:
        """Up to 50 commands in one request, run in order; `$result[key]` in a command's
        parameters is the result of an earlier one. Writes stop at the first error (halt)."""
        if len(commands) > MAX_COMMANDS:
            raise ValueError(f"{operation}: {len(commands)} batch commands, at most 50")
        cmd = {key: bx.command(method, params) for key, (method, params) in commands.items()}
        if write:
            body = await self._send("POST", "batch.json", operation, json={"halt": 1, "cmd": cmd})
        else:
            query = [("halt", "0"), *((f"cmd[{key}]", value) for key, value in cmd.items())]
            body = await self._send("GET", "batch.json", operation, params=query)
        with self.reading(operation):
            outer = bx.as_map(bx.as_map(body)["result"])
            errors = bx.as_map(outer.get("result_error"))
            return BatchAnswer(
                bx.as_map(outer.get("result")),
                {key: bx.as_map(error) for key, error in errors.items()},
                frozenset(bx.as_map(outer.get("result_next"))),
            )

    async def pages(
        self, api_method: str, operation: str, params: Callable[[int], Mapping[str, JSON]]
    ) -> list[dict[str, JSON]]:
        """Every record of a list method, following `next` (50 per page)."""
        records: list[dict[str, JSON]] = []
        start = 0
        for _ in range(MAX_PAGES):
            result, following = await self.call(api_method, operation, params(start))
            records.extend(record for record in bx.as_list(result) if isinstance(record, dict))
            if not isinstance(following, int) or following <= start:
                break
            start = following
        return records

    def raise_for(self, answer: BatchAnswer, keys: Sequence[str], operation: str) -> None:
        """The error of the first of `keys` that failed or did not run."""
        for key in keys:
            error = answer.errors.get(key)
            if error is not None:
                raise self.command_error(operation, key, error)
            if key not in answer.results:
                raise TransientCrmError(self.crm, f"{operation} [{key}]: did not run")

    def command_error(self, operation: str, key: str, error: Mapping[str, JSON]) -> CrmError:
        code = bx.text(error.get("error"))
        description = bx.text(error.get("error_description"))
        message = f"{operation} [{key}]: {code + ': ' if code else ''}{description}"[:300]
        if code in RATE_CODES:
            return RateLimited(self.crm, message)
        if code in AUTH_CODES:
            return AuthError(self.crm, message)
        if code in TRANSIENT_CODES:
            return TransientCrmError(self.crm, message)
        return PermanentCrmError(self.crm, message)
