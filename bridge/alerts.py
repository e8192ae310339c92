"""Alerts: tell the operator when something needs them, without being asked.

When a delivery turns failed or dead, when a CRM is paused or resumed, and when the
queue's oldest delivery passes `ALERT_QUEUE_AGE_SECONDS`, a short text goes to a
Telegram chat (`ALERT_TELEGRAM_BOT_TOKEN` + `ALERT_TELEGRAM_CHAT_ID`, the Bot API's
`sendMessage`: https://core.telegram.org/bots/api#sendmessage) and/or a generic webhook
(`ALERT_WEBHOOK_URL`, a JSON body signed like the bridge's own inbound webhooks:
`X-Signature: sha256=HMAC(ALERT_WEBHOOK_SECRET, body)`).

- Never blocking: `notify` only queues (bounded; an overflow is logged and dropped), a
  background task sends; a slow or failing channel holds no delivery up.
- Once per incident: an incident is (kind, CRM); a repeat within
  `ALERT_MIN_INTERVAL_SECONDS` is counted, not sent, and the next alert of that incident
  says how many were folded into it. A CRM's pause and resume are each one incident; the
  queue-age alert fires once until the queue is young again.
- Recorded: every alert's delivery per channel (sent, or failed with why) is a row in
  the store's `alerts` table (`crm-bridge alerts` lists them); a failed alert is not
  retried (the next incident gets its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from bridge.errors import StoreUnavailable
from bridge.logs import mask_text
from bridge.settings import Settings, secret_value
from bridge.store import Store

log = logging.getLogger("bridge.alerts")

TELEGRAM_API = "https://api.telegram.org"
QUEUE_LIMIT = 1000
QUEUE_CHECK_SECONDS = 30.0
SEND_TIMEOUT_SECONDS = 10.0
TEXT_LIMIT = 3500  # under Telegram's 4096 characters per message


@dataclass(frozen=True)
class Alert:
    kind: str  # failed | dead | paused | resumed | queue_age
    subject: str  # the CRM, or "queue"
    text: str
    at: float


@dataclass
class _Incident:
    last_sent: float
    folded: int = 0


@dataclass
class Alerter:
    settings: Settings
    store: Store
    clock: Callable[[], float] = time.time
    transport: httpx.AsyncBaseTransport | None = None
    _queue: asyncio.Queue[Alert] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    _incidents: dict[tuple[str, str], _Incident] = field(default_factory=dict)
    _queue_alerted: bool = False
    _task: asyncio.Task[None] | None = None
    _client: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._channels())

    def _channels(self) -> list[str]:
        channels = []
        s = self.settings
        if secret_value(s.alert_telegram_bot_token) and s.alert_telegram_chat_id:
            channels.append("telegram")
        if s.alert_webhook_url:
            channels.append("webhook")
        return channels

    # ---- the worker's side: never waits ---------------------------------------------

    def notify(self, kind: str, subject: str, text: str) -> None:
        if not self.enabled:
            return
        now = self.clock()
        key = (kind, subject)
        incident = self._incidents.get(key)
        if incident is not None and now - incident.last_sent < self._interval:
            incident.folded += 1
            return
        if incident is not None and incident.folded:
            text += f" (and {incident.folded} more like it since the last alert)"
        self._incidents[key] = _Incident(now)
        try:
            self._queue.put_nowait(Alert(kind, subject, text[:TEXT_LIMIT], now))
        except asyncio.QueueFull:
            log.warning("alert queue full, alert dropped: %s", text[:200])

    @property
    def _interval(self) -> float:
        return self.settings.alert_min_interval_seconds

    # ---- the background side ----------------------------------------------------------

    def start(self) -> None:
        if not self.enabled or self._task is not None:
            return
        self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT_SECONDS, transport=self.transport)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def drain(self) -> None:
        """Send what is queued now (tests; shutdown)."""
        while not self._queue.empty():
            await self._send(self._queue.get_nowait())

    async def _run(self) -> None:
        next_check = self.clock()
        while True:
            timeout = max(0.0, next_check - self.clock())
            try:
                alert = await asyncio.wait_for(self._queue.get(), timeout=timeout)
            except TimeoutError:
                next_check = self.clock() + QUEUE_CHECK_SECONDS
                await self._check_queue_age()
                continue
            await self._send(alert)

    async def _check_queue_age(self) -> None:
        limit = self.settings.alert_queue_age_seconds
        if not limit:
            return
        try:
            queue = await self.store.queue_stats()
        except StoreUnavailable:
            return
        age = self.clock() - queue.oldest_pending_at if queue.oldest_pending_at else 0.0
        if age > limit and not self._queue_alerted:
            self._queue_alerted = True
            self.notify(
                "queue_age",
                "queue",
                f"the oldest waiting delivery is {age / 60:.0f} min old ({queue.depth} waiting):"
                " see crm-bridge stats and /webhook/health",
            )
        elif age <= limit:
            self._queue_alerted = False

    async def _send(self, alert: Alert) -> None:
        for channel in self._channels():
            try:
                outcome, detail = await self._deliver(channel, alert)
            except httpx.HTTPError as exc:
                # Never the URL: a Telegram bot URL holds the bot's token.
                outcome, detail = "failed", f"{type(exc).__name__}: {mask_text(str(exc))[:300]}"
            if outcome != "sent":
                log.warning("alert via %s not delivered: %s", channel, detail)
            try:
                await self.store.record_alert(
                    alert.kind, alert.subject, alert.text, channel, outcome, detail
                )
            except StoreUnavailable as exc:
                log.warning("alert not recorded: %s", exc)

    async def _deliver(self, channel: str, alert: Alert) -> tuple[str, str]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT_SECONDS, transport=self.transport)
        s = self.settings
        if channel == "telegram":
            token = secret_value(s.alert_telegram_bot_token)
            response = await self._client.post(
                f"{TELEGRAM_API}/bot{token}/sendMessage",
                json={"chat_id": s.alert_telegram_chat_id, "text": f"CRM Bridge: {alert.text}"},
            )
        else:
            body = json.dumps(
                {
                    "source": "crm-bridge",
                    "kind": alert.kind,
                    "subject": alert.subject,
                    "text": alert.text,
                    "at": alert.at,
                },
                ensure_ascii=False,
            ).encode()
            headers = {"Content-Type": "application/json"}
            secret = secret_value(s.alert_webhook_secret)
            if secret:
                digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                headers["X-Signature"] = f"sha256={digest}"
            response = await self._client.post(s.alert_webhook_url, content=body, headers=headers)
        if response.status_code >= 300:
            return "failed", f"HTTP {response.status_code}: {mask_text(response.text)[:300]}"
        return "sent", f"HTTP {response.status_code}"


def alert_transport(
    transports: Mapping[str, httpx.AsyncBaseTransport] | None,
) -> httpx.AsyncBaseTransport | None:
    """Tests hand the alert channels a transport under the name "alerts"."""
    return (transports or {}).get("alerts")
