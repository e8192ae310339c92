"""Requests the Zoho adapter sends, checked against Zoho's published v8 OpenAPI files.

The files (`zoho/crm-oas`, v8.0) are reference data outside the repository
(`../shared/specs/zoho/v8.0`). `ZohoOpenApi.load()` raises `SpecsMissing` when they are
not there: a conformance test must fail then, never pass by checking nothing.
`ZohoOpenApi.beside_shared()` is what the per-test fixtures use: the same, except that a
clone with no `../shared` folder at all (a checkout away from the reference data) checks
nothing, as the Pipedrive checks do, so that such a clone's suite can still pass.

`problems(request)` says what in one request the files do not allow:
- the path and method are an operation of some file (cross-file `$ref`s are absolute
  URLs of the upstream repository: they are resolved in the local folder; the one
  dangling parameter `$ref` of notes.json is ignored); where several operations match
  (record.json and module_search.json both describe `…/search`), the request must suit
  one of them;
- every query parameter is declared for that operation, once, with a value of its type;
  required ones are present (module_search.json's required `per_page` is not required
  by record.json's twin, so a search without it passes through that one);
- credentials: `Authorization: Zoho-oauthtoken …` (the `iam-oauth2-schema`), never a
  token in the query;
- a JSON body is valid against the operation's `requestBody` schema with every
  `required` list dropped (the files mark response-only fields such as `id` or
  `Created_Time` as required) and `nullable` as JSON Schema's "null" type;
- a composite call's sub-requests are each checked the same way, as requests of their
  own (`@{…}` references stand for a record id);
- the OAuth token endpoint (`POST /oauth/v2/token`, named by the files' security scheme)
  gets a form body with `grant_type` and the client's credentials, none of it in the URL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx

from tests.fakes.openapi_check import (
    Doc,
    nullable_as_null,
    path_problems,
    query_problems,
    request_body_problems,
    template_regex,
    value_problem,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
SPECS = SHARED / "specs" / "zoho" / "v8.0"
UPSTREAM = "https://raw.githubusercontent.com/Zohocorp-Pvt-Ltd/crm-oas/refs/heads/main/v8.0/"
TOKEN_PATH = "/oauth/v2/token"
REFERENCE = re.compile(r"@\{[^}]*\}")


class SpecsMissing(AssertionError):
    """The shared spec folder is not where the tests expect it."""


class ZohoOpenApi:
    def __init__(self, docs: dict[str, Doc]) -> None:
        self.docs = docs
        self._templates = sorted(
            (
                (name, template, template_regex(template))
                for name, doc in docs.items()
                for template in doc.get("paths", {})
            ),
            key=lambda entry: entry[1].count("{"),  # literal segments first
        )

    @classmethod
    def beside_shared(cls) -> ZohoOpenApi | None:
        """`load()`, or None when no `../shared` folder is beside this clone at all."""
        return cls.load() if SHARED.is_dir() else None

    @classmethod
    def load(cls) -> ZohoOpenApi:
        files = sorted(SPECS.glob("*.json")) if SPECS.is_dir() else []
        if not files:
            raise SpecsMissing(f"Zoho's v8 OpenAPI files are not at {SPECS}")
        return _load_cached(tuple(files))

    def operations(self, method: str, path: str) -> list[tuple[str, str, Doc]]:
        found = []
        for name, template, pattern in self._templates:
            item = self.docs[name]["paths"][template]
            if pattern.fullmatch(path) and method.lower() in item:
                found.append((name, template, item))
        return found

    def problems(self, request: httpx.Request) -> list[str]:
        where = f"{request.method} {request.url.path}"
        if request.url.path == TOKEN_PATH:
            return [f"{where}: {p}" for p in _token_problems(request)]
        reports = [
            self._problems(name, template, item, request)
            for name, template, item in self.operations(request.method, request.url.path)
        ]
        if not reports:
            return [f"{where}: no such operation in Zoho's v8 OpenAPI files"]
        return [f"{where}: {problem}" for problem in min(reports, key=len)]

    def _problems(self, name: str, template: str, item: Doc, request: httpx.Request) -> list[str]:
        operation = item[request.method.lower()]
        params = self._parameters(name, item, operation)

        def problem_of(param: Doc, value: str) -> str | None:
            return value_problem(
                self.json_schema(param["__doc"], param.get("schema", {})), param, value
            )

        def declared(where: str) -> dict[str, Doc]:
            return {key: param for (kind, key), param in params.items() if kind == where}

        found = list(query_problems(declared("query"), request.url, problem_of))
        found += path_problems(template, request.url.path, declared("path"), problem_of)
        found += _auth_problems(request)
        found += self._body_problems(name, operation, request)
        return found

    def _parameters(self, name: str, item: Doc, operation: Doc) -> dict[tuple[str, str], Doc]:
        params: dict[tuple[str, str], Doc] = {}
        for raw in [*item.get("parameters", []), *operation.get("parameters", [])]:
            try:
                doc, param = self.resolve(name, raw)
            except KeyError:
                continue  # notes.json's dangling If-Modified-Since: a header we never send
            params[(param["in"], param["name"])] = {**param, "__doc": doc}
        return params

    def _body_problems(self, name: str, operation: Doc, request: httpx.Request) -> Iterator[str]:
        doc, declared = self.resolve(name, operation.get("requestBody"))

        def sub_requests(body: Any) -> Iterator[str]:
            if request.url.path.endswith("/__composite_requests") and isinstance(body, dict):
                for index, sub in enumerate(body.get("__composite_requests") or ()):
                    for problem in self._sub_request_problems(sub, request):
                        yield f"sub-request {index + 1}: {problem}"

        def schema_of(schema: Any) -> Any:
            return self.json_schema(doc, schema)

        return request_body_problems(declared, request, schema_of, sub_requests)

    def _sub_request_problems(self, sub: Any, outer: httpx.Request) -> list[str]:
        if not isinstance(sub, dict) or not isinstance(sub.get("uri"), str):
            return ["not a sub-request"]
        uri = REFERENCE.sub("5725767000000000001", sub["uri"])
        params = {
            k: REFERENCE.sub("5725767000000000001", str(v))
            for k, v in (sub.get("params") or {}).items()
        }
        body = sub.get("body")
        inner = httpx.Request(
            str(sub.get("method", "")),
            str(outer.url.copy_with(path=uri.split("?")[0], query=None)),
            params=params,
            headers={"Authorization": outer.headers.get("authorization", "")},
            content=None if body is None else json.dumps(body).encode(),
        )
        if body is not None:
            inner.headers["content-type"] = "application/json"
        return self.problems(inner)

    # ---- $refs across files --------------------------------------------------------------

    def resolve(self, name: str, node: Any) -> tuple[str, Any]:
        """(file, node) with a top-level `$ref` followed, across files."""
        while isinstance(node, dict) and "$ref" in node:
            name, node = self._target(name, node["$ref"])
        return name, node

    def _target(self, name: str, ref: str) -> tuple[str, Any]:
        where, _, pointer = ref.partition("#")
        if where:
            if not where.startswith(UPSTREAM):
                raise KeyError(ref)
            name = where[len(UPSTREAM) :]
        node: Any = self.docs[name]
        for part in pointer.lstrip("/").split("/") if pointer.strip("/") else []:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return name, node

    def json_schema(self, name: str, node: Any, seen: tuple[str, ...] = ()) -> Any:
        """An OpenAPI 3.0 request schema as JSON Schema: `$ref`s inlined across files (a
        cycle becomes `{}`), `nullable` as a "null" type, every `required` dropped."""
        if isinstance(node, list):
            return [self.json_schema(name, item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            key = f"{name}{node['$ref']}" if node["$ref"].startswith("#") else node["$ref"]
            if key in seen:
                return {}
            target_name, target = self._target(name, node["$ref"])
            return self.json_schema(target_name, target, (*seen, key))
        out = {
            key: self.json_schema(name, value, seen)
            for key, value in node.items()
            if key not in ("required", "example", "examples")
        }
        return nullable_as_null(out)


@cache
def _load_cached(files: tuple[Path, ...]) -> ZohoOpenApi:
    return ZohoOpenApi({path.name: json.loads(path.read_text(encoding="utf-8")) for path in files})


def _auth_problems(request: httpx.Request) -> Iterator[str]:
    if not request.headers.get("authorization", "").startswith("Zoho-oauthtoken "):
        yield "no `Authorization: Zoho-oauthtoken …` header (iam-oauth2-schema)"
    if any(key in request.url.params for key in ("access_token", "authtoken", "oauth_token")):
        yield "a token in the query string"


def _token_problems(request: httpx.Request) -> Iterator[str]:
    if request.method != "POST":
        yield "the token endpoint takes POST"
    if request.url.query:
        yield "parameters in the URL (secrets would reach access logs): send a form body"
    media = request.headers.get("content-type", "").split(";")[0].strip()
    if media != "application/x-www-form-urlencoded":
        yield f"content type {media!r}: the token endpoint takes a form"
        return
    form = dict(parse_qsl(request.content.decode()))
    grant = form.get("grant_type")
    needed = {"authorization_code": ("code",), "refresh_token": ("refresh_token",)}
    if grant not in needed:
        yield f"grant_type {grant!r} is not authorization_code or refresh_token"
        return
    for key in ("client_id", "client_secret", *needed[grant]):
        if not form.get(key):
            yield f"form field {key!r} is missing"
