"""Signing and verification of webhooks: pure functions on the raw body bytes.

Accepted on inbound platform webhooks (SPEC §2), header names case-insensitive:

- ``X-Signature: <hex>`` or ``X-Signature: sha256=<hex>``: HMAC-SHA256 of the raw body
  keyed with any of the HMAC secrets;
- Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``, the
  last a space-separated list of ``v1,<base64>`` entries, any of which may match any of
  the standard secrets (``whsec_<base64>`` or plain text); the timestamp must lie within
  ``tolerance_seconds`` of ``now``, either way;
- legacy ``X-Webhook-Secret: <secret>`` equal to an HMAC secret, only when enabled.

Several secrets per scheme may be active at once (rotation); empty secrets never match.
When several schemes are present, any valid one wins; otherwise the most specific
failure is reported. A `Verdict` reason never contains a secret or an expected signature,
so it can go into the request log as it is. Nothing here reads the clock: `now` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

HMAC_HEADER = "x-signature"
LEGACY_HEADER = "x-webhook-secret"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"

_WHSEC_PREFIX = "whsec_"
_HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    scheme: str  # "hmac" | "standard" | "legacy" | "none"
    reason: str  # safe to log: never a secret, never an expected signature


# How much a failure tells the operator; the highest one is reported.
_SPECIFICITY = {
    "missing signature": 0,
    "legacy secret header disabled": 1,
    "no secret configured": 1,
    "signature malformed": 2,
    "timestamp malformed": 2,
    "timestamp too old": 3,
    "timestamp too new": 3,
    "signature mismatch": 4,
    "secret mismatch": 4,
}


def hmac_signature(body: bytes, secret: str) -> str:
    """Lower-case hex HMAC-SHA256 of `body`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret; ValueError if `whsec_` is not base64."""
    if secret.startswith(_WHSEC_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(_WHSEC_PREFIX), validate=True)
        except binascii.Error as exc:
            raise ValueError("standard webhook secret: whsec_ value is not base64") from exc
    return secret.encode()


def standard_signature(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """The ``v1,<base64>`` signature of the Standard Webhooks spec."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign_headers(
    body: bytes,
    *,
    hmac_secret: str | None,
    standard_secret: str | None,
    msg_id: str,
    now: int,
) -> dict[str, str]:
    """Headers a sender adds so that `verify` accepts `body` (one set per secret given)."""
    headers: dict[str, str] = {}
    if hmac_secret:
        headers["X-Signature"] = "sha256=" + hmac_signature(body, hmac_secret)
    if standard_secret:
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(now)
        headers["webhook-signature"] = standard_signature(msg_id, now, body, standard_secret)
    return headers


def verify(
    headers: Mapping[str, str],
    body: bytes,
    *,
    hmac_secrets: Sequence[str],
    standard_secrets: Sequence[str],
    legacy_enabled: bool,
    now: float,
    tolerance_seconds: int = 300,
) -> Verdict:
    """Check a request against every scheme whose headers it carries."""
    lowered = {name.lower(): value for name, value in headers.items()}
    verdicts: list[Verdict] = []
    if HMAC_HEADER in lowered:
        verdicts.append(_verify_hmac(lowered[HMAC_HEADER], body, hmac_secrets))
    if any(
        name in lowered
        for name in (STANDARD_ID_HEADER, STANDARD_TIMESTAMP_HEADER, STANDARD_SIGNATURE_HEADER)
    ):
        verdicts.append(_verify_standard(lowered, body, standard_secrets, now, tolerance_seconds))
    if LEGACY_HEADER in lowered:
        verdicts.append(_verify_legacy(lowered[LEGACY_HEADER], hmac_secrets, legacy_enabled))
    if not verdicts:
        return Verdict(ok=False, scheme="none", reason="missing signature")
    for verdict in verdicts:
        if verdict.ok:
            return verdict
    return max(verdicts, key=lambda verdict: _SPECIFICITY.get(verdict.reason, 0))


_HMAC_OK = Verdict(ok=True, scheme="hmac", reason="ok")
_HMAC_MISMATCH = Verdict(ok=False, scheme="hmac", reason="signature mismatch")
_HMAC_MALFORMED = Verdict(ok=False, scheme="hmac", reason="signature malformed")
_HMAC_NO_SECRET = Verdict(ok=False, scheme="hmac", reason="no secret configured")


def _verify_hmac(header: str, body: bytes, secrets: Sequence[str]) -> Verdict:
    given = header.strip()
    if given[:7].lower() == "sha256=":
        given = given[7:]
    given = given.strip().lower()
    if len(given) != 64 or not set(given) <= _HEX_DIGITS:
        return _HMAC_MALFORMED
    keys = [secret for secret in secrets if secret]
    if not keys:
        return _HMAC_NO_SECRET
    # Compared as raw digests: the same constant-time check as on hex, without hex-encoding
    # each expected signature first.
    wanted = bytes.fromhex(given)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(wanted, hmac.digest(key.encode(), body, "sha256"))
    return _HMAC_OK if matched else _HMAC_MISMATCH


def _verify_standard(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    now: float,
    tolerance_seconds: int,
) -> Verdict:
    def fail(reason: str) -> Verdict:
        return Verdict(ok=False, scheme="standard", reason=reason)

    msg_id = headers.get(STANDARD_ID_HEADER, "").strip()
    raw_timestamp = headers.get(STANDARD_TIMESTAMP_HEADER, "").strip()
    raw_signatures = headers.get(STANDARD_SIGNATURE_HEADER, "")
    if not (msg_id and raw_timestamp and raw_signatures.strip()):
        return fail("missing signature")
    # Bounded before int(): Python refuses to convert more than 4 300 digits (ValueError,
    # which was a 500 before any signature was checked), and no real time has 16.
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit()) or len(raw_timestamp) > 15:
        return fail("timestamp malformed")
    timestamp = int(raw_timestamp)
    # Checked before the signature, as the reference library does: a replayed old
    # request is refused whatever it carries.
    if timestamp < now - tolerance_seconds:
        return fail("timestamp too old")
    if timestamp > now + tolerance_seconds:
        return fail("timestamp too new")
    # Other versions (e.g. v1a, asymmetric) may appear alongside; they are not ours to check.
    given = [
        entry.removeprefix("v1,") for entry in raw_signatures.split() if entry.startswith("v1,")
    ]
    if not given:
        return fail("signature malformed")
    expected: list[str] = []
    for secret in secrets:
        if not secret:
            continue
        try:
            expected.append(standard_signature(msg_id, timestamp, body, secret))
        except ValueError:
            # A bad configured secret is for `crm-bridge check` to report; here it cannot match.
            continue
    if not expected:
        return fail("no secret configured")
    matched = False
    for signature in given:
        matched |= _any_equal(signature, (item.removeprefix("v1,") for item in expected))
    return Verdict(ok=matched, scheme="standard", reason="ok" if matched else "signature mismatch")


def _verify_legacy(header: str, secrets: Sequence[str], enabled: bool) -> Verdict:
    if not enabled:
        return Verdict(ok=False, scheme="legacy", reason="legacy secret header disabled")
    keys = [secret for secret in secrets if secret]
    if not keys:
        return Verdict(ok=False, scheme="legacy", reason="no secret configured")
    matched = _any_equal(header.strip(), keys)
    return Verdict(ok=matched, scheme="legacy", reason="ok" if matched else "secret mismatch")


def _any_equal(given: str, candidates: Iterable[str]) -> bool:
    # Every candidate is compared, without stopping at the first match, so the time
    # taken does not tell which secret of a rotation matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), candidate.encode("utf-8", "surrogatepass")
        )
    return matched
