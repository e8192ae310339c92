"""Back-sync inbound: each CRM's event verified its own way and parsed into `DealMoved`.

Samples are the vendors' documented bodies (pages cited in bridge/backsync/<crm>.py and
tests/fakes/crm_events.py); the fakes' `*_event` methods produce the same requests from a
manager's move, so the parsers are tested against both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.backsync import amocrm, bitrix24, hubspot, pipedrive
from bridge.backsync.events import DealMoved, InboundRequest, Malformed, Refused, Unauthorized
from bridge.backsync.form import decode_form
from bridge.backsync.inbound import parse_event, sends_events
from tests.clock import ManualClock
from tests.fakes.amocrm import FakeAmoCrm
from tests.fakes.bitrix24 import FakeBitrix24
from tests.fakes.crm_events import CrmRequest
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.pipedrive import FakePipedrive

NOW = 1_764_750_000.0  # 2025-12-03T08:20:00Z
BRIDGE = "https://bridge.example.ru/webhook/crm"


def inbound(request: CrmRequest) -> InboundRequest:
    return InboundRequest(request.method, request.url, request.headers, request.body)


def form_request(url: str, pairs: list[tuple[str, str]]) -> InboundRequest:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return InboundRequest("POST", url, headers, urlencode(pairs).encode())


FUZZ_KEYS = [
    "leads[status][0][id]",
    "leads[status][0][status_id]",
    "leads[status][0][pipeline_id]",
    "leads[status][0][updated_at]",
    "leads[delete][0][id]",
    "leads[update][x]",
    "event",
    "data[FIELDS][ID]",
    "ts",
    "auth[application_token]",
    "auth",
]
FUZZ_HEADERS = [
    "Authorization",
    "X-HubSpot-Signature-v3",
    "X-HubSpot-Request-Timestamp",
    "Content-Type",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "meta",
                    "data",
                    "previous",
                    "entity",
                    "action",
                    "entity_id",
                    "stage_id",
                    "pipeline_id",
                    "timestamp",
                    "update_time",
                    "subscriptionType",
                    "objectId",
                    "occurredAt",
                    "propertyName",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


# ---- the form decoder -----------------------------------------------------------------


def test_form_nests_php_keys_and_keeps_plain_ones() -> None:
    body = b"leads%5Bstatus%5D%5B0%5D%5Bid%5D=1&a%5B%5D=x&a%5B%5D=y&plain=v&odd%5Bx=1"
    assert decode_form(body) == {
        "leads": {"status": {"0": {"id": "1"}}},
        "a": {"0": "x", "1": "y"},
        "plain": "v",
        "odd[x": "1",
    }


def test_form_refuses_what_is_not_a_form() -> None:
    with pytest.raises(Malformed):
        decode_form(b"\xff\xfe")
    with pytest.raises(Malformed, match="deeper"):
        decode_form(("a" + "[b]" * 20 + "=1").encode())


# ---- amoCRM ---------------------------------------------------------------------------

# The documented status-change webhook (form-encoded, as amoCRM posts it).
AMO_SAMPLE = [
    ("leads[status][0][id]", "25399013"),
    ("leads[status][0][name]", "Lead title"),
    ("leads[status][0][old_status_id]", "7331"),
    ("leads[status][0][status_id]", "142"),
    ("leads[status][0][price]", "0"),
    ("leads[status][0][responsible_user_id]", "123123"),
    ("leads[status][0][last_modified]", "1413554372"),
    ("leads[status][0][modified_user_id]", "123123"),
    ("leads[status][0][created_user_id]", "123123"),
    ("leads[status][0][date_create]", "1413554349"),
    ("leads[status][0][pipeline_id]", "3364"),
    ("leads[status][0][account_id]", "7672743"),
    ("leads[status][0][created_at]", "1413554349"),
    ("leads[status][0][updated_at]", "1413554372"),
    ("account[subdomain]", "test"),
    ("account[id]", "7672743"),
    ("account[_links][self]", "https://test.amocrm.ru"),
]


def test_amocrm_sample_status_change() -> None:
    request = form_request(f"{BRIDGE}/amocrm?token=tok-new", AMO_SAMPLE)
    [moved] = parse_event("amocrm", "amocrm", request, ["tok-old", "tok-new"], NOW)
    assert moved == DealMoved(
        "amocrm",
        "25399013",
        "3364",
        "142",
        "25399013:3364:142:1413554372",
        datetime.fromtimestamp(1413554372, UTC),
    )


@pytest.mark.parametrize(
    ("url", "tokens", "reason"),
    [
        (f"{BRIDGE}/amocrm", ["tok"], "missing ?token="),
        (f"{BRIDGE}/amocrm?token=", ["tok"], "missing ?token="),
        (f"{BRIDGE}/amocrm?token=forged", ["tok", "tok2"], "token mismatch"),
        (f"{BRIDGE}/amocrm?token=tok", [], "no event token configured"),
        (f"{BRIDGE}/amocrm?token=tok", [""], "no event token configured"),
    ],
)
def test_amocrm_refuses_without_the_url_token(url: str, tokens: list[str], reason: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        amocrm.parse("amocrm", form_request(url, AMO_SAMPLE), tokens, NOW)
    assert caught.value.reason.startswith(reason)
    assert caught.value.status_code == 401
    assert "tok" not in caught.value.reason.replace("token", "")


def test_amocrm_token_is_checked_before_the_body_is_read() -> None:
    request = InboundRequest("POST", f"{BRIDGE}/amocrm?token=bad", {}, b"\xff")
    with pytest.raises(Unauthorized):
        amocrm.parse("amocrm", request, ["tok"], NOW)


def test_amocrm_fake_batches_several_moved_leads_in_one_request() -> None:
    clock = ManualClock(NOW)
    fake = FakeAmoCrm(clock=clock)
    pipeline = fake.account.main_pipeline()
    first, second = (fake.add_lead(name=f"Заказ {n}", price=1000 * n) for n in (1, 2))
    target = pipeline.statuses[1].id
    clock.advance(60)
    request = fake.move_leads_event(
        [(first, target, None), (second, 143, None)], url=f"{BRIDGE}/amocrm?token=tok"
    )
    assert request.method == "POST"
    assert request.path == "/webhook/crm/amocrm?token=tok"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert b"leads%5Bstatus%5D%5B1%5D%5Bid%5D=" in request.body  # PHP's encoding
    form = decode_form(request.body)
    assert form["leads"]["status"]["0"]["old_status_id"] == str(pipeline.statuses[0].id)  # type: ignore[index]
    moved = amocrm.parse("amocrm", inbound(request), ["tok"], NOW)
    assert [(m.deal_id, m.pipeline_id, m.status_id) for m in moved] == [
        (str(first), str(pipeline.id), str(target)),
        (str(second), str(pipeline.id), "143"),
    ]
    assert {m.occurred_at for m in moved} == {datetime.fromtimestamp(NOW + 60, UTC)}
    assert fake.lead(second)["status_id"] == 143  # the manager's move happened


def test_amocrm_resend_has_the_same_key_and_a_later_move_another() -> None:
    clock = ManualClock(NOW)
    fake = FakeAmoCrm(clock=clock)
    pipeline = fake.account.main_pipeline()
    lead = fake.add_lead()
    a, b = pipeline.statuses[1].id, 143  # lost: in every pipeline
    url = f"{BRIDGE}/amocrm?token=tok"
    clock.advance(10)
    first = fake.move_leads_event([(lead, a, None)], url=url)
    clock.advance(10)
    fake.move_leads_event([(lead, b, None)], url=url)
    clock.advance(10)
    back = fake.move_leads_event([(lead, a, None)], url=url)

    def key(request: CrmRequest) -> str:
        return amocrm.parse("amocrm", inbound(request), ["tok"], NOW)[0].dedup_key

    assert key(first) == key(first)
    assert key(first) != key(back)  # A → B → A: the second A is a change of its own


def test_amocrm_update_and_delete_and_status_of_one_change_collapse() -> None:
    pairs = [
        (key.replace("[status]", "[update]"), value)
        for key, value in AMO_SAMPLE
        if key.startswith("leads") and "old_status_id" not in key
    ]
    pairs += [*AMO_SAMPLE, ("leads[delete][0][id]", "777"), ("leads[delete][0][status_id]", "1")]
    moved = amocrm.parse("amocrm", form_request(f"{BRIDGE}/a?token=t", pairs), ["t"], NOW)
    assert [(m.deal_id, m.status_id, m.deleted) for m in moved] == [
        ("25399013", "142", False),
        ("777", None, True),
    ]
    assert moved[1].occurred_at == datetime.fromtimestamp(NOW, UTC)


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ([("leads[status][0][id]", "x")], "leads[status][0][id] is missing"),
        ([("leads[status][0][id]", "1")], "leads[status][0][pipeline_id] is missing"),
        (
            [("leads[status][0][id]", "1"), ("leads[status][0][pipeline_id]", "9" * 30)],
            "leads[status][0][pipeline_id]",
        ),
        (
            [
                ("leads[status][0][id]", "1"),
                ("leads[status][0][pipeline_id]", "2"),
                ("leads[status][0][status_id]", "3"),
                ("leads[status][0][updated_at]", "9" * 19),
            ],
            "out of range",
        ),
    ],
)
def test_amocrm_malformed_leads_are_refused_by_name(
    pairs: list[tuple[str, str]], reason: str
) -> None:
    with pytest.raises(Malformed, match=reason.replace("[", r"\[").replace("]", r"\]")):
        amocrm.parse("amocrm", form_request(f"{BRIDGE}/a?token=t", pairs), ["t"], NOW)


def test_amocrm_request_without_leads_is_empty() -> None:
    request = form_request(f"{BRIDGE}/a?token=t", [("contacts[add][0][id]", "1")])
    assert amocrm.parse("amocrm", request, ["t"], NOW) == []


# ---- Bitrix24 -------------------------------------------------------------------------

# https://apidocs.bitrix24.com/api-reference/crm/deals/events/on-crm-deal-update.html,
# form-encoded as Bitrix24 posts it.
BITRIX_SAMPLE = [
    ("event", "ONCRMDEALUPDATE"),
    ("event_handler_id", "201"),
    ("data[FIELDS][ID]", "759"),
    ("ts", "1736405807"),
    ("auth[access_token]", "s6p6eclrvim6da22ft9ch94ekreb52lv"),
    ("auth[expires_in]", "3600"),
    ("auth[scope]", "crm"),
    ("auth[domain]", "some-domain.bitrix24.com"),
    ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
    ("auth[status]", "F"),
    ("auth[client_endpoint]", "https://some-domain.bitrix24.com/rest/"),
    ("auth[member_id]", "a223c6b3710f85df22e9377d6c4f7553"),
    ("auth[refresh_token]", "4s386p3q0tr8dy89xvmt96234v3dljg8"),
    ("auth[application_token]", "51856fefc120afa4b628cc82d3935cce"),
]


def test_bitrix24_sample_gives_the_deal_without_its_stage() -> None:
    request = form_request(f"{BRIDGE}/bitrix24", BITRIX_SAMPLE)
    tokens = ["old-token", "51856fefc120afa4b628cc82d3935cce"]
    [moved] = parse_event("bitrix24", "bx", request, tokens, NOW)
    assert moved == DealMoved(
        "bx", "759", None, None, "759:1736405807", datetime.fromtimestamp(1736405807, UTC)
    )


@pytest.mark.parametrize(
    ("token", "tokens", "reason"),
    [
        (None, ["t"], "missing auth[application_token]"),
        ("forged", ["t", "u"], "application token mismatch"),
        ("t", [], "no application token configured"),
    ],
)
def test_bitrix24_refuses_without_the_application_token(
    token: str | None, tokens: list[str], reason: str
) -> None:
    pairs = [(k, v) for k, v in BITRIX_SAMPLE if k != "auth[application_token]"]
    if token is not None:
        pairs.append(("auth[application_token]", token))
    with pytest.raises(Unauthorized, match=reason.replace("[", r"\[").replace("]", r"\]")):
        bitrix24.parse("bx", form_request(f"{BRIDGE}/bx", pairs), tokens, NOW)


def test_bitrix24_other_events_are_empty_and_deletions_flagged() -> None:
    token = ("auth[application_token]", "t")
    other = [("event", "ONCRMCONTACTUPDATE"), ("data[FIELDS][ID]", "1"), token]
    assert bitrix24.parse("bx", form_request(BRIDGE, other), ["t"], NOW) == []
    gone = [("event", "ONCRMDEALDELETE"), ("data[FIELDS][ID]", "5"), ("ts", "100"), token]
    [moved] = bitrix24.parse("bx", form_request(BRIDGE, gone), ["t"], NOW)
    assert (moved.deal_id, moved.deleted, moved.dedup_key) == ("5", True, "5:deleted")
    broken = [("event", "ONCRMDEALUPDATE"), ("data[FIELDS][ID]", "abc"), token]
    with pytest.raises(Malformed, match="ID"):
        bitrix24.parse("bx", form_request(BRIDGE, broken), ["t"], NOW)


def test_bitrix24_fake_sends_the_documented_event_after_a_move() -> None:
    clock = ManualClock(NOW)
    fake = FakeBitrix24(clock=clock)
    deal = fake.add_deal(stage_id="NEW")
    clock.advance(30)
    request = fake.move_deal_event(
        deal, "EXECUTING", url=f"{BRIDGE}/bitrix24", application_token="app-token"
    )
    form = decode_form(request.body)
    assert form["event"] == "ONCRMDEALUPDATE"
    assert form["data"] == {"FIELDS": {"ID": str(deal)}}
    [moved] = bitrix24.parse("bitrix24", inbound(request), ["app-token"], NOW)
    assert (moved.deal_id, moved.status_id) == (str(deal), None)
    assert moved.occurred_at == datetime.fromtimestamp(int(NOW + 30), UTC)
    assert fake.deal(deal)["STAGE_ID"] == "EXECUTING"


# ---- HubSpot --------------------------------------------------------------------------

APP_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"  # the docs' placeholder secret
HUBSPOT_SAMPLE = [
    {
        "eventId": 1,
        "subscriptionId": 12345,
        "portalId": 62515,
        "occurredAt": 1764749900000,
        "subscriptionType": "deal.propertyChange",
        "attemptNumber": 0,
        "objectId": 123,
        "changeSource": "CRM",
        "propertyName": "dealstage",
        "propertyValue": "closedwon",
        "appId": 54321,
    },
    {
        "eventId": 2,
        "subscriptionId": 12346,
        "portalId": 62515,
        "occurredAt": 1764749900000,
        "subscriptionType": "deal.propertyChange",
        "attemptNumber": 0,
        "objectId": 123,
        "changeSource": "CRM",
        "propertyName": "amount",
        "propertyValue": "1000",
        "appId": 54321,
    },
    {
        "eventId": 3,
        "subscriptionId": 12347,
        "portalId": 62515,
        "occurredAt": 1764749900000,
        "subscriptionType": "contact.creation",
        "attemptNumber": 0,
        "objectId": 55,
        "changeFlag": "NEW",
        "appId": 54321,
    },
]


def hubspot_request(
    url: str, body: bytes, *, secret: str = APP_SECRET, at_ms: int = int(NOW * 1000)
) -> InboundRequest:
    source = b"POST" + url.encode() + body + str(at_ms).encode()
    signature = base64.b64encode(hmac.new(secret.encode(), source, hashlib.sha256).digest())
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature.decode(),
        "X-HubSpot-Request-Timestamp": str(at_ms),
    }
    return InboundRequest("POST", url, headers, body)


def test_hubspot_sample_keeps_only_stage_changes() -> None:
    body = json.dumps(HUBSPOT_SAMPLE).encode()
    request = hubspot_request(f"{BRIDGE}/hubspot", body)
    [moved] = parse_event("hubspot", "hubspot", request, ["rotated-out", APP_SECRET], NOW)
    assert moved == DealMoved(
        "hubspot",
        "123",
        None,
        "closedwon",
        "123:closedwon:1764749900000",
        datetime.fromtimestamp(1764749900, UTC),
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"X-HubSpot-Signature-v3": None}, "missing signature"),
        ({"X-HubSpot-Request-Timestamp": "soon"}, "timestamp malformed"),
        ({"X-HubSpot-Request-Timestamp": str(int(NOW * 1000) - 300_001)}, "timestamp too old"),
        ({"X-HubSpot-Request-Timestamp": str(int(NOW * 1000) + 300_001)}, "timestamp too new"),
        ({"X-HubSpot-Signature-v3": "AAAA"}, "signature mismatch"),
    ],
)
def test_hubspot_refuses_unsigned_forged_and_replayed(
    change: dict[str, str | None], reason: str
) -> None:
    signed = hubspot_request(f"{BRIDGE}/hubspot", json.dumps(HUBSPOT_SAMPLE).encode())
    merged = {**signed.headers, **change}
    headers = {name: value for name, value in merged.items() if value is not None}
    request = InboundRequest("POST", signed.url, headers, signed.body)
    with pytest.raises(Unauthorized) as caught:
        hubspot.parse("hubspot", request, [APP_SECRET], NOW)
    assert caught.value.reason == reason
    assert APP_SECRET not in caught.value.reason


def test_hubspot_signature_covers_url_and_body() -> None:
    body = json.dumps(HUBSPOT_SAMPLE).encode()
    signed = hubspot_request(f"{BRIDGE}/hubspot", body)
    for url, data in ((f"{BRIDGE}/other", body), (signed.url, body + b" ")):
        request = InboundRequest("POST", url, signed.headers, data)
        with pytest.raises(Unauthorized, match="signature mismatch"):
            hubspot.parse("hubspot", request, [APP_SECRET], NOW)
    with pytest.raises(Unauthorized, match="no app secret"):
        hubspot.parse("hubspot", signed, [], NOW)


def test_hubspot_signs_the_uri_with_its_listed_escapes_decoded() -> None:
    body = b"[]"
    called = f"{BRIDGE}/hubspot?next=a%3Ab%2Fc&q=%20x"
    # HubSpot decodes %3A and %2F (listed) before signing, and leaves %20 (not listed).
    signed = hubspot_request(f"{BRIDGE}/hubspot?next=a:b/c&q=%20x", body)
    request = InboundRequest("POST", called, signed.headers, body)
    assert hubspot.parse("hubspot", request, [APP_SECRET], NOW) == []


def test_hubspot_fake_batches_moves_and_signs_them() -> None:
    clock = ManualClock(NOW)
    fake = FakeHubSpot(clock=clock)
    first, second = fake.add_deal(), fake.add_deal()
    clock.advance(5)
    request = fake.move_deals_event(
        [(first, "appointmentscheduled"), (second, "closedlost")],
        url=f"{BRIDGE}/hubspot",
        app_secret=APP_SECRET,
    )
    events = json.loads(request.body)
    assert [event["subscriptionType"] for event in events] == ["deal.propertyChange"] * 2
    assert (
        request.headers["X-HubSpot-Signature"]
        == hashlib.sha256(APP_SECRET.encode() + request.body).hexdigest()
    )
    moved = hubspot.parse("hubspot", inbound(request), [APP_SECRET], NOW + 5)
    assert [(m.deal_id, m.status_id) for m in moved] == [
        (first, "appointmentscheduled"),
        (second, "closedlost"),
    ]
    assert fake.deal_field(second, "dealstage") == "closedlost"
    # Five minutes and a bit later, the same request is a replay.
    with pytest.raises(Unauthorized, match="too old"):
        hubspot.parse("hubspot", inbound(request), [APP_SECRET], NOW + 5 + 301)


def test_hubspot_malformed_bodies() -> None:
    for body, reason in (
        (b"{", "not JSON"),
        (b"{}", "not a JSON array"),
        (b"[1]", "event 0 is not an object"),
        (
            b'[{"subscriptionType":"deal.propertyChange","propertyName":"dealstage",'
            b'"objectId":"x","occurredAt":1}]',
            "whole numbers",
        ),
    ):
        with pytest.raises(Malformed, match=reason):
            hubspot.parse("hubspot", hubspot_request(BRIDGE, body), [APP_SECRET], NOW)


# ---- Pipedrive ------------------------------------------------------------------------

# The webhooks v2 deal change (https://prismatic.io/docs/example-payloads/pipedrive/
# triggers/pipedriveTrigger.json), with `previous` as v2 sends it for a stage move.
PIPEDRIVE_SAMPLE = {
    "meta": {
        "action": "change",
        "entity": "deal",
        "version": "2.0",
        "company_id": 12882925,
        "user_id": 18487521,
        "id": 1,
        "entity_id": 1,
        "webhook_id": 99,
        "webhook_owner_id": 18487521,
        "permitted_user_ids": [18487521],
        "attempt": 1,
        "host": "company.pipedrive.com",
        "timestamp": 1727447128,
        "change_source": "app",
    },
    "data": {
        "id": 1,
        "title": "test deal",
        "value": 2,
        "currency": "USD",
        "status": "open",
        "stage_id": 2,
        "pipeline_id": 1,
        "owner_id": 18487521,
        "person_id": 3,
        "org_id": 2,
        "add_time": "2024-09-27T14:25:27Z",
        "update_time": "2024-09-27T14:25:28Z",
    },
    "previous": {"stage_id": 1},
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def pipedrive_request(body: object, authorization: str | None) -> InboundRequest:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return InboundRequest("POST", f"{BRIDGE}/pipedrive", headers, json.dumps(body).encode())


def test_pipedrive_sample_stage_change() -> None:
    request = pipedrive_request(PIPEDRIVE_SAMPLE, basic("bridge", "s3cret"))
    [moved] = parse_event("pipedrive", "pd", request, ["bridge:old", "bridge:s3cret"], NOW)
    assert moved == DealMoved(
        "pd", "1", "1", "2", "1:1:2:2024-09-27T14:25:28Z", datetime.fromtimestamp(1727447128, UTC)
    )


@pytest.mark.parametrize(
    ("authorization", "credentials", "reason"),
    [
        (None, ["u:p"], "missing Basic credentials"),
        ("Bearer abc", ["u:p"], "missing Basic credentials"),
        ("Basic !!!", ["u:p"], "Basic credentials malformed"),
        (basic("u", "wrong"), ["u:p", "v:q"], "credentials mismatch"),
        (basic("u", "p"), [], "no webhook credentials configured"),
    ],
)
def test_pipedrive_refuses_without_the_basic_credentials(
    authorization: str | None, credentials: list[str], reason: str
) -> None:
    with pytest.raises(Unauthorized) as caught:
        pipedrive.parse("pd", pipedrive_request(PIPEDRIVE_SAMPLE, authorization), credentials, NOW)
    assert caught.value.reason == reason


def test_pipedrive_ignores_other_changes_and_flags_deletions() -> None:
    auth = basic("u", "p")
    title_only = {**PIPEDRIVE_SAMPLE, "previous": {"title": "old"}}
    person = {**PIPEDRIVE_SAMPLE, "meta": {**PIPEDRIVE_SAMPLE["meta"], "entity": "person"}}  # type: ignore[dict-item]
    created = {**PIPEDRIVE_SAMPLE, "meta": {**PIPEDRIVE_SAMPLE["meta"], "action": "create"}}  # type: ignore[dict-item]
    for body in (title_only, person, created):
        assert pipedrive.parse("pd", pipedrive_request(body, auth), ["u:p"], NOW) == []
    deleted = {**PIPEDRIVE_SAMPLE, "meta": {**PIPEDRIVE_SAMPLE["meta"], "action": "delete"}}  # type: ignore[dict-item]
    [moved] = pipedrive.parse("pd", pipedrive_request(deleted, auth), ["u:p"], NOW)
    assert (moved.deal_id, moved.deleted) == ("1", True)
    with pytest.raises(Malformed, match="no meta"):
        pipedrive.parse("pd", pipedrive_request({"v": 1, "current": {}}, auth), ["u:p"], NOW)


def test_pipedrive_iso_timestamps_are_taken() -> None:
    meta = {**PIPEDRIVE_SAMPLE["meta"], "timestamp": "2024-09-27T14:25:29.123Z"}  # type: ignore[dict-item]
    body = {**PIPEDRIVE_SAMPLE, "meta": meta}
    [moved] = pipedrive.parse("pd", pipedrive_request(body, basic("u", "p")), ["u:p"], NOW)
    assert moved.occurred_at == datetime(2024, 9, 27, 14, 25, 29, 123000, UTC)


def test_pipedrive_fake_sends_v2_with_basic_auth_after_a_move() -> None:
    clock = ManualClock(NOW)
    fake = FakePipedrive(clock=clock)
    deal = fake.add_deal(title="Заказ R-1")
    stage = fake.deal(deal)["stage_id"]
    target = next(s for s in fake.company.stages.values() if s.id != stage)
    clock.advance(42)
    request = fake.move_deal_event(
        deal, target.id, url=f"{BRIDGE}/pipedrive", user="bridge", password="pw"
    )
    body = json.loads(request.body)
    assert body["meta"]["action"] == "change" and body["meta"]["version"] == "2.0"
    assert body["previous"]["stage_id"] == stage
    assert request.headers["Authorization"] == basic("bridge", "pw")
    [moved] = pipedrive.parse("pipedrive", inbound(request), ["bridge:pw"], NOW)
    assert (moved.deal_id, moved.pipeline_id, moved.status_id) == (
        str(deal),
        str(target.pipeline_id),
        str(target.id),
    )
    assert moved.occurred_at == datetime.fromtimestamp(int(NOW + 42), UTC)
    again = pipedrive.parse("pipedrive", inbound(request), ["bridge:pw"], NOW + 600)
    assert again[0].dedup_key == moved.dedup_key  # a resend


def test_only_the_four_crms_send_events() -> None:
    assert [kind for kind in ("amocrm", "bitrix24", "hubspot", "pipedrive") if sends_events(kind)]
    assert not sends_events("odoo")


# ---- whatever arrives, a refusal or a result: never an exception the route would 500 on


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["amocrm", "bitrix24", "hubspot", "pipedrive"]),
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda pairs: urlencode(pairs).encode(),
            st.lists(st.tuples(st.sampled_from(FUZZ_KEYS), st.text(max_size=25)), max_size=8),
        ),
        st.builds(lambda doc: json.dumps(doc).encode(), JSON_VALUES),
    ),
    headers=st.dictionaries(
        st.sampled_from(FUZZ_HEADERS),
        st.text(max_size=40) | st.sampled_from(["Basic dTpw", str(int(NOW * 1000))]),
        max_size=4,
    ),
    sign=st.booleans(),
    query=st.sampled_from(["", "?token=t", "?token=x&token=t"]),
)
def test_no_input_escapes_as_anything_but_a_refusal(
    kind: str, body: bytes, headers: dict[str, str], query: str, sign: bool
) -> None:
    url = f"{BRIDGE}/{kind}{query}"
    if sign:  # past verification, into the parsers
        stamp = str(int(NOW * 1000))
        headers = {
            "Authorization": "Basic dTpw",
            "X-HubSpot-Request-Timestamp": stamp,
            "X-HubSpot-Signature-v3": hubspot.signature("POST", url, body, stamp, "t"),
        }
    request = InboundRequest("POST", url, headers, body)
    try:
        moved = parse_event(kind, kind, request, ["t", "u:p"], NOW)
        status = 200
    except Refused as refused:
        moved, status = [], refused.status_code
    assert status in (200, 400, 401)
    assert all(isinstance(item, DealMoved) for item in moved)
