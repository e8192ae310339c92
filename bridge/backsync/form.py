"""Form bodies the way PHP reads them: `leads[status][0][id]=1` is
`{"leads": {"status": {"0": {"id": "1"}}}}`.

amoCRM and Bitrix24 post `application/x-www-form-urlencoded` bodies built by PHP's
`http_build_query`. The nesting is the source mappings' (`bridge.sources.body.form_tree`);
numbered keys stay keys here (the parsers iterate tables, they need no lists).
"""

from __future__ import annotations

from typing import cast
from urllib.parse import parse_qsl

from bridge.backsync.events import Malformed
from bridge.sources.body import form_tree

# Deeper than any CRM sends; bounds the work one request can ask for.
MAX_DEPTH = 16
MAX_FIELDS = 10_000

Form = dict[str, "FormValue"]
FormValue = str | Form


def decode_form(body: bytes) -> Form:
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Malformed("body is not a UTF-8 form (application/x-www-form-urlencoded)") from exc
    root = form_tree(pairs, MAX_DEPTH)
    if root is None:
        raise Malformed(f"form key nested deeper than {MAX_DEPTH}")
    return cast(Form, root)


def table(node: FormValue | None) -> Form:
    """The table at `node`, or an empty one when it is absent or a plain value."""
    return node if isinstance(node, dict) else {}


def text(node: FormValue | None) -> str | None:
    return node if isinstance(node, str) else None
