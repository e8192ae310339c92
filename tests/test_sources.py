"""Issue 21 at unit speed: source sections, body decoding, per-source auth and mapping."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import ConfigError
from bridge.settings import load_file_config
from bridge.signing import sign_headers
from bridge.sources.auth import verify_source
from bridge.sources.body import BodyError, decode_body, decode_form
from bridge.sources.config import PRESETS, SourceAuth, SourceConfig, preset_example
from bridge.sources.mapping import MappingFailed, map_payment

NOW = 1_790_000_000.0
RECEIVED = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
MOSCOW = ZoneInfo("Europe/Moscow")


def source(**changes: Any) -> SourceConfig:
    raw: dict[str, Any] = {
        "auth": {"scheme": "basic"},
        "paid_statuses": ["paid"],
        "map": {"id": "id", "status": "state", "amount": "sum"},
    }
    raw.update(changes)
    return SourceConfig.model_validate(raw)


def mapped(config: SourceConfig, document: object) -> Any:
    payment, warnings = map_payment(
        "shop", config, document, platform_tz=MOSCOW, received_at=RECEIVED
    )
    return payment, warnings


# ---- body decoding ---------------------------------------------------------------------


def test_form_bodies_expand_php_style_nested_keys() -> None:
    body = (
        "a[b][0][c]=1&a[b][1][c]=2&tags[]=x&tags[]=y&plain=%D0%BF%D1%80%D0%B8"
        "&empty=&odd[=v&n[5]=five"
    )
    assert decode_form(body) == {
        "a": {"b": [{"c": "1"}, {"c": "2"}]},
        "tags": ["x", "y"],
        "plain": "при",
        "empty": "",
        "odd[": "v",  # not PHP's nested form: the key stays as sent
        "n": {"5": "five"},  # not 0, 1, 2...: an object, as PHP's array would encode
    }


def test_bodies_not_in_the_sources_format_are_refused() -> None:
    with pytest.raises(BodyError, match="not JSON"):
        decode_body("json", "{nope")
    with pytest.raises(BodyError, match="whole number over"):
        decode_body("json", '{"id": ' + "9" * 5000 + "}")
    with pytest.raises(BodyError, match="not UTF-8"):
        decode_body("form", "a=%ff")
    with pytest.raises(BodyError, match="nested over"):
        decode_body("form", "a" + "[x]" * 40 + "=1")


# ---- authentication ---------------------------------------------------------------------


def _hmac(body: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        ({"header": "X-Sig"}, lambda d: d.hex()),
        ({"header": "X-Sig", "prefix": "sha256="}, lambda d: "SHA256=" + d.hex().upper()),
        ({"header": "Content-HMAC", "encoding": "base64"}, lambda d: base64.b64encode(d).decode()),
    ],
)
def test_hmac_over_the_raw_body_with_configured_header_encoding_prefix(
    auth: dict[str, str], header: Any
) -> None:
    config = SourceAuth.model_validate({"scheme": "hmac", **auth})
    body = b"TransactionId=1&Amount=10.00"
    name = auth["header"]
    # Either secret of a rotation is accepted.
    for secret in ("old", "new"):
        headers = {name.lower(): header(_hmac(body, secret))}
        assert verify_source(config, ("old", "new"), headers, "", body, now=NOW).ok
    wrong = {name.lower(): header(_hmac(body, "other"))}
    assert verify_source(config, ("old", "new"), wrong, "", body, now=NOW).reason == (
        "signature mismatch"
    )
    tampered = {name.lower(): header(_hmac(body, "new"))}
    assert not verify_source(config, ("new",), tampered, "", body + b"0", now=NOW).ok
    assert verify_source(config, ("new",), {}, "", body, now=NOW).reason == "missing signature"
    garbage = {name.lower(): "zz-not-a-digest"}
    assert verify_source(config, ("new",), garbage, "", body, now=NOW).reason == (
        "signature malformed"
    )
    no_secret = verify_source(
        config, (), {name.lower(): header(_hmac(body, ""))}, "", body, now=NOW
    )
    assert no_secret.reason == "no secret configured"


_SIGNED = sign_headers(b"{}", hmac_secret=None, standard_secret="s3", msg_id="m1", now=int(NOW))


def _basic(pair: bytes) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(pair).decode()}


# Standard Webhooks reuse the bridge's own check; a secret token may come in the query;
# HTTP Basic takes several accepted pairs. Each: the secrets in force, the request (the
# body is "{}"), how long after signing it arrives, and the verdict's reason.
@pytest.mark.parametrize(
    ("scheme", "secrets", "headers", "query", "later", "reason"),
    [
        ("standard", ("s1", "s3"), _SIGNED, "", 0, "ok"),
        ("standard", ("s1",), _SIGNED, "", 0, "signature mismatch"),
        ("standard", ("s3",), _SIGNED, "", 3600, "timestamp too old"),
        ("query_token", ("t1", "t2"), {}, "x=1&key=t2", 0, "ok"),
        ("query_token", ("t1",), {}, "key=t2", 0, "secret mismatch"),
        ("query_token", ("t1",), {}, "token=t1", 0, "missing signature"),
        ("basic", ("shop:one", "shop:two"), _basic(b"shop:two"), "", 0, "ok"),
        ("basic", ("shop:one", "shop:two"), _basic(b"shop:three"), "", 0, "secret mismatch"),
        ("basic", ("shop:one",), {"authorization": "Basic !!!"}, "", 0, "signature malformed"),
        ("basic", ("shop:one",), {"authorization": "Bearer shop:one"}, "", 0, "missing signature"),
    ],
)
def test_standard_query_token_and_basic_checks(
    scheme: Any,
    secrets: tuple[str, ...],
    headers: dict[str, str],
    query: str,
    later: int,
    reason: str,
) -> None:
    config = SourceAuth(scheme=scheme, query_param="key")
    lowered = {key.lower(): value for key, value in headers.items()}
    verdict = verify_source(config, secrets, lowered, query, b"{}", now=NOW + later)
    assert (verdict.ok, verdict.reason) == (reason == "ok", reason)


# ---- mapping ---------------------------------------------------------------------------


def test_a_mapping_builds_the_canonical_payment() -> None:
    config = source(
        map={
            "id": "order.id",
            "status": "order.state",
            "paid_at": "order.at",
            "first_name": "who.name",
            "phone": "who.phone",
            "email": "who.mail",
            "telegram_id": "who.tg",
            "telegram_username": "who.tg_name",
            "currency": "'RUB'",
            "utm_campaign": "utm.c",
            "items": "order.lines",
        },
        item={"name": "t", "subject": "s", "direction": "d", "cost": "c", "lessons": "n"},
        timezone="Asia/Yekaterinburg",
    )
    payment, warnings = mapped(
        config,
        {
            "order": {
                "id": 42,
                "state": "paid",
                "at": "2026-11-30 10:00:00",
                "lines": [{"t": "A", "s": "Math", "d": "ЕГЭ", "c": "100.5", "n": "4"}, {"c": 20}],
            },
            "who": {
                "name": "Ann",
                "phone": "8 912 000 11 22",
                "mail": " Ann@Example.COM ",
                "tg": 777,
                "tg_name": "@ann",
            },
            "utm": {"c": "winter"},
        },
    )
    assert warnings == []
    assert payment.payment_id == "shop:42"
    assert payment.status == "paid"
    assert payment.amount == Decimal("120.5")  # no `amount`: the items' costs
    assert payment.paid_at == datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    assert payment.customer.phone == "+79120001122"
    assert payment.customer.email == "ann@example.com"
    assert (payment.customer.telegram_id, payment.customer.telegram_username) == ("777", "ann")
    assert payment.currency == "RUB" and payment.utm.campaign == "winter"
    assert [
        (i.course_name, i.subject, i.direction, i.cost, i.number_lessons) for i in payment.items
    ] == [
        ("A", "Math", "ЕГЭ", Decimal("100.5"), 4),
        ("", "", "", Decimal(20), None),
    ]


def test_every_failing_expression_is_reported_without_the_values() -> None:
    config = source(map={"id": "id", "status": "state", "amount": "sum", "phone": "who"})
    with pytest.raises(MappingFailed) as caught:
        mapped(config, {"state": "", "sum": "12.345", "who": {"phone": "+79991234567"}})
    assert [(f.field, f.expression, f.error) for f in caught.value.failures] == [
        ("map.id", "id", "gives nothing"),
        ("map.status", "state", "gives empty text"),
        ("map.amount", "sum", "gives text: at most two decimals"),
        ("map.phone", "who", "gives an object, not text"),
    ]
    assert "79991234567" not in str(caught.value)


def test_an_id_that_cannot_be_a_key_and_a_function_on_the_wrong_type_fail() -> None:
    config = source(map={"id": "id", "status": "length(state)", "amount": "sum"})
    with pytest.raises(MappingFailed) as caught:
        mapped(config, {"id": "a b\n", "state": 5, "sum": 1})
    fields = {f.field: f.error for f in caught.value.failures}
    assert "must be 1 to 128 characters" in fields["map.id"]
    assert "length" in fields["map.status"]


def test_an_unparseable_time_falls_back_to_the_time_received_with_a_warning() -> None:
    payment, warnings = mapped(
        source(map={"id": "id", "status": "state", "amount": "sum", "paid_at": "at"}),
        {"id": 1, "state": "paid", "sum": 5, "at": "yesterday"},
    )
    assert payment.paid_at == RECEIVED
    assert warnings == ["paid_at unparseable: the time received is used"]


@pytest.mark.parametrize("name", ["yclients", "cloudpayments"])
def test_each_preset_maps_its_documented_example(name: str) -> None:
    config = SourceConfig.model_validate({"preset": name})
    example = preset_example(name)
    assert example is not None
    payment, warnings = map_payment(
        name,
        config,
        decode_body(config.format, example.read_text(encoding="utf-8")),
        platform_tz=MOSCOW,
        received_at=RECEIVED,
    )
    assert warnings == []
    assert payment.status in config.paid_statuses
    assert payment.amount > 0 and payment.items and payment.customer.email


# ---- config ----------------------------------------------------------------------------


def _config(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(section, encoding="utf-8")
    return path


SHOP = '[source.shop]\npaid_statuses = ["ok"]\nauth = { scheme = "basic" }\n'


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            SHOP + 'map = { id = "a", status = "b", amount = "sum(" }',
            "source.shop.map.amount: Value error, expression 'sum(' is not JMESPath",
        ),
        (
            SHOP + 'map = { id = "a", status = "b", items = "lines" }\nitem = { name = "t[?" }',
            "source.shop.item.name: Value error, expression 't[?' is not JMESPath",
        ),
        (
            SHOP + 'map = { id = "a", status = "b" }',
            "map.amount, or map.items with item.cost",
        ),
        (
            SHOP + 'map = { id = "a", status = "b", amount = "c", colour = "d" }',
            "source.shop.map.colour: Extra inputs are not permitted",
        ),
        ('[source."Bad Name"]\npreset = "yclients"', "source name 'Bad Name'"),
        ('[source.x]\npreset = "nope"', "unknown preset 'nope' (shipped: cloudpayments, yclients)"),
        (
            '[source.yclients]\npreset = "yclients"\ntimezone = "Mars/Base"',
            "unknown time zone 'Mars/Base'",
        ),
    ],
)
def test_bad_sections_are_refused_naming_section_and_expression(
    tmp_path: Path, section: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_file_config(_config(tmp_path, section))
    assert message in str(caught.value)


def test_a_preset_is_overridden_key_by_key(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        '[source.cp]\npreset = "cloudpayments"\npaid_statuses = ["Completed", "Authorized"]\n'
        '[source.cp.map]\nphone = "AccountId"\n',
    )
    config = load_file_config(path).source["cp"]
    assert config.paid_statuses == ("Completed", "Authorized")
    assert config.map.phone == "AccountId"
    assert config.map.amount == "Amount"  # the rest is the preset's
    assert config.auth.header == "X-Content-HMAC"


def test_presets_live_in_etc_sources_too() -> None:
    etc = Path(__file__).resolve().parent.parent / "etc" / "sources"
    assert etc.resolve() == PRESETS.resolve()


# ---- any body ----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)
_SHAPES = {
    "id": _json,
    "state": _json,
    "sum": _json,
    "lines": _json,
    "who": _json,
}


@settings(max_examples=80, deadline=None)
@given(st.fixed_dictionaries({}, optional=_SHAPES) | _json)
def test_any_document_maps_or_fails_with_named_expressions(document: object) -> None:
    config = source(
        map={
            "id": "id",
            "status": "state",
            "amount": "sum",
            "phone": "who.phone",
            "paid_at": "who.at",
            "items": "lines",
        },
        item={"cost": "c", "lessons": "n", "name": "sort(@)"},
    )
    failures: tuple[Any, ...] = ()
    try:
        payment, _ = mapped(config, document)
    except MappingFailed as exc:
        failures = exc.failures
    else:
        assert payment.payment_id.startswith("shop:")
        return
    assert failures and all(f.expression for f in failures)


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet="ab[]0=&%c1", max_size=40))
def test_any_form_body_decodes_or_is_refused(text: str) -> None:
    with contextlib.suppress(BodyError):
        decode_body("form", text)


def test_a_stored_event_is_mapped_with_the_section_in_force(tmp_path: Path) -> None:
    from bridge.settings import Settings
    from bridge.sources.intake import UnknownSource, payment_from_source

    body = '{"id": "7", "state": "paid", "sum": "10.00"}'
    file = load_file_config(
        _config(
            tmp_path,
            '[source.shop]\npaid_statuses = ["paid"]\nauth = { scheme = "basic" }\n'
            'map = { id = "id", status = "state", amount = "sum" }\n',
        )
    )
    settings = Settings(file=file)
    payment, _ = payment_from_source("shop", body, "2026-12-01 09:00:00.000", settings)
    assert (payment.payment_id, payment.amount, payment.paid_at) == (
        "shop:7",
        Decimal("10.00"),
        RECEIVED,
    )
    with pytest.raises(UnknownSource, match=r"\[source.gone\]"):
        payment_from_source("gone", body, "2026-12-01 09:00:00.000", settings)
