"""A source's body, decoded into the document its expressions read.

JSON as JSON (with the bounds the payment route applies); form-encoded bodies the way PHP
reads them, since the platforms that send them are PHP's heirs: `a[b][0][c]=1` is
`{"a": {"b": [{"c": "1"}]}}`, `a[]=x&a[]=y` is a list, a key seen again wins. Every form
value is text; the mapping converts what it needs.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from bridge.canonical import MAX_INT_DIGITS

# Deeper nesting than any platform sends; bounds the work one request can ask for.
MAX_DEPTH = 32
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


class BodyError(Exception):
    """The body is not in the source's format; the message is safe to answer with."""


def decode_body(kind: str, text: str) -> object:
    if kind == "form":
        return decode_form(text)
    return decode_json(text)


def decode_json(text: str) -> object:
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise BodyError("body is not JSON we accept: nested too deep") from exc
    except _NumberTooLong as exc:
        raise BodyError(
            f"body is not JSON we accept: a whole number over {MAX_INT_DIGITS} digits"
        ) from exc


class _NumberTooLong(Exception):
    pass


def _bounded_int(text: str) -> int:
    # Python's int() refuses past 4 300 digits (ValueError): refused here, as a 400.
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise _NumberTooLong
    return int(text)


def decode_form(text: str) -> dict[str, Any]:
    """`application/x-www-form-urlencoded`, nested keys expanded."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError("body is not form-encoded: a value is not UTF-8") from exc
    root = form_tree(pairs)
    if root is None:
        raise BodyError(f"body is not form data we accept: a key nested over {MAX_DEPTH}")
    return _listed(root)  # type: ignore[return-value]


def form_tree(pairs: list[tuple[str, str]], max_depth: int = MAX_DEPTH) -> dict[str, Any] | None:
    """Form pairs as PHP nests them (`a[b][0]` a table under a table; `a[]` the next
    number), numbered keys kept as keys; None when a key is nested deeper than
    `max_depth`. Shared with back-sync's CRM events (bridge.backsync.form)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        path = _key_path(key)
        if len(path) > max_depth:
            return None
        _put(root, path, value)
    return root


def _key_path(key: str) -> list[str | None]:
    """`a[b][]` → ["a", "b", None]; a key that is not PHP's nested form stays whole."""
    head, bracket, rest = key.partition("[")
    if not bracket or not head:
        return [key]
    parts = _BRACKETS.findall("[" + rest)
    if "".join(f"[{part}]" for part in parts) != "[" + rest:
        return [key]
    return [head, *(part or None for part in parts)]


def _put(node: dict[str, Any], path: list[str | None], value: str) -> None:
    for index, part in enumerate(path):
        last = index == len(path) - 1
        # `a[]`: the next free position, numbered like PHP's own
        name = str(len(node)) if part is None else part
        if last:
            node[name] = value
            return
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child


def _listed(value: object) -> object:
    """Tables whose keys are 0, 1, 2 ... in order become lists, as JSON would send them."""
    if not isinstance(value, dict):
        return value
    items = {key: _listed(item) for key, item in value.items()}
    if items and list(items) == [str(number) for number in range(len(items))]:
        return list(items.values())
    return items
