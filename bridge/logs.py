"""Logging for journald: one line per outcome, personal data masked, secrets never.

Messages are built by the bridge from masked values; `MaskingFilter` is the second
line of defence and masks anything that still looks like a phone number, an e-mail
address or a bearer token, whatever logger it comes from.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

_PHONE = re.compile(r"\+\d{10,15}|(?<![\w.])[78]\d{10}(?!\d)")
# An e-mail address: a run of local-part characters, `@`, a domain. As one plain pattern
# (`[local]+@[domain]+`) a long run with no `@` was rescanned from each of its characters:
# quadratic, and 40 KB of one letter held the event loop for seconds. `_email_matches`
# finds the same matches in linear time (see there).
_LOCAL = r"[A-Za-z0-9._%+\-]"
_EMAIL_AT = re.compile(rf"({_LOCAL}){_LOCAL}*@([A-Za-z0-9.\-]+)")
# The same, starting only where a run of local-part characters starts.
_EMAIL = re.compile(rf"(?<!{_LOCAL}){_EMAIL_AT.pattern}")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+")


def mask_phone(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    if len(digits) < 6:
        return "***"
    return f"+{digits[:1]}***{digits[-2:]}"


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_keys(keys: Iterable[str]) -> str:
    """`kind:value` customer keys, masked: phone and e-mail never appear in full."""
    masked = []
    for key in keys:
        kind, _, value = key.partition(":")
        if kind == "phone":
            value = mask_phone(value)
        elif kind == "email":
            value = mask_email(value)
        masked.append(f"{kind}:{value}")
    return ",".join(masked) or "-"


def mask_text(text: str) -> str:
    text = _BEARER.sub(r"\1***", text)
    text = _email_masked(text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


# Longest message a log line carries (characters, after masking); the rest is cut with a
# note of how much. Values are clipped where they are logged too (`clip`); this is the
# bound for whatever else reaches a logger.
MAX_MESSAGE_CHARS = 2000
# C0 and C1 control characters, DEL and the Unicode line/paragraph separators: a newline
# in a logged value would start a forged journal entry, ANSI escapes repaint a terminal,
# NUL cuts a line in some readers. Each is written as a visible escape instead.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clip(value: object, limit: int = 80) -> str:
    """`value` as text of at most `limit` characters (plus a note), for a log line."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more]"


def escape_controls(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\n`, `\\x1b`)."""
    if text.isprintable():  # the usual case, checked in C
        return text
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group(0)
    return char.encode("unicode_escape").decode("ascii")


def _email_masked(text: str) -> str:
    """Each e-mail address as `f***@domain`, in linear time.

    A leftmost match always starts where a run of local-part characters starts (any
    later start in the run reaches the same `@`), so only run starts are tried, each
    run once: `_EMAIL`'s lookbehind. One exception: a domain may end inside such a run
    (`a@b.c_d@e.f`: the domain `b.c` stops at `_`), and the next address starts right
    there; `_EMAIL_AT` is tried at that point first."""
    if "@" not in text:
        return text
    parts: list[str] = []
    pos = 0
    after_match = False
    while True:
        found = _EMAIL_AT.match(text, pos) if after_match else None
        if found is None:
            found = _EMAIL.search(text, pos)
        if found is None:
            break
        parts += [text[pos : found.start()], found.group(1), "***@", found.group(2)]
        pos = found.end()
        after_match = True
    parts.append(text[pos:])
    return "".join(parts)


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Cut before masking too, so the masking's (linear) cost is bounded as well.
        text = record.getMessage()[: 32 * MAX_MESSAGE_CHARS]
        record.msg = clip(mask_text(text), MAX_MESSAGE_CHARS)
        record.args = None
        return True


class OneLineFormatter(logging.Formatter):
    """Every record is one journal entry: control characters in the message are escaped,
    and the lines of a traceback each start with `  | ` so none can pass for a record."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        line = f"{record.levelname} {record.name}: {message}"
        extra = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for block in extra:
            for part in block.splitlines():
                line += "\n  | " + escape_controls(mask_text(part))
        return line


def configure_logging(level: str) -> None:
    """Plain lines on stderr: journald adds the time, unit and priority itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
