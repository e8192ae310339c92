"""What checking a request against a vendor's OpenAPI document needs, whatever the vendor.

- `RecordingTransport` wraps any transport (a fake's) and keeps every `httpx.Request`
  that went through it, body read, for the check after a test;
- `template_regex` matches a path against an OpenAPI path template;
- `query_problems` / `path_problems`: every query parameter declared, once, with a value
  of its type, the required ones present; path parameters of their type;
- `value_problem`: one parameter value against its (JSON Schema) schema: integer,
  number, true/false, an enum member (or a comma-separated list of them where the
  parameter says so), a date;
- `body_problems`: a parsed body against its (JSON Schema) schema, and no top-level
  property the schema does not name (unless it allows others); `request_body_problems`:
  a request's body against an operation's `requestBody`, parsed first.
Each vendor's module (`pipedrive_openapi`, `zoho_openapi`) finds the operation, resolves
its `$ref`s and checks credentials and bodies its own way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date
from typing import Any, Protocol
from urllib.parse import parse_qsl

import httpx
import jsonschema

Doc = dict[str, Any]
ValueProblem = Callable[[Doc, str], str | None]  # (parameter, value) → problem or None


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests on to `inner` and keeps each one (body read) in `requests`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Spec(Protocol):
    def problems(self, request: httpx.Request) -> list[str]: ...


class SentRequests(list[RecordingTransport]):
    """The recording transports of one test module; what they sent is checked after each
    test (`clear` before it)."""

    def recording(self, transport: httpx.AsyncBaseTransport) -> RecordingTransport:
        self.append(RecordingTransport(transport))
        return self[-1]

    def problems(self, spec: Spec) -> list[str]:
        return [p for rec in self for request in rec.requests for p in spec.problems(request)]

    def checked(self, load: Callable[[], Spec | None]) -> Iterator[None]:
        """An autouse fixture's body: a test's requests, then checked against `load()`'s
        spec (None: the shared specs are not checked out; a loader may raise instead)."""
        self.clear()
        yield
        spec = load()
        if spec is not None:
            assert self.problems(spec) == []


def template_regex(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)))


def query_problems(
    declared: Mapping[str, Doc], url: httpx.URL, problem_of: ValueProblem
) -> Iterator[str]:
    seen: dict[str, int] = {}
    for name, value in url.params.multi_items():
        seen[name] = seen.get(name, 0) + 1
        param = declared.get(name)
        if param is None:
            yield f"query parameter {name!r} is not declared"
            continue
        if seen[name] == 2:
            yield f"query parameter {name!r} given more than once"
        problem = problem_of(param, value)
        if problem:
            yield f"query parameter {name}={value!r}: {problem}"
    for name, param in declared.items():
        if param.get("required") and name not in seen:
            yield f"required query parameter {name!r} is missing"


def path_problems(
    template: str, path: str, declared: Mapping[str, Doc], problem_of: ValueProblem
) -> Iterator[str]:
    names = re.findall(r"\{([^}]+)\}", template)
    match = re.fullmatch(template_regex(template).pattern.replace("[^/]+", "([^/]+)"), path)
    for name, value in zip(names, match.groups() if match else (), strict=False):
        param = declared.get(name)
        problem = problem_of(param, value) if param else None
        if problem:
            yield f"path parameter {name}={value!r}: {problem}"


def value_problem(schema: Doc, param: Doc, value: str) -> str | None:
    """`value` against `schema` (already JSON Schema) of the parameter `param`."""
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "integer" in kinds and not re.fullmatch(r"-?\d+", value):
        return "not an integer"
    if "number" in kinds and not re.fullmatch(r"-?\d+(\.\d+)?", value):
        return "not a number"
    if "boolean" in kinds and value not in ("true", "false"):
        return "not true/false"
    if "enum" in schema and value not in [str(v) for v in schema["enum"]]:
        parts = value.split(",")
        listed = "comma" in str(param.get("description", "")).lower()
        if not (listed and all(part in schema["enum"] for part in parts)):
            return f"not one of {schema['enum']}"
    if schema.get("format") == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            return "not a date"
    return None


def nullable_as_null(schema: Doc) -> Doc:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's "null" type (and enum member)."""
    if schema.pop("nullable", False):
        if "type" in schema:
            schema["type"] = [schema["type"], "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    return schema


def declared_properties(schema: Doc) -> tuple[set[str], bool]:
    parts = [schema, *schema.get("allOf", [])]
    names = {name for part in parts for name in part.get("properties", {})}
    open_ended = any(part.get("additionalProperties") not in (None, False) for part in parts)
    return names, open_ended


def body_problems(schema: Doc, body: Any) -> Iterator[str]:
    for error in jsonschema.Draft4Validator(schema).iter_errors(body):
        place = "/".join(str(part) for part in error.absolute_path) or "(body)"
        yield f"body {place}: {error.message}"
    if isinstance(body, dict):
        properties, open_ended = declared_properties(schema)
        for key in body:
            if not open_ended and key not in properties:
                yield f"body property {key!r} is not declared"


def request_body_problems(
    declared: Doc | None,
    request: httpx.Request,
    schema_of: Callable[[Any], Any],
    more: Callable[[Any], Iterable[str]] = lambda body: (),
) -> Iterator[str]:
    """`request`'s body against an operation's `requestBody` (`declared`, its `$ref`
    followed; None: the operation takes no body): present only where taken, present where
    required, of a listed content type, parsed (a form as a form, anything else as JSON),
    then `body_problems` against that content's schema (`schema_of` turns it into JSON
    Schema), then what `more` finds in the parsed body."""
    content = request.content
    if declared is None:
        if content:
            yield "has a body but the operation takes none"
        return
    if not content:
        if declared.get("required"):
            yield "the operation requires a body"
        return
    media = request.headers.get("content-type", "").split(";")[0].strip()
    if media not in declared.get("content", {}):
        yield f"content type {media!r} is not one of {sorted(declared.get('content', {}))}"
        return
    if media == "application/x-www-form-urlencoded":
        body: Any = dict(parse_qsl(content.decode()))
    else:
        try:
            body = json.loads(content)
        except ValueError:
            yield "body is not JSON"
            return
    yield from body_problems(schema_of(declared["content"][media].get("schema", {})), body)
    yield from more(body)
