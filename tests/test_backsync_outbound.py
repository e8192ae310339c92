"""Back-sync after parsing: the Bitrix24 stage read, stage → order status, the signed
platform callback and the settings they read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.backsync import bitrix24
from bridge.backsync.callback import (
    StatusChanged,
    callback_body,
    callback_request,
    message_id,
)
from bridge.backsync.config import callback_target, event_secrets, event_secrets_var
from bridge.backsync.decide import LinkedOrder, decide
from bridge.backsync.echo import OwnMove, is_echo
from bridge.backsync.events import DealMoved, InboundRequest
from bridge.backsync.stage_read import read_stage
from bridge.backsync.statuses import StageMap
from bridge.checks import env_file_findings
from bridge.crm.bitrix24 import Bitrix24, build_bitrix24
from bridge.domain import OrderStatus
from bridge.errors import ConfigError
from bridge.settings import CrmConfig, FileConfig, Settings, load_settings
from bridge.signing import verify
from tests.fakes.bitrix24 import FakeBitrix24, example_config
from tests.fakes.memory import MemoryCrm, adapter_on

NEW, RESERVED, IN_RENT, IN_PROGRESS, ARCHIVED, CANCELLED = OrderStatus
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example
AT = datetime(2026, 12, 3, 9, 15, 0, 512000, UTC)


def with_stages(config: CrmConfig, stages: dict[OrderStatus, tuple[str, str]]) -> CrmConfig:
    raw = config.model_dump()
    raw["order_stages"] = {
        status.value: {"pipeline_id": pipeline, "status_id": stage}
        for status, (pipeline, stage) in stages.items()
    }
    return CrmConfig.model_validate(raw)


def one_pipeline(pipeline: str, *stages: str) -> dict[OrderStatus, tuple[str, str]]:
    """Order stages in one pipeline, one stage per order status in OrderStatus' order."""
    return {status: (pipeline, stage) for status, stage in zip(OrderStatus, stages, strict=True)}


def stage_map(stages: dict[OrderStatus, tuple[str, str]]) -> StageMap:
    return StageMap.from_config(with_stages(example_config(), stages))


# in_rent and in_progress share EXECUTING
BX_STAGES = one_pipeline("0", "NEW", "UC_AUTOPAY", "EXECUTING", "EXECUTING", "WON", "LOSE")


# ---- stage → order status -------------------------------------------------------------


AMO_STAGES = one_pipeline("4423755", "63242022", "63242023", "63242024", "63242025", "142", "143")


@pytest.mark.parametrize(
    ("pipeline", "stage", "current", "status", "reason"),
    [
        ("4423755", "63242024", RESERVED, IN_RENT, "mapped"),
        ("4423755", "143", None, CANCELLED, "mapped"),
        ("4423755", "63242024", IN_RENT, None, "is the order's current status in_rent"),
        # amoCRM's won/lost ids are the same in every pipeline: the pipeline decides
        ("8598230", "143", IN_RENT, None, "maps to no order status"),
        ("4423755", "999", NEW, None, "stage 999 of pipeline 4423755 maps to no order status"),
        (None, "142", IN_RENT, ARCHIVED, "mapped"),
    ],
)
def test_stage_map_inverts_order_stages(
    pipeline: str | None,
    stage: str,
    current: OrderStatus | None,
    status: OrderStatus | None,
    reason: str,
) -> None:
    resolution = stage_map(AMO_STAGES).resolve(pipeline, stage, current)
    assert (resolution.status, resolution.forwards) == (status, status is not None)
    assert reason in resolution.reason


def test_a_shared_stage_keeps_the_current_status_or_forwards_nothing() -> None:
    shared = stage_map(BX_STAGES)
    assert shared.candidates("0", "EXECUTING") == (IN_RENT, IN_PROGRESS)
    kept = shared.resolve("0", "EXECUTING", IN_PROGRESS)
    assert (kept.status, kept.reason) == (
        None,
        "stage EXECUTING of pipeline 0 is the order's current status in_progress",
    )
    unsure = shared.resolve("0", "EXECUTING", RESERVED)
    assert unsure.status is None
    assert (
        unsure.reason
        == "stage EXECUTING of pipeline 0 is shared by in_rent, in_progress: not forwarded"
    )
    assert shared.resolve("0", "WON", IN_RENT).status == ARCHIVED


def test_without_order_stages_nothing_maps() -> None:
    empty = StageMap.from_config(example_config())
    assert empty.resolve("0", "NEW", None).status is None


def test_a_stage_id_in_two_pipelines_without_a_pipeline_is_shared() -> None:
    stages = {**AMO_STAGES, CANCELLED: ("8598230", "142")}  # 142 in another pipeline
    resolution = stage_map(stages).resolve(None, "142", None)
    assert "shared by archived, cancelled" in resolution.reason


# ---- the Bitrix24 stage read ----------------------------------------------------------


@pytest.fixture
async def bx_pair() -> AsyncIterator[tuple[FakeBitrix24, Bitrix24]]:
    config = example_config(enabled=True)
    fake = FakeBitrix24(config)
    adapter = adapter_on(
        build_bitrix24, fake, config, static={"bitrix24_webhook_url": fake.webhook_url()}
    )
    yield fake, adapter
    await adapter.connection.aclose()


async def test_bitrix24_event_then_stage_read_then_status(
    bx_pair: tuple[FakeBitrix24, Bitrix24],
) -> None:
    fake, adapter = bx_pair
    deal = fake.add_deal(stage_id="UC_AUTOPAY")
    request = fake.move_deal_event(
        deal, "LOSE", url="https://bridge.example/webhook/crm/bitrix24", application_token="t"
    )
    [event] = bitrix24.parse(
        "bitrix24",
        InboundRequest(request.method, request.url, request.headers, request.body),
        ["t"],
        fake.clock(),
    )
    calls = len(fake.calls)
    moved = await read_stage(adapter, event)
    assert moved is not None and len(fake.calls) > calls
    assert (moved.pipeline_id, moved.status_id, moved.dedup_key) == ("0", "LOSE", event.dedup_key)
    assert stage_map(BX_STAGES).resolve(moved.pipeline_id, "LOSE", RESERVED).status == CANCELLED


async def test_stage_read_of_a_deal_gone_is_none(bx_pair: tuple[FakeBitrix24, Bitrix24]) -> None:
    fake, adapter = bx_pair
    deal = fake.add_deal()
    fake.delete_deal(deal)
    event = DealMoved("bitrix24", str(deal), None, None, f"{deal}:1", AT)
    assert await read_stage(adapter, event) is None


async def test_stage_read_makes_no_call_when_the_event_says_the_stage() -> None:
    memory = MemoryCrm(example_config())
    carried = DealMoved("amocrm", "7", "1", "2", "7:1:2:5", AT)
    deleted = DealMoved("amocrm", "7", None, None, "7:deleted", AT, deleted=True)
    assert await read_stage(memory, carried) is carried
    assert await read_stage(memory, deleted) is deleted
    assert memory.calls == []


# ---- the callback ---------------------------------------------------------------------

CHANGE = StatusChanged("R-1042", IN_RENT, RESERVED, "amocrm", "31525141", AT)


def test_callback_body_names_order_status_crm_deal_and_time() -> None:
    assert json.loads(callback_body(CHANGE)) == {
        "type": "order.status_changed",
        "order_id": "R-1042",
        "status": "in_rent",
        "previous_status": "reserved",
        "crm": "amocrm",
        "deal_id": "31525141",
        "changed_at": "2026-12-03T09:15:00Z",
    }
    first = replace(CHANGE, previous_status=None, order_id="Заказ-1")
    assert json.loads(callback_body(first))["previous_status"] is None
    assert "Заказ-1".encode() in callback_body(first)  # UTF-8, not \u escapes


def test_callback_is_signed_as_the_platform_verifies_standard_webhooks() -> None:
    msg_id = message_id("amocrm", "31525141:4423755:63242024:1764753300")
    request = callback_request(
        CHANGE, url="https://shop.example/hooks/crm", secret=WHSEC, msg_id=msg_id, now=1764753300
    )
    assert (request.method, request.url) == ("POST", "https://shop.example/hooks/crm")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["webhook-id"] == msg_id
    assert request.headers["webhook-signature"].startswith("v1,")
    kwargs: dict[str, Any] = {"hmac_secrets": [], "legacy_enabled": False, "now": 1764753300}
    assert verify(request.headers, request.body, standard_secrets=[WHSEC], **kwargs).ok
    tampered = verify(request.headers, request.body + b" ", standard_secrets=[WHSEC], **kwargs)
    assert tampered.reason == "signature mismatch"
    other = "whsec_" + "QUJD" * 8
    assert not verify(request.headers, request.body, standard_secrets=[other], **kwargs).ok


def test_a_retry_keeps_the_id_and_signs_its_own_time() -> None:
    msg_id = message_id("amocrm", "key")
    first = callback_request(CHANGE, url="https://p", secret=WHSEC, msg_id=msg_id, now=1000)
    later = callback_request(CHANGE, url="https://p", secret=WHSEC, msg_id=msg_id, now=90000)
    assert first.headers["webhook-id"] == later.headers["webhook-id"]
    assert first.body == later.body
    assert first.headers["webhook-timestamp"] != later.headers["webhook-timestamp"]
    assert message_id("amocrm", "key") == msg_id
    assert message_id("hubspot", "key") != msg_id
    assert message_id("amocrm", "other") != msg_id


# ---- settings -------------------------------------------------------------------------


def settings(**values: Any) -> Settings:
    return load_settings(**{"file": FileConfig(), "crm_env": {}, "_env_file": None, **values})


def test_callback_target_is_off_whole_or_refused_by_name() -> None:
    assert callback_target(settings()) is None
    target = callback_target(
        settings(platform_callback_url="https://shop.example/h", platform_callback_secret=WHSEC)
    )
    assert target is not None and (target.url, target.secret) == ("https://shop.example/h", WHSEC)
    for values, needed in (
        ({"platform_callback_url": "https://shop.example/h"}, "PLATFORM_CALLBACK_SECRET"),
        ({"platform_callback_secret": WHSEC}, "PLATFORM_CALLBACK_URL"),
        (
            {"platform_callback_url": "shop.example/h", "platform_callback_secret": WHSEC},
            "PLATFORM_CALLBACK_URL needs a scheme",
        ),
        (
            {"platform_callback_url": "https://s.example", "platform_callback_secret": "whsec_%%"},
            "PLATFORM_CALLBACK_SECRET",
        ),
    ):
        with pytest.raises(ConfigError, match=needed) as caught:
            callback_target(settings(**values))
        assert "%%" not in str(caught.value) and WHSEC not in str(caught.value)


def test_callback_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLATFORM_CALLBACK_URL", "https://shop.example/crm-events")
    monkeypatch.setenv("PLATFORM_CALLBACK_SECRET", WHSEC)
    monkeypatch.setenv("AMO_SANDBOX_EVENT_SECRETS", "new-token, old-token")
    loaded = load_settings(file=FileConfig(), _env_file=None)
    target = callback_target(loaded)
    assert target is not None and target.url == "https://shop.example/crm-events"
    assert event_secrets_var("amo-sandbox") == "AMO_SANDBOX_EVENT_SECRETS"
    assert event_secrets(loaded, "amo-sandbox") == ("new-token", "old-token")


def test_hubspot_event_secrets_default_to_the_app_client_secret() -> None:
    hubspot = CrmConfig.model_validate(
        {
            "kind": "hubspot",
            "base_url": "https://api.hubapi.com",
            "default_pipeline": {"pipeline_id": "default", "status_id": "1"},
        }
    )
    files = FileConfig(crm={"hs": hubspot})
    plain = settings(file=files, crm_env={"HS_CLIENT_SECRET": SecretStr("app-secret")})
    assert event_secrets(plain, "hs") == ("app-secret",)
    both = {"HS_CLIENT_SECRET": SecretStr("app"), "HS_EVENT_SECRETS": SecretStr("a,b")}
    assert event_secrets(settings(file=files, crm_env=both), "hs") == ("a", "b")
    assert event_secrets(settings(file=files), "other") == ()


# ---- no echo --------------------------------------------------------------------------


def moved_at(stage: str, seconds: float, pipeline: str | None = "1") -> DealMoved:
    return DealMoved("amocrm", "7", pipeline, stage, f"7:{stage}:{seconds}", at(seconds))


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(1_764_750_000 + seconds, UTC)


def test_the_bridges_own_moves_are_echoes_even_when_reported_late() -> None:
    own = [OwnMove("7", "1", "RESERVED", at(0)), OwnMove("7", "1", "IN_RENT", at(2))]
    # The CRM reports the first move after the second was applied: still the bridge's.
    assert is_echo(moved_at("RESERVED", 1), own)
    assert is_echo(moved_at("IN_RENT", 3), own)
    assert is_echo(moved_at("IN_RENT", 3, pipeline=None), own)  # HubSpot: no pipeline


def test_a_managers_move_is_not_an_echo() -> None:
    own = [OwnMove("7", "1", "RESERVED", at(0))]
    assert not is_echo(moved_at("RESERVED", 301), own)  # back to it, later
    assert not is_echo(moved_at("CANCELLED", 1), own)  # another stage
    assert not is_echo(moved_at("RESERVED", 1, pipeline="2"), own)  # another pipeline
    other_deal = DealMoved("amocrm", "8", "1", "RESERVED", "k", at(1))
    assert not is_echo(other_deal, own)
    gone = DealMoved("amocrm", "7", None, None, "7:deleted", at(1), deleted=True)
    assert not is_echo(gone, own)
    assert not is_echo(moved_at("RESERVED", 0), [])
    assert is_echo(moved_at("RESERVED", 60), own, window_seconds=60)


# ---- the decision ---------------------------------------------------------------------

DEAL_MAP = stage_map(one_pipeline("1", "NEW", "RESERVED", "IN_RENT", "IN_PROGRESS", "WON", "LOST"))
ORDER = LinkedOrder("R-1042", RESERVED)


def test_a_managers_move_becomes_one_callback() -> None:
    decision = decide(moved_at("IN_RENT", 10), ORDER, DEAL_MAP, [])
    assert decision.reason == "forwarded"
    assert decision.callback == StatusChanged("R-1042", IN_RENT, RESERVED, "amocrm", "7", at(10))


@pytest.mark.parametrize(
    ("moved", "order", "own", "reason"),
    [
        (
            DealMoved("amocrm", "7", None, None, "7:deleted", AT, deleted=True),
            ORDER,
            [],
            "deal 7 was deleted in the CRM",
        ),
        (moved_at("IN_RENT", 10), None, [], "deal 7 is linked to no order"),
        (
            moved_at("IN_RENT", 10),
            ORDER,
            [OwnMove("7", "1", "IN_RENT", at(9))],
            "deal 7: the bridge's own move",
        ),
        (moved_at("RESERVED", 10), ORDER, [], "deal 7: stage RESERVED of pipeline 1 is the"),
        (moved_at("ELSEWHERE", 10), ORDER, [], "deal 7: stage ELSEWHERE of pipeline 1 maps to no"),
    ],
)
def test_what_is_not_forwarded_says_why(
    moved: DealMoved, order: LinkedOrder | None, own: list[OwnMove], reason: str
) -> None:
    decision = decide(moved, order, DEAL_MAP, own)
    assert decision.callback is None
    assert decision.reason.startswith(reason)


def test_the_stage_must_be_read_before_deciding() -> None:
    with pytest.raises(ValueError, match="stage not read"):
        decide(DealMoved("bitrix24", "7", None, None, "7:1", AT), ORDER, DEAL_MAP)


def test_check_knows_event_secrets_in_the_env_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "AMO_SANDBOX_EVENT_SECRETS=a,b\nAMO_SANDBOX_ACCESS_TOKEN=t\n"
        "PLATFORM_CALLBACK_URL=https://x.example\nPLATFORM_CALLBACK_SECRETS=typo\n"
        "AMO_SANDBX_EVENT_SECRETS=c\n"
    )
    findings = [finding.text for finding in env_file_findings(env, ["amo-sandbox"])]
    assert len(findings) == 2
    assert "unknown key PLATFORM_CALLBACK_SECRETS" in findings[0]
    assert "unknown key AMO_SANDBX_EVENT_SECRETS" in findings[1]  # no such section
