"""Is this request from the platform? One check per source, by its `[source.NAME.auth]`.

- `hmac`: HMAC-SHA256 of the raw body in a configurable header, hex or base64, after an
  optional prefix (`sha256=`); CloudPayments' `X-Content-HMAC` is base64 with none;
- `standard`: Standard Webhooks (`webhook-id`/`-timestamp`/`-signature`);
- `query_token`: a secret in the URL's query (for platforms that sign nothing and only
  let you enter a URL, such as YCLIENTS);
- `basic`: HTTP Basic, each secret `user:password`.

Every comparison is constant-time and tries every secret (rotation); the checks
themselves are `bridge.signing`'s. A `Verdict` never holds a secret, so it can be logged.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

from bridge.settings import Settings, secret_prefix
from bridge.signing import Verdict, any_equal, digest_matches, verify_standard
from bridge.sources.config import SourceAuth

SECRETS_SUFFIX = "SOURCE_SECRETS"
_SHA256_BYTES = 32


def secrets_variable(name: str) -> str:
    """The environment variable holding `[source.NAME]`'s secrets."""
    return f"{secret_prefix(name)}_{SECRETS_SUFFIX}"


def source_secrets(settings: Settings, name: str) -> tuple[str, ...]:
    raw = settings.crm_env.get(secrets_variable(name))
    if raw is None:
        return ()
    return tuple(part.strip() for part in raw.get_secret_value().split(",") if part.strip())


def verify_source(
    auth: SourceAuth,
    secrets: Sequence[str],
    headers: Mapping[str, str],
    query: str,
    body: bytes,
    *,
    now: float,
) -> Verdict:
    keys = [secret for secret in secrets if secret]
    if auth.scheme == "standard":
        return verify_standard(
            headers, body, keys, now=now, tolerance_seconds=auth.tolerance_seconds
        )
    if auth.scheme == "hmac":
        return _verify_hmac(auth, keys, headers, body)
    if auth.scheme == "query_token":
        return _verify_token(auth, keys, query)
    return _verify_basic(keys, headers)


def _fail(scheme: str, reason: str) -> Verdict:
    return Verdict(ok=False, scheme=scheme, reason=reason)


def _verify_hmac(
    auth: SourceAuth, keys: Sequence[str], headers: Mapping[str, str], body: bytes
) -> Verdict:
    given = headers.get(auth.header.lower(), "").strip()
    if not given:
        return _fail("hmac", "missing signature")
    if auth.prefix:
        if given[: len(auth.prefix)].lower() != auth.prefix.lower():
            return _fail("hmac", "signature malformed")
        given = given[len(auth.prefix) :].strip()
    try:
        if auth.encoding == "hex":
            wanted = bytes.fromhex(given)
        else:
            wanted = base64.b64decode(given, validate=True)
    except (ValueError, binascii.Error):
        return _fail("hmac", "signature malformed")
    if len(wanted) != _SHA256_BYTES:
        return _fail("hmac", "signature malformed")
    if not keys:
        return _fail("hmac", "no secret configured")
    if digest_matches(wanted, body, keys):
        return Verdict(ok=True, scheme="hmac", reason="ok")
    return _fail("hmac", "signature mismatch")


def _verify_token(auth: SourceAuth, keys: Sequence[str], query: str) -> Verdict:
    values = [
        value for key, value in parse_qsl(query, keep_blank_values=True) if key == auth.query_param
    ]
    if not values or not values[0]:
        return _fail("token", "missing signature")
    if not keys:
        return _fail("token", "no secret configured")
    if any_equal(values[0], keys):
        return Verdict(ok=True, scheme="token", reason="ok")
    return _fail("token", "secret mismatch")


def _verify_basic(keys: Sequence[str], headers: Mapping[str, str]) -> Verdict:
    scheme, _, encoded = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return _fail("basic", "missing signature")
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        return _fail("basic", "signature malformed")
    if not keys:
        return _fail("basic", "no secret configured")
    if any_equal(given, keys):
        return Verdict(ok=True, scheme="basic", reason="ok")
    return _fail("basic", "secret mismatch")
