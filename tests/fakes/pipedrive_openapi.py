"""Requests the Pipedrive adapter sends, checked against Pipedrive's published OpenAPI files.

`RecordingTransport` (`tests.fakes.openapi_check`) keeps every request a fake's transport
saw. `PipedriveOpenApi.problems(request)` says what in one request the
OpenAPI files do not allow:
- the path and method are an operation (`/api/v2/...` in v2.yaml, `/api/v1/...` or
  `/v1/...` and the OAuth host's `/oauth/token` in v1.yaml);
- every query parameter is declared for that operation, once, with a value of its type
  (integer, number, `true`/`false`, an enum member or a comma-separated list of them,
  a date); required ones are present; path parameters have their type;
- the credentials are what the operation's security allows (`x-api-token` or a Bearer
  token; HTTP Basic for the token endpoint), never an `api_token` query parameter;
- a body has a declared content type and is valid against the operation's
  `requestBody` schema (`$ref`s resolved within the file, OpenAPI's `nullable` turned into
  JSON Schema), and names no top-level property the schema does not declare (unless it
  allows additional properties).

The files are reference data kept outside the repository (`../shared/specs/pipedrive`);
`PipedriveOpenApi.load()` returns None when they are not there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import yaml

from tests.fakes.openapi_check import RecordingTransport as RecordingTransport
from tests.fakes.openapi_check import (
    body_problems,
    nullable_as_null,
    path_problems,
    query_problems,
    template_regex,
    value_problem,
)

SPECS = Path(__file__).resolve().parents[3] / "shared" / "specs" / "pipedrive" / "openapi"
FILES = {"v1": SPECS / "upstream" / "v1.yaml", "v2": SPECS / "upstream" / "v2.yaml"}
METHODS = ("get", "post", "put", "patch", "delete")
Doc = dict[str, Any]


class Operation:
    def __init__(self, doc: Doc, template: str, method: str) -> None:
        self.doc, self.template, self.method = doc, template, method
        item = doc["paths"][template]
        self.spec: Doc = item[method]
        params: dict[tuple[str, str], Doc] = {}
        for raw in [*item.get("parameters", []), *self.spec.get("parameters", [])]:
            param = resolve(doc, raw)
            params[(param["in"], param["name"])] = param
        self.params = params

    @property
    def token_cost(self) -> int:
        return int(self.spec["x-token-cost"])

    def declared(self, where: str) -> dict[str, Doc]:
        return {name: p for (kind, name), p in self.params.items() if kind == where}


class PipedriveOpenApi:
    def __init__(self, docs: dict[str, Doc]) -> None:
        self.docs = docs
        self._patterns = {
            version: sorted(
                ((template, template_regex(template)) for template in doc["paths"]),
                key=lambda pair: pair[0].count("{"),  # literal segments win: /persons/search
            )
            for version, doc in docs.items()
        }

    @classmethod
    def load(cls) -> PipedriveOpenApi | None:
        if not all(path.exists() for path in FILES.values()):
            return None
        return _load_cached()

    def operation(self, method: str, url: httpx.URL | str) -> Operation | None:
        candidates = self.operations(method, url)
        return candidates[0] if candidates else None

    def operations(self, method: str, url: httpx.URL | str) -> list[Operation]:
        """The operations a request may be; the OAuth endpoint is described twice, once
        per grant (`/oauth/token` for the code, `/oauth/token/` for a refresh)."""
        url = httpx.URL(str(url))
        version, path = _split(url)
        if version is None:
            return []
        doc = self.docs[version]
        found = []
        for candidate in (path, path + "/"):
            for template, pattern in self._patterns[version]:
                if pattern.fullmatch(candidate) and method.lower() in doc["paths"][template]:
                    found.append(Operation(doc, template, method.lower()))
                    break
        return found

    def problems(self, request: httpx.Request) -> list[str]:
        where = f"{request.method} {request.url.path}"
        reports = [
            self._problems(op, request) for op in self.operations(request.method, request.url)
        ]
        if not reports:
            return [f"{where}: no such operation in Pipedrive's OpenAPI files"]
        fewest = min(reports, key=len)
        return [f"{where}: {problem}" for problem in fewest]

    def _problems(self, operation: Operation, request: httpx.Request) -> list[str]:
        found = list(_query_problems(operation, request.url))
        found += _path_problems(operation, request.url)
        found += _header_problems(operation, request)
        found += _auth_problems(operation, request)
        found += _body_problems(operation, request)
        return found


@cache
def _load_cached() -> PipedriveOpenApi:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = {}
    for version, path in FILES.items():
        with path.open(encoding="utf-8") as handle:
            docs[version] = yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader
    return PipedriveOpenApi(docs)


def _split(url: httpx.URL) -> tuple[str | None, str]:
    path = url.path
    if path == "/oauth/token" or url.host == "oauth.pipedrive.com":
        return "v1", path
    for prefix, version in (("/api/v2", "v2"), ("/api/v1", "v1"), ("/v1", "v1")):
        if path.startswith(prefix + "/"):
            return version, path[len(prefix) :]
    return None, path


# ---- parameters ---------------------------------------------------------------------


def _query_problems(operation: Operation, url: httpx.URL) -> Iterator[str]:
    def problem_of(param: Doc, value: str) -> str | None:
        return _value_problem(operation.doc, param, value)

    return query_problems(operation.declared("query"), url, problem_of)


def _path_problems(operation: Operation, url: httpx.URL) -> Iterator[str]:
    def problem_of(param: Doc, value: str) -> str | None:
        return _value_problem(operation.doc, param, value)

    _, path = _split(url)
    return path_problems(operation.template, path, operation.declared("path"), problem_of)


def _value_problem(doc: Doc, param: Doc, value: str) -> str | None:
    return value_problem(to_json_schema(doc, param.get("schema", {})), param, value)


def _header_problems(operation: Operation, request: httpx.Request) -> Iterator[str]:
    for name, param in operation.declared("header").items():
        if param.get("required") and name not in request.headers:
            yield f"required header {name!r} is missing"


def _auth_problems(operation: Operation, request: httpx.Request) -> Iterator[str]:
    schemes = {name for option in operation.spec.get("security", []) for name in option}
    headers = request.headers
    bearer = headers.get("authorization", "").startswith("Bearer ")
    basic = headers.get("authorization", "").startswith("Basic ")
    allowed = (
        ("api_key" in schemes and "x-api-token" in headers)
        or ("oauth2" in schemes and bearer)
        or ("basic_authentication" in schemes and basic)
    )
    if schemes and not allowed:
        yield f"credentials not allowed by its security {sorted(schemes)}"


# ---- bodies -------------------------------------------------------------------------


def _body_problems(operation: Operation, request: httpx.Request) -> Iterator[str]:
    declared = operation.spec.get("requestBody")
    content = request.content
    if declared is None:
        if content:
            yield "has a body but the operation takes none"
        return
    declared = resolve(operation.doc, declared)
    if not content:
        if declared.get("required"):
            yield "the operation requires a body"
        return
    media = request.headers.get("content-type", "").split(";")[0].strip()
    if media not in declared["content"]:
        yield f"content type {media!r} is not one of {sorted(declared['content'])}"
        return
    if media == "application/json":
        try:
            body = json.loads(content)
        except ValueError:
            yield "body is not JSON"
            return
    else:
        body = dict(parse_qsl(content.decode()))
    schema = to_json_schema(operation.doc, declared["content"][media].get("schema", {}))
    yield from body_problems(schema, body)


def resolve(doc: Doc, node: Any) -> Any:
    """`node` with a top-level `$ref` (into this document) followed."""
    while isinstance(node, dict) and "$ref" in node:
        node = _pointer(doc, node["$ref"])
    return node


def to_json_schema(doc: Doc, node: Any, seen: tuple[str, ...] = ()) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema: `$ref`s inlined (a cycle becomes `{}`),
    `nullable: true` as a "null" type."""
    if isinstance(node, list):
        return [to_json_schema(doc, item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        return {} if ref in seen else to_json_schema(doc, _pointer(doc, ref), (*seen, ref))
    out = {key: to_json_schema(doc, value, seen) for key, value in node.items()}
    return nullable_as_null(out)


def _pointer(doc: Doc, ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only in-file $refs are expected, not {ref}")
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
