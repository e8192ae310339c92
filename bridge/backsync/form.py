"""Form bodies the way PHP reads them: `leads[status][0][id]=1` is
`{"leads": {"status": {"0": {"id": "1"}}}}`.

amoCRM and Bitrix24 post `application/x-www-form-urlencoded` bodies built by PHP's
`http_build_query`. The same design as the source mappings' decoder (branch `sources`,
`bridge/sources/body.py`), kept smaller: numbered keys stay keys (the parsers iterate
tables, they do not need lists), and `a[]` takes the next number as PHP does.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from bridge.backsync.events import Malformed

# Deeper than any CRM sends; bounds the work one request can ask for.
MAX_DEPTH = 16
MAX_FIELDS = 10_000
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")

Form = dict[str, "FormValue"]
FormValue = str | Form


def decode_form(body: bytes) -> Form:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Malformed("body is not a UTF-8 form (application/x-www-form-urlencoded)") from exc
    root: Form = {}
    for key, value in pairs:
        path = _key_path(key)
        if len(path) > MAX_DEPTH:
            raise Malformed(f"form key nested deeper than {MAX_DEPTH}")
        _put(root, path, value)
    return root


def table(node: FormValue | None) -> Form:
    """The table at `node`, or an empty one when it is absent or a plain value."""
    return node if isinstance(node, dict) else {}


def text(node: FormValue | None) -> str | None:
    return node if isinstance(node, str) else None


def _key_path(key: str) -> list[str | None]:
    """`a[b][]` → ["a", "b", None]; a key that is not PHP's nested form stays whole."""
    head, bracket, rest = key.partition("[")
    if not bracket or not head:
        return [key]
    parts = _BRACKETS.findall("[" + rest)
    if "".join(f"[{part}]" for part in parts) != "[" + rest:
        return [key]
    return [head, *(part or None for part in parts)]


def _put(node: Form, path: list[str | None], value: str) -> None:
    for index, part in enumerate(path):
        name = str(len(node)) if part is None else part
        if index == len(path) - 1:
            node[name] = value  # a key seen again wins, as in PHP
            return
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
