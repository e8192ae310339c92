"""Note text ↔ HTML, for the CRMs whose notes are HTML (HubSpot, Pipedrive).

`note_html` escapes each line, keeps leading spaces (as `&nbsp;`, which HTML would
otherwise collapse) and joins lines with <br>, so the note reads as written; `note_text`
gives that text back, and reads notes typed in the CRM's editor too (paragraphs, lists).
"""

from __future__ import annotations

import html
import re

_BREAKS = re.compile(r"<br\s*/?>|</(?:p|div|li|h[1-6])\s*>", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]*>")


def note_html(text: str) -> str:
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        body = line.lstrip(" ")
        lines.append("&nbsp;" * (len(line) - len(body)) + html.escape(body, quote=False))
    return "<br>".join(lines)


def note_text(body: str) -> str:
    """A note's text from its HTML, one line per line break or paragraph."""
    text = _BREAKS.sub("\n", body.replace("\r\n", "\n"))
    text = html.unescape(_TAGS.sub("", text)).replace("\xa0", " ")
    return text.rstrip("\n")
