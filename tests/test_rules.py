from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from bridge.domain import (
    Contact,
    Customer,
    Deal,
    FieldKind,
    FieldUpdate,
    KeyKind,
    LookupKey,
    Payment,
    PurchaseItem,
    Utm,
)
from bridge.rules import (
    DEAL_NAME_PLACEHOLDERS,
    NOTE_PLACEHOLDERS,
    choose_open_deal,
    choose_pipeline,
    contact_fill_updates,
    contact_matches,
    deal_carrying_payment,
    deal_field_updates,
    deal_name,
    format_amount,
    new_contact_fields,
    note_mentions_payment,
    note_text,
    should_process,
    template_problems,
)
from bridge.settings import (
    DEFAULT_DEAL_NAME_TEMPLATE,
    DEFAULT_NOTE_TEMPLATE,
    ContactFieldIds,
    CrmConfig,
    DealFieldIds,
    PaymentRules,
    PipelineRule,
    PipelineTarget,
    load_file_config,
)
from tests.conftest import EXAMPLE_CONFIG, EXPECTED_NOTE

MOSCOW = ZoneInfo("Europe/Moscow")
EXAMPLE = load_file_config(EXAMPLE_CONFIG)
CRM = EXAMPLE.crm["amocrm"]
SITE = PipelineTarget(pipeline_id="4423755", status_id="63242022", name="Site")
YANDEX = PipelineTarget(pipeline_id="10089806", status_id="80579130", name="Yandex")
PARTNERS = PipelineTarget(pipeline_id="8598230", status_id="80517738", name="Partners")
BARE_CRM = CrmConfig(base_url="https://bare.example", default_pipeline=SITE)

CUSTOMER = Customer(
    first_name="Иван",
    last_name="Петров",
    phone="+79991234567",
    email="ivan@example.com",
    telegram_id="123456789",
    telegram_username="ivan",
)
PAYMENT = Payment(
    payment_id="pay_67890",
    status="CONFIRMED",
    amount=Decimal(10000),
    paid_at=datetime(2025, 1, 20, 11, 49, 20, tzinfo=UTC),
    customer=CUSTOMER,
    items=(
        PurchaseItem("Годовой 2к25 стандарт", "Русский", "ЕГЭ", Decimal(5000), 10),
        PurchaseItem("Годовой 2к25 стандарт", "Обществознание", "ЕГЭ", Decimal(5000), 10),
    ),
    utm=Utm(source="platform", medium="direct", campaign="summer2025"),
    invoice_id="inv_12345",
    currency="RUB",
    payment_method="SBP",
    promo_code="PROMO2025",
)

# SPEC §6, byte for byte: the note every CRM shows (conftest's, for the payload
# `payment_payload("pay_new", utm_source="advcake")`) with this payment's values.
SPEC_NOTE = (
    EXPECTED_NOTE.replace("@ivan_petrov", "@ivan")
    .replace("advcake", "platform")
    .replace("inv_pay_new", "inv_12345")
    .replace("pay_new", "pay_67890")
)


def _deal(deal_id: str, updated_at: int, status_id: str = "100", **kwargs: object) -> Deal:
    return Deal(
        id=deal_id,
        pipeline_id="4423755",
        status_id=status_id,
        updated_at=updated_at,
        **kwargs,  # type: ignore[arg-type]
    )


# --- should_process --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "statuses", "expected"),
    [
        ("CONFIRMED", ("CONFIRMED",), None),
        ("confirmed", ("CONFIRMED",), None),
        (" CONFIRMED ", ("CONFIRMED",), None),
        ("PENDING", ("CONFIRMED",), "status PENDING is not processed"),
        ("CANCELLED", ("CONFIRMED",), "status CANCELLED is not processed"),
        ("", ("CONFIRMED",), "status (empty) is not processed"),
        ("PAID", ("CONFIRMED", "PAID"), None),
        ("CONFIRMED", (), "status CONFIRMED is not processed"),
    ],
)
def test_should_process(status: str, statuses: tuple[str, ...], expected: str | None) -> None:
    rules = PaymentRules(processed_statuses=statuses)
    assert should_process(status, rules) == expected


# --- choose_pipeline (SPEC §5) --------------------------------------------------------


@pytest.mark.parametrize(
    ("utm", "crm", "expected"),
    [
        (Utm(source="advcake"), CRM, PARTNERS),
        (Utm(source="AdvCake_summer"), CRM, PARTNERS),
        (Utm(source="www.ris.promo"), CRM, PARTNERS),
        (Utm(source="pfm"), CRM, PARTNERS),
        (Utm(source="tbank", medium="cpc"), CRM, PARTNERS),  # the first rule wins
        (Utm(source="yandex", medium="cpc"), CRM, YANDEX),
        (Utm(medium="CPM"), CRM, YANDEX),
        (Utm(medium="el-ege-banner"), CRM, YANDEX),
        (Utm(source="platform", medium="direct"), CRM, SITE),
        (Utm(campaign="advcake"), CRM, SITE),  # rules look at their own field only
        (Utm(), CRM, SITE),
        (Utm(source="advcake"), BARE_CRM, SITE),  # no rules: the default
    ],
)
def test_choose_pipeline(utm: Utm, crm: CrmConfig, expected: PipelineTarget) -> None:
    assert choose_pipeline(utm, crm) == expected


def test_choose_pipeline_ignores_empty_needles() -> None:
    crm = BARE_CRM.model_copy(
        update={
            "pipeline_rules": (
                PipelineRule(utm_field="term", contains=("",), pipeline_id="1", status_id="2"),
            )
        }
    )
    assert choose_pipeline(Utm(term="anything"), crm) == SITE


# --- contact_matches ------------------------------------------------------------------


PHONE_KEY = LookupKey(KeyKind.PHONE, "+79991234567")
EMAIL_KEY = LookupKey(KeyKind.EMAIL, "ivan@example.com")
TELEGRAM_KEY = LookupKey(KeyKind.TELEGRAM_ID, "123456789")


@pytest.mark.parametrize(
    ("contact", "key", "expected"),
    [
        (Contact("1", phones=("8 (999) 123-45-67",)), PHONE_KEY, True),
        (Contact("1", phones=("+79991234567",)), PHONE_KEY, True),
        (Contact("1", phones=("+7 999 000 00 00", "79991234567")), PHONE_KEY, True),
        (Contact("1", phones=("+799912345670",)), PHONE_KEY, False),  # a substring hit
        (Contact("1", phones=("1234567",)), PHONE_KEY, False),
        (Contact("1", phones=()), PHONE_KEY, False),
        (Contact("1", emails=("Ivan@Example.com ",)), EMAIL_KEY, True),
        (Contact("1", emails=("ivan@example.com.evil",)), EMAIL_KEY, False),
        (Contact("1", emails=("oivan@example.com",)), EMAIL_KEY, False),
        (Contact("1", telegram_id="123456789"), TELEGRAM_KEY, True),
        (Contact("1", telegram_id=" 123456789 "), TELEGRAM_KEY, True),
        (Contact("1", telegram_id="1234567890"), TELEGRAM_KEY, False),
        (Contact("1", telegram_id=""), TELEGRAM_KEY, False),
        (Contact("1", name="123456789"), TELEGRAM_KEY, False),
    ],
)
def test_contact_matches(contact: Contact, key: LookupKey, expected: bool) -> None:
    assert contact_matches(contact, key) is expected


def test_contact_matches_without_a_telegram_field() -> None:
    contact = Contact("1", telegram_id="123456789", phones=("+79991234567",))
    assert contact_matches(contact, TELEGRAM_KEY, telegram_field_present=False) is False
    assert contact_matches(contact, PHONE_KEY, telegram_field_present=False) is True


# --- choose_open_deal -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("deals", "crm", "expected_id"),
    [
        ([], CRM, None),
        ([_deal("1", 100)], CRM, "1"),
        ([_deal("1", 100), _deal("2", 200), _deal("3", 150)], CRM, "2"),
        ([_deal("1", 100), _deal("2", 200, is_deleted=True)], CRM, "1"),
        ([_deal("1", 100), _deal("2", 200, is_closed=True)], CRM, "1"),
        ([_deal("1", 100), _deal("2", 200, status_id="142")], CRM, "1"),
        ([_deal("1", 100), _deal("2", 200, status_id="143")], CRM, "1"),
        ([_deal("1", 100), _deal("2", 200, status_id="63242022")], CRM, "1"),
        ([_deal("1", 100), _deal("2", 200, status_id="80579130")], CRM, "1"),
        ([_deal("1", 100), _deal("2", 200, status_id="80517738")], CRM, "1"),
        ([_deal("1", 100, status_id="142"), _deal("2", 200, status_id="80517738")], CRM, None),
        ([_deal("9", 100), _deal("10", 100)], CRM, "10"),  # tie: the larger id, numerically
        ([_deal("10", 100), _deal("9", 100)], CRM, "10"),
        ([_deal("1", 100, status_id="63242022")], BARE_CRM, "1"),  # nothing excluded there
    ],
)
def test_choose_open_deal(deals: list[Deal], crm: CrmConfig, expected_id: str | None) -> None:
    chosen = choose_open_deal(deals, crm)
    assert (chosen.id if chosen else None) == expected_id


# --- deal_carrying_payment ------------------------------------------------------------


@pytest.mark.parametrize(
    ("deals", "expected_id"),
    [
        ([], None),
        ([_deal("1", 100, fields={"700205": "pay_67890"})], "1"),
        ([_deal("1", 100, status_id="80517738", fields={"700205": "pay_67890"})], "1"),
        ([_deal("1", 100, status_id="142", is_closed=True, fields={"700205": "pay_67890"})], "1"),
        ([_deal("1", 100, is_deleted=True, fields={"700205": "pay_67890"})], None),
        ([_deal("1", 100, fields={"700205": "pay_678901"})], None),
        ([_deal("1", 100, fields={"700206": "pay_67890"})], None),
        (
            [
                _deal("1", 100, fields={"700205": "pay_1"}),
                _deal("2", 50, fields={"700205": "pay_67890"}),
            ],
            "2",
        ),
    ],
)
def test_deal_carrying_payment(deals: list[Deal], expected_id: str | None) -> None:
    found = deal_carrying_payment(deals, CRM, "pay_67890")
    assert (found.id if found else None) == expected_id


def test_deal_carrying_payment_needs_the_field() -> None:
    deals = [_deal("1", 100, fields={"700205": "pay_67890"})]
    assert deal_carrying_payment(deals, BARE_CRM, "pay_67890") is None


# --- deal_field_updates ---------------------------------------------------------------


def test_deal_field_updates_reference_config() -> None:
    current = {"700207": "15000", "700208": "2"}
    updates, warnings = deal_field_updates(PAYMENT, current, CRM, MOSCOW)
    assert warnings == []
    assert updates == (
        FieldUpdate("700201", FieldKind.MULTISELECT, (800001, 800003)),
        FieldUpdate("700202", FieldKind.SELECT, 800101),
        FieldUpdate("700203", FieldKind.NUMBER, Decimal(10000)),
        FieldUpdate("700204", FieldKind.DATETIME, datetime(2025, 1, 20, 14, 49, 20, tzinfo=MOSCOW)),
        FieldUpdate("700206", FieldKind.TEXT, "inv_12345"),
        FieldUpdate("700207", FieldKind.NUMBER, Decimal(25000)),
        FieldUpdate("700208", FieldKind.NUMBER, Decimal(3)),
        FieldUpdate("700209", FieldKind.TEXT, "platform"),
        FieldUpdate("700210", FieldKind.TEXT, "direct"),
        FieldUpdate("700211", FieldKind.TEXT, "summer2025"),
        FieldUpdate("700205", FieldKind.TEXT, "pay_67890"),
    )
    paid_at = next(update.value for update in updates if update.field_id == "700204")
    assert isinstance(paid_at, datetime)
    assert paid_at.tzinfo is MOSCOW


@pytest.mark.parametrize(
    ("total", "count", "expected_total", "expected_count", "warning_count"),
    [
        (None, None, Decimal(10000), Decimal(1), 0),
        ("", "", Decimal(10000), Decimal(1), 0),
        ("  ", "0", Decimal(10000), Decimal(1), 0),
        ("1 000", "1", Decimal(11000), Decimal(2), 0),
        ("1\u00a0000", "1", Decimal(11000), Decimal(2), 0),
        ("1000.50", "3", Decimal("11000.50"), Decimal(4), 0),
        ("1000,50", "3", Decimal("11000.50"), Decimal(4), 0),
        ("1,000.50", "3", Decimal("11000.50"), Decimal(4), 0),
        ("abc", "x", Decimal(10000), Decimal(1), 2),
        ("NaN", "Infinity", Decimal(10000), Decimal(1), 2),
    ],
)
def test_incremental_fields(
    total: str | None,
    count: str | None,
    expected_total: Decimal,
    expected_count: Decimal,
    warning_count: int,
) -> None:
    current = {
        field_id: value
        for field_id, value in (("700207", total), ("700208", count))
        if value is not None
    }
    updates, warnings = deal_field_updates(PAYMENT, current, CRM, MOSCOW)
    values = {update.field_id: update.value for update in updates}
    assert values["700207"] == expected_total
    assert values["700208"] == expected_count
    assert len(warnings) == warning_count
    assert all("counted as 0" in warning for warning in warnings)


def _item(subject: str, direction: str = "ЕГЭ") -> PurchaseItem:
    return PurchaseItem("Курс", subject, direction, Decimal(1))


@pytest.mark.parametrize(
    ("items", "subjects", "direction", "warnings"),
    [
        ((_item("Русский"), _item("Русский")), (800001,), 800101, []),
        ((_item("русский "),), (800001,), 800101, []),
        (
            (_item("Астрономия"), _item("Физика")),
            (800005,),
            800101,
            ["subject 'Астрономия' is not in the subject mapping: skipped"],
        ),
        (
            (_item("Астрономия", "ВПР"),),
            None,
            None,
            [
                "subject 'Астрономия' is not in the subject mapping: skipped",
                "direction 'ВПР' is not in the direction mapping: skipped",
            ],
        ),
        ((_item("Химия", "ВПР"), _item("Биология", "ОГЭ")), (800008, 800009), 800102, []),
        ((_item("", ""),), None, None, []),
        ((), None, None, []),
    ],
)
def test_subjects_and_direction(
    items: tuple[PurchaseItem, ...],
    subjects: tuple[int, ...] | None,
    direction: int | None,
    warnings: list[str],
) -> None:
    updates, got_warnings = deal_field_updates(replace(PAYMENT, items=items), {}, CRM, MOSCOW)
    values = {update.field_id: update.value for update in updates}
    assert values.get("700201") == subjects
    assert values.get("700202") == direction
    assert got_warnings == warnings


def test_empty_values_are_not_written() -> None:
    payment = replace(PAYMENT, invoice_id="", utm=Utm(term="t"))
    updates, _ = deal_field_updates(payment, {}, CRM, MOSCOW)
    written = {update.field_id for update in updates}
    assert written.isdisjoint({"700206", "700209", "700210", "700211", "700213"})
    assert "700212" in written


def test_unconfigured_fields_are_not_written() -> None:
    assert deal_field_updates(PAYMENT, {}, BARE_CRM, MOSCOW) == ((), [])
    crm = BARE_CRM.model_copy(update={"deal_fields": DealFieldIds(total_paid="1")})
    assert deal_field_updates(PAYMENT, {"1": "5"}, crm, MOSCOW) == (
        (FieldUpdate("1", FieldKind.NUMBER, Decimal(10005)),),
        [],
    )


# --- contact fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("customer", "expected"),
    [
        (
            CUSTOMER,
            (
                FieldUpdate("700101", FieldKind.TEXT, "123456789"),
                FieldUpdate("700102", FieldKind.TEXT, "ivan"),
            ),
        ),
        (replace(CUSTOMER, telegram_id=None), (FieldUpdate("700102", FieldKind.TEXT, "ivan"),)),
        (replace(CUSTOMER, telegram_id=None, telegram_username=None), ()),
    ],
)
def test_new_contact_fields(customer: Customer, expected: tuple[FieldUpdate, ...]) -> None:
    assert new_contact_fields(customer, CRM) == expected


def test_new_contact_fields_need_configured_fields() -> None:
    assert new_contact_fields(CUSTOMER, BARE_CRM) == ()
    crm = BARE_CRM.model_copy(update={"contact_fields": ContactFieldIds(telegram_username="9")})
    assert new_contact_fields(CUSTOMER, crm) == (FieldUpdate("9", FieldKind.TEXT, "ivan"),)


@pytest.mark.parametrize(
    ("contact", "customer", "expected_ids"),
    [
        (Contact("1"), CUSTOMER, ("700101", "700102")),
        (Contact("1", telegram_id="555"), CUSTOMER, ("700102",)),
        (Contact("1", telegram_username="@manager_typed"), CUSTOMER, ("700101",)),
        (Contact("1", telegram_id="555", telegram_username="x"), CUSTOMER, ()),
        (Contact("1", telegram_id="  "), CUSTOMER, ("700101", "700102")),
        (Contact("1"), Customer(first_name="Иван"), ()),
    ],
)
def test_contact_fill_updates_never_overwrite(
    contact: Contact, customer: Customer, expected_ids: tuple[str, ...]
) -> None:
    updates = contact_fill_updates(contact, customer, CRM)
    assert tuple(update.field_id for update in updates) == expected_ids


# --- deal name ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payment", "template", "expected"),
    [
        (PAYMENT, DEFAULT_DEAL_NAME_TEMPLATE, "Оплата Русский, Обществознание - Иван Петров"),
        (
            replace(PAYMENT, items=(PurchaseItem("Годовой", "", "", Decimal(1)),)),
            DEFAULT_DEAL_NAME_TEMPLATE,
            "Оплата Годовой - Иван Петров",
        ),
        (replace(PAYMENT, items=()), DEFAULT_DEAL_NAME_TEMPLATE, "Оплата курс - Иван Петров"),
        (
            replace(PAYMENT, customer=replace(CUSTOMER, first_name="", last_name="")),
            DEFAULT_DEAL_NAME_TEMPLATE,
            "Оплата Русский, Обществознание - +79991234567",
        ),
        (
            replace(PAYMENT, customer=Customer(email="ivan@example.com")),
            DEFAULT_DEAL_NAME_TEMPLATE,
            "Оплата Русский, Обществознание - ivan@example.com",
        ),
        (
            replace(PAYMENT, amount=Decimal("10000.50")),
            "{payment_id}: {amount} {currency}",
            "pay_67890: 10000.5 RUB",
        ),
        (PAYMENT, "{amount} {currency} {{literal}}", "10000 RUB {literal}"),
        (PAYMENT, "Оплата {subjekt}", "Оплата {subjekt}"),
    ],
)
def test_deal_name(payment: Payment, template: str, expected: str) -> None:
    assert deal_name(payment, template) == expected


# --- note -----------------------------------------------------------------------------


def test_note_reproduces_spec_section_6() -> None:
    assert note_text(PAYMENT, DEFAULT_NOTE_TEMPLATE, MOSCOW) == SPEC_NOTE


def _note_without(*labels: str) -> str:
    return "\n".join(line for line in SPEC_NOTE.split("\n") if not line.startswith(labels))


@pytest.mark.parametrize(
    ("payment", "expected"),
    [
        (replace(PAYMENT, promo_code=""), _note_without("Промокод:")),
        (replace(PAYMENT, invoice_id=""), _note_without("Invoice ID:")),
        (replace(PAYMENT, utm=Utm()), _note_without("Источник:")),
        (replace(PAYMENT, payment_method=""), _note_without("Метод оплаты:")),
        (
            replace(PAYMENT, items=(), amount=Decimal(0)),
            _note_without("Курсы:", "  Годовой").replace("Сумма: 10000", "Сумма: 0"),
        ),
        (
            replace(PAYMENT, customer=Customer(first_name="Иван", last_name="Петров")),
            _note_without("TGID:"),
        ),
        (
            replace(PAYMENT, customer=replace(CUSTOMER, telegram_id=None, phone=None)),
            SPEC_NOTE.replace(
                "TGID: 123456789 | TG Username: @ivan | Телефон: +79991234567",
                "TG Username: @ivan",
            ),
        ),
        (
            replace(PAYMENT, customer=replace(CUSTOMER, first_name="", last_name="")),
            _note_without("Имя клиента:"),
        ),
        (replace(PAYMENT, currency=""), SPEC_NOTE.replace("Сумма: 10000 RUB", "Сумма: 10000")),
        (
            replace(PAYMENT, amount=Decimal("10000.50")),
            SPEC_NOTE.replace("Сумма: 10000 RUB", "Сумма: 10000.5 RUB"),
        ),
        (
            replace(PAYMENT, items=(PurchaseItem("", "Химия", "", Decimal(1)),)),
            SPEC_NOTE.replace(
                "  Годовой 2к25 стандарт (Русский)\n  Годовой 2к25 стандарт (Обществознание)",
                "  Химия",
            ),
        ),
    ],
)
def test_note_leaves_out_empty_lines(payment: Payment, expected: str) -> None:
    assert note_text(payment, DEFAULT_NOTE_TEMPLATE, MOSCOW) == expected


@pytest.mark.parametrize(
    ("zone", "local", "label"),
    [
        ("Europe/Moscow", "2025-01-20 14:49:20", "Moscow"),
        ("UTC", "2025-01-20 11:49:20", "UTC"),
        ("America/Argentina/Buenos_Aires", "2025-01-20 08:49:20", "Buenos Aires"),
        ("Asia/Yekaterinburg", "2025-01-20 16:49:20", "Yekaterinburg"),
    ],
)
def test_note_display_timezone(zone: str, local: str, label: str) -> None:
    text = note_text(PAYMENT, DEFAULT_NOTE_TEMPLATE, ZoneInfo(zone))
    assert f"Дата/время: {local} ({label})" in text.split("\n")
    assert "Дата/время UTC: 2025-01-20T11:49:20Z" in text.split("\n")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Оплата {amount}", "Оплата 10000\nPayment ID: pay_67890"),
        ("", "Payment ID: pay_67890"),
        ("ID {payment_id}", "ID pay_67890\nPayment ID: pay_67890"),
        ("Payment ID: {payment_id}\nИтого: {amount}", "Payment ID: pay_67890\nИтого: 10000"),
        ("Промо: {promo_code}\n{unknown}", "Промо: PROMO2025\n{unknown}\nPayment ID: pay_67890"),
        ("Заголовок:\n{promo_code}", "Заголовок:\nPROMO2025\nPayment ID: pay_67890"),
        ("Заголовок:", "Payment ID: pay_67890"),  # a header with nothing under it
    ],
)
def test_note_custom_templates_always_carry_the_payment_id(template: str, expected: str) -> None:
    text = note_text(PAYMENT, template, MOSCOW)
    assert text == expected
    assert note_mentions_payment(text, "pay_67890")


def test_note_header_dropped_only_when_its_content_is() -> None:
    payment = replace(PAYMENT, promo_code="")
    template = "Промо:\n{promo_code}\nПочта:\n{email}\n{payment_id}"
    assert note_text(payment, template, MOSCOW) == (
        "Почта:\nivan@example.com\npay_67890\nPayment ID: pay_67890"
    )


@pytest.mark.parametrize(
    ("text", "payment_id", "expected"),
    [
        (SPEC_NOTE, "pay_67890", True),
        (SPEC_NOTE.replace("\n", "\r\n"), "pay_67890", True),
        ("Payment ID: pay_67890  ", "pay_67890", True),
        (SPEC_NOTE, "pay_6789", False),
        (SPEC_NOTE, "pay_678901", False),
        ("Payment ID: pay_678901", "pay_67890", False),
        ("Оплата pay_67890", "pay_67890", False),
        ("", "pay_67890", False),
    ],
)
def test_note_mentions_payment(text: str, payment_id: str, expected: bool) -> None:
    assert note_mentions_payment(text, payment_id) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal(10000), "10000"),
        (Decimal("10000.0"), "10000"),
        (Decimal("10000.00"), "10000"),
        (Decimal("10000.50"), "10000.5"),
        (Decimal("1E+4"), "10000"),
        (Decimal("0.1") + Decimal("0.2"), "0.3"),
        (Decimal("0.000001"), "0.000001"),
        (Decimal(0), "0"),
        (Decimal("-0.0"), "0"),
        (Decimal("0E+3"), "0"),
        (Decimal("-5.50"), "-5.5"),
    ],
)
def test_format_amount(value: Decimal, expected: str) -> None:
    assert format_amount(value) == expected


@pytest.mark.parametrize(
    ("template", "placeholders", "expected"),
    [
        (DEFAULT_NOTE_TEMPLATE, NOTE_PLACEHOLDERS, []),
        (DEFAULT_DEAL_NAME_TEMPLATE, DEAL_NAME_PLACEHOLDERS, []),
        ("Оплата {subjekt}", DEAL_NAME_PLACEHOLDERS, ["unknown placeholder {subjekt}"]),
        ("{courses}", DEAL_NAME_PLACEHOLDERS, ["unknown placeholder {courses}"]),
        (
            "Оплата {subject",
            DEAL_NAME_PLACEHOLDERS,
            ["malformed template: expected '}' before end of string"],
        ),
    ],
)
def test_template_problems(
    template: str, placeholders: frozenset[str], expected: list[str]
) -> None:
    assert template_problems(template, placeholders) == expected
