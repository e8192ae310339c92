"""README.md renders as intended on any CommonMark renderer (issue 13, item 17): a code
fence closed mid-line once turned every section after "Running under systemd" into one
code block."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_section_heading_renders_as_a_heading() -> None:
    tokens = MarkdownIt("commonmark").parse(README)
    rendered = {
        tokens[i + 1].content for i, token in enumerate(tokens) if token.type == "heading_open"
    }
    # Every line that looks like a heading outside a fenced block of the source.
    written = set(re.findall(r"(?m)^#{1,6} (.+)$", re.sub(r"(?ms)^```.*?^```$", "", README)))
    assert written <= rendered, written - rendered
    assert {"Running under systemd", "Logs", "Decisions the specification left open"} <= rendered


def test_code_fences_open_and_close_on_lines_of_their_own() -> None:
    for number, line in enumerate(README.splitlines(), 1):
        if "```" in line:
            assert re.fullmatch(r"```[a-z]*", line), f"README.md:{number}: {line!r}"
