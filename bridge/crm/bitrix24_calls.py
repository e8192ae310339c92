"""Calling Bitrix24 REST methods through the connection: one method, a batch, a paged list,
and the batch forms' groups of commands spread over as few batches as fit.

Reads go out as GET with PHP-style query parameters, so `CrmHttp` may retry them after a
5xx or a timeout; writes as POST with a JSON body, never repeated blindly. A method's
refusal is an HTTP error (`CrmHttp` maps it); a `batch` answers 200 and reports each
command's error in `result_error`, which `command_error` maps here: QUERY_LIMIT_EXCEEDED
and OPERATION_TIME_LIMIT are `RateLimited`, credential refusals `AuthError`, an internal
error transient, anything else (a field or value Bitrix refuses) permanent.

What `batch` does, from the rest module's own source (CRestProvider::methodsBatch,
CRestUtil::processBatchElement): commands run in order; a failed one leaves no `result`
entry, only its `result_error`; `halt` is read as PHP's `(bool)`, so `halt=0` runs every
command whatever failed before it, and a true `halt` stops after the first error (the
commands after it neither run nor answer); the 51st command on answers
ERROR_BATCH_LENGTH_EXCEEDED in `result_error`; and a `$result[key]` of a command that
failed resolves to the nearest array (the results so far), never to an error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

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
    # The commands whose list has a next page: the `start` of that page (`result_next`
    # [dev.1c-bitrix.ru rest_help/general/lists.php: batch answers result_next per command]).
    more: Mapping[str, JSON]

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
        self,
        commands: Commands,
        operation: str,
        *,
        write: bool = False,
        halt: bool | None = None,
        post: bool = False,
    ) -> BatchAnswer:
        """Up to 50 commands in one request, run in order; `$result[key]` in a command's
        parameters is the result of an earlier one. `halt` (by default: for writes) stops
        at the first error. A read goes as GET unless `post`: a batch of many customers'
        commands may not fit in a URL, so it travels as a POST that only reads."""
        if len(commands) > MAX_COMMANDS:
            raise ValueError(f"{operation}: {len(commands)} batch commands, at most 50")
        halt = write if halt is None else halt
        cmd = {key: bx.command(method, params) for key, (method, params) in commands.items()}
        if write or post:
            payload = {"halt": int(halt), "cmd": cmd}
            body = await self._send(
                "POST", "batch.json", operation, json=payload, idempotent=not write
            )
        else:
            query = [("halt", str(int(halt))), *((f"cmd[{k}]", value) for k, value in cmd.items())]
            body = await self._send("GET", "batch.json", operation, params=query)
        with self.reading(operation):
            outer = bx.as_map(bx.as_map(body)["result"])
            errors = bx.as_map(outer.get("result_error"))
            return BatchAnswer(
                bx.as_map(outer.get("result")),
                {key: bx.as_map(error) for key, error in errors.items()},
                bx.as_map(outer.get("result_next")),
            )

    async def read_groups(self, groups: Sequence[Commands], operation: str) -> list[BatchAnswer]:
        """Each group's answer (see `write_groups`); any request's error is raised."""
        answers: list[BatchAnswer] = []
        for chunk in _packed(groups, range(len(groups))):
            commands = {key: c for index in chunk for key, c in groups[index].items()}
            answer = await self.batch(commands, operation, post=True)
            answers += [answer] * len(chunk)
        return answers

    async def write_groups(
        self, groups: Sequence[Commands], operation: str, *, halt: bool = False
    ) -> list[BatchAnswer | CrmError]:
        """Per group of commands (one item's: never split, its `$result` references point
        inside it), the answer of the request it went in, in as few requests as fit 50
        commands each. With `halt`, the groups a failed command stopped go in the next
        request. The first request's own error is raised, as a call's: nothing was applied
        before it. A later one's is the error of its groups and of those not sent yet,
        while the groups before it keep their answers (their writes were applied)."""
        outcome: list[BatchAnswer | CrmError | None] = [None] * len(groups)
        pending = deque(range(len(groups)))
        answered = False
        while pending:
            [chunk] = _packed(groups, pending, first_only=True)
            for _ in chunk:
                pending.popleft()
            commands = {key: c for index in chunk for key, c in groups[index].items()}
            try:
                answer = await self.batch(commands, operation, write=True, halt=halt)
            except CrmError as exc:
                error = self.lost_write(exc)
                if not answered and error is exc:
                    raise
                if not answered:
                    raise error from exc
                for index in [*chunk, *pending]:
                    outcome[index] = error
                break
            answered = True
            stopped = [i for i in chunk if not _ran(answer, groups[i])]
            for index in chunk:
                outcome[index] = answer
            if halt and len(stopped) < len(chunk):
                # Halted by an earlier group's error: these never ran, so they go again.
                pending.extendleft(reversed(stopped))
        return [answer for answer in outcome if answer is not None]

    def lost_write(self, exc: CrmError) -> CrmError:
        """A batch of writes that failed as a whole: a 5xx may come after some of its
        commands ran (`CrmHttp` calls only a lost answer maybe-applied), a connection that
        was refused never reached Bitrix."""
        if (
            type(exc) is not TransientCrmError
            or exc.maybe_applied
            or isinstance(exc.__cause__, httpx.ConnectError)
        ):
            return exc
        return TransientCrmError(self.crm, exc.message, maybe_applied=True)

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
        error = self.item_error(answer, keys, operation)
        if error is not None:
            raise error

    def item_error(
        self, answer: BatchAnswer, keys: Sequence[str], operation: str
    ) -> CrmError | None:
        """What `raise_for` raises, as one item's error in a batch form."""
        for key in keys:
            error = answer.errors.get(key)
            if error is not None:
                return self.command_error(operation, key, error)
            if key not in answer.results:
                return TransientCrmError(self.crm, f"{operation} [{key}]: did not run")
        return None

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


def _ran(answer: BatchAnswer, group: Commands) -> bool:
    return any(key in answer.results or key in answer.errors for key in group)


def _packed(
    groups: Sequence[Commands], order: Sequence[int], *, first_only: bool = False
) -> list[list[int]]:
    """`order`'s groups in requests of up to MAX_COMMANDS commands, in order."""
    chunks: list[list[int]] = []
    size = MAX_COMMANDS
    for index in order:
        count = len(groups[index])
        if count > MAX_COMMANDS:
            raise ValueError(f"{count} commands for one item, at most {MAX_COMMANDS}")
        if size + count > MAX_COMMANDS:
            if first_only and chunks:
                break
            chunks.append([])
            size = 0
        chunks[-1].append(index)
        size += count
    return chunks
