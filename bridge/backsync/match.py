"""Constant-time comparison of a presented secret against every active one (rotation)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def matches_any(given: str | bytes, candidates: Iterable[str | bytes]) -> bool:
    """True when `given` equals any non-empty candidate. Every candidate is compared,
    without stopping at a match, so the time taken tells nothing about which one matched;
    `hmac.compare_digest` keeps each comparison independent of where the bytes differ."""
    presented = _bytes(given)
    matched = False
    for candidate in candidates:
        expected = _bytes(candidate)
        if expected:
            matched |= hmac.compare_digest(presented, expected)
    return matched


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
