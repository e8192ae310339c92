from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.signing import (
    Verdict,
    hmac_signature,
    sign_headers,
    standard_secret_key,
    standard_signature,
    verify,
)

BODY = b'{"course_order": {"payment_id": "pay_1"}}'
HMAC_SECRET = "hmac-secret"
OLD_HMAC_SECRET = "hmac-secret-before-rotation"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-key-bytes").decode()
NOW = 1_737_373_760
MSG_ID = "msg_1"


def _hmac(body: bytes = BODY, secret: str = HMAC_SECRET) -> str:
    return hmac_signature(body, secret)


def _standard(
    body: bytes = BODY, timestamp: int = NOW, secret: str = STANDARD_SECRET, msg_id: str = MSG_ID
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(msg_id, timestamp, body, secret),
    }


def _verify(
    headers: dict[str, str],
    body: bytes = BODY,
    *,
    hmac_secrets: Sequence[str] = (OLD_HMAC_SECRET, HMAC_SECRET),
    standard_secrets: Sequence[str] = (STANDARD_SECRET,),
    legacy: bool = False,
    now: float = NOW,
) -> Verdict:
    return verify(
        headers,
        body,
        hmac_secrets=list(hmac_secrets),
        standard_secrets=list(standard_secrets),
        legacy_enabled=legacy,
        now=now,
    )


def test_hmac_signature_known_vector() -> None:
    body = b"The quick brown fox jumps over the lazy dog"
    assert hmac_signature(body, "key") == (
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )


def test_standard_signature_matches_the_published_example() -> None:
    # The example of the Standard Webhooks / Svix documentation.
    signature = standard_signature(
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        ("whsec_" + base64.b64encode(b"\x00\xffkey").decode(), b"\x00\xffkey"),
        ("plain secret", b"plain secret"),
        ("секрет", "секрет".encode()),
    ],
)
def test_standard_secret_key(secret: str, key: bytes) -> None:
    assert standard_secret_key(secret) == key


def test_standard_secret_key_rejects_bad_base64() -> None:
    with pytest.raises(ValueError, match="not base64"):
        standard_secret_key("whsec_not*base64!")


HMAC_OK = Verdict(True, "hmac", "ok")
HMAC_MISMATCH = Verdict(False, "hmac", "signature mismatch")
HMAC_MALFORMED = Verdict(False, "hmac", "signature malformed")
STANDARD_OK = Verdict(True, "standard", "ok")
STANDARD_MISMATCH = Verdict(False, "standard", "signature mismatch")
TIMESTAMP_MALFORMED = Verdict(False, "standard", "timestamp malformed")
LEGACY_OK = Verdict(True, "legacy", "ok")
OTHER_STANDARD_SECRET = "whsec_" + base64.b64encode(b"other").decode()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, Verdict(False, "none", "missing signature"), id="nothing"),
        pytest.param({"X-Signature": _hmac()}, HMAC_OK, id="hmac bare hex"),
        pytest.param(
            {"x-signature": "sha256=" + _hmac()},
            HMAC_OK,
            id="hmac sha256= prefix, lower-case header",
        ),
        pytest.param({"X-SIGNATURE": "SHA256=" + _hmac().upper()}, HMAC_OK, id="hmac upper-case"),
        pytest.param(
            {"X-Signature": _hmac(secret=OLD_HMAC_SECRET)}, HMAC_OK, id="hmac rotated secret"
        ),
        pytest.param({"X-Signature": _hmac(secret="wrong")}, HMAC_MISMATCH, id="hmac wrong secret"),
        pytest.param({"X-Signature": _hmac(body=BODY + b" ")}, HMAC_MISMATCH, id="hmac other body"),
        pytest.param({"X-Signature": "sha256=xyz"}, HMAC_MALFORMED, id="hmac not hex"),
        pytest.param({"X-Signature": ""}, HMAC_MALFORMED, id="hmac empty"),
        pytest.param(_standard(), STANDARD_OK, id="standard"),
        pytest.param(
            {name.upper(): value for name, value in _standard().items()},
            STANDARD_OK,
            id="standard upper-case header names",
        ),
        pytest.param(
            {**_standard(), "webhook-timestamp": "soon"},
            TIMESTAMP_MALFORMED,
            id="standard timestamp not a number",
        ),
        pytest.param(
            {**_standard(), "webhook-timestamp": "-5"},
            TIMESTAMP_MALFORMED,
            id="standard negative timestamp",
        ),
        pytest.param(
            {**_standard(), "webhook-id": "msg_2"}, STANDARD_MISMATCH, id="standard other id"
        ),
        pytest.param(
            _standard(secret=OTHER_STANDARD_SECRET), STANDARD_MISMATCH, id="standard wrong secret"
        ),
        pytest.param(
            {
                **_standard(),
                "webhook-signature": "v1a,abc v1,bm90IGl0 " + _standard()["webhook-signature"],
            },
            STANDARD_OK,
            id="standard one of several entries",
        ),
        pytest.param(
            {**_standard(), "webhook-signature": "v2,abc"},
            Verdict(False, "standard", "signature malformed"),
            id="standard no v1 entry",
        ),
        pytest.param(
            {"webhook-id": MSG_ID, "webhook-timestamp": str(NOW)},
            Verdict(False, "standard", "missing signature"),
            id="standard incomplete",
        ),
        pytest.param(
            {"X-Webhook-Secret": HMAC_SECRET},
            Verdict(False, "legacy", "legacy secret header disabled"),
            id="legacy disabled",
        ),
        pytest.param(
            {"X-Signature": _hmac(secret="wrong"), **_standard()},
            STANDARD_OK,
            id="one valid scheme wins",
        ),
        pytest.param(
            {"X-Signature": _hmac(secret="wrong"), "X-Webhook-Secret": HMAC_SECRET},
            HMAC_MISMATCH,
            id="most specific failure: mismatch over disabled",
        ),
    ],
)
def test_verify(headers: dict[str, str], expected: Verdict) -> None:
    assert _verify(headers) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"X-Webhook-Secret": HMAC_SECRET}, LEGACY_OK, id="legacy enabled"),
        pytest.param({"x-webhook-secret": OLD_HMAC_SECRET}, LEGACY_OK, id="legacy rotated secret"),
        pytest.param(
            {"X-Webhook-Secret": "guess"},
            Verdict(False, "legacy", "secret mismatch"),
            id="legacy wrong secret",
        ),
    ],
)
def test_verify_with_the_legacy_header_enabled(headers: dict[str, str], expected: Verdict) -> None:
    assert _verify(headers, legacy=True) == expected


@pytest.mark.parametrize(
    ("headers", "now", "expected"),
    [
        pytest.param(_standard(), NOW + 300, STANDARD_OK, id="standard at limit"),
        pytest.param(
            _standard(),
            NOW + 301,
            Verdict(False, "standard", "timestamp too old"),
            id="standard too old",
        ),
        pytest.param(
            _standard(),
            NOW - 301,
            Verdict(False, "standard", "timestamp too new"),
            id="standard in the future",
        ),
        pytest.param(
            {"X-Signature": "zz", **_standard()},
            NOW + 1000,
            Verdict(False, "standard", "timestamp too old"),
            id="most specific failure: too old over malformed",
        ),
    ],
)
def test_verify_at_another_time(headers: dict[str, str], now: float, expected: Verdict) -> None:
    assert _verify(headers, now=now) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Signature": hmac_signature(BODY, "")}, Verdict(False, "hmac", "no secret configured")),
        ({"X-Webhook-Secret": ""}, Verdict(False, "legacy", "no secret configured")),
        (_standard(secret=""), Verdict(False, "standard", "no secret configured")),
    ],
)
def test_empty_secrets_never_match(headers: dict[str, str], expected: Verdict) -> None:
    assert _verify(headers, hmac_secrets=[""], standard_secrets=[""], legacy=True) == expected


def test_undecodable_standard_secret_does_not_break_verification() -> None:
    verdict = _verify(_standard(), hmac_secrets=[], standard_secrets=["whsec_***", STANDARD_SECRET])
    assert verdict == STANDARD_OK


@pytest.mark.parametrize(
    ("hmac_secret", "standard_secret", "names"),
    [
        (HMAC_SECRET, None, {"X-Signature"}),
        (None, STANDARD_SECRET, {"webhook-id", "webhook-timestamp", "webhook-signature"}),
        (
            HMAC_SECRET,
            STANDARD_SECRET,
            {"X-Signature", "webhook-id", "webhook-timestamp", "webhook-signature"},
        ),
        (None, None, set()),
    ],
)
def test_sign_headers(
    hmac_secret: str | None, standard_secret: str | None, names: set[str]
) -> None:
    headers = sign_headers(
        BODY, hmac_secret=hmac_secret, standard_secret=standard_secret, msg_id=MSG_ID, now=NOW
    )
    assert set(headers) == names
    if names:
        assert _verify(headers).ok


def test_reasons_never_contain_secrets_or_expected_signatures() -> None:
    cases = [
        {"X-Signature": _hmac(secret="wrong")},
        _standard(secret=OTHER_STANDARD_SECRET),
        {"X-Webhook-Secret": "guess"},
    ]
    forbidden = [HMAC_SECRET, OLD_HMAC_SECRET, STANDARD_SECRET, _hmac()]
    forbidden.append(_standard()["webhook-signature"].removeprefix("v1,"))
    for headers in cases:
        reason = _verify(headers, legacy=True).reason
        assert not any(secret in reason for secret in forbidden)


secrets = st.text(min_size=1, max_size=40)
standard_secrets = st.one_of(
    secrets,
    st.binary(min_size=1, max_size=40).map(lambda key: "whsec_" + base64.b64encode(key).decode()),
)
bodies = st.binary(max_size=2000)
timestamps = st.integers(min_value=0, max_value=4_000_000_000)


@given(body=bodies, hmac_secret=secrets, standard_secret=standard_secrets, now=timestamps)
def test_signed_bodies_verify(
    body: bytes, hmac_secret: str, standard_secret: str, now: int
) -> None:
    for one_hmac, one_standard in ((hmac_secret, None), (None, standard_secret)):
        headers = sign_headers(
            body, hmac_secret=one_hmac, standard_secret=one_standard, msg_id="msg", now=now
        )
        verdict = _verify(
            headers, body, hmac_secrets=[hmac_secret], standard_secrets=[standard_secret], now=now
        )
        assert verdict.ok, verdict


@given(
    body=st.binary(min_size=1, max_size=500),
    data=st.data(),
    hmac_secret=secrets,
    standard_secret=standard_secrets,
)
def test_any_changed_byte_fails(
    body: bytes, data: st.DataObject, hmac_secret: str, standard_secret: str
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    delta = data.draw(st.integers(min_value=1, max_value=255))
    changed = body[:index] + bytes([body[index] ^ delta]) + body[index + 1 :]
    headers = sign_headers(
        body, hmac_secret=hmac_secret, standard_secret=standard_secret, msg_id="msg", now=NOW
    )
    hmac_only = {"X-Signature": headers["X-Signature"]}
    standard_only = {name: value for name, value in headers.items() if name.startswith("webhook-")}
    for single in (hmac_only, standard_only):
        verdict = _verify(
            single, changed, hmac_secrets=[hmac_secret], standard_secrets=[standard_secret]
        )
        assert verdict == Verdict(False, verdict.scheme, "signature mismatch")


@given(
    body=bodies,
    secret=standard_secrets,
    skew=st.integers(min_value=301, max_value=10**9),
    future=st.booleans(),
)
def test_timestamps_beyond_tolerance_fail(
    body: bytes, secret: str, skew: int, future: bool
) -> None:
    signed_at = NOW + skew if future else NOW - skew
    headers = sign_headers(
        body, hmac_secret=None, standard_secret=secret, msg_id="m", now=signed_at
    )
    verdict = _verify(headers, body, hmac_secrets=[], standard_secrets=[secret])
    assert not verdict.ok
    assert verdict.reason == ("timestamp too new" if future else "timestamp too old")
