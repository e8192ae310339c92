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
_EMAIL = re.compile(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+)")
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
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = None
        return True


def configure_logging(level: str) -> None:
    """Plain lines on stderr: journald adds the time, unit and priority itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
