"""The in-process delivery worker: a poll loop over due deliveries.

A delivery may run twice (crash, restart, a nudge), so everything it does is made safe
to repeat by `flow`. The worker adds what the flow cannot know:
- which deliveries are due, and never two at once for the same customer in one CRM;
- due payments of different customers in one CRM with batch forms started as one group
  (`bridge.batching`), which takes one slot of `worker_concurrency`;
- the durable retry schedule (1 min … 12 h, then `dead` after about three days);
- pausing a CRM whose credentials fail: its deliveries wait, no attempt is burnt, and
  one delivery probes every `pause_probe_seconds` until the credentials work again;
- telling waiting HTTP handlers when an event has settled.
An attempt ends as one `Attempt` value, which recording and logging `match` on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar
from zoneinfo import ZoneInfo

import httpx
from pydantic import ValidationError

from bridge.backsync.config import CallbackTarget, callback_target
from bridge.backsync.delivery import (
    CallbackDone,
    PlatformRefused,
    PlatformUnavailable,
    deliver_crm_event,
)
from bridge.batching import BatchGroup, GroupMember, group_size
from bridge.crm.base import (
    BatchForms,
    CrmAdapter,
    batch_forms,
    counting_calls,
    order_adapter,
)
from bridge.crm.calllog import recording_calls
from bridge.domain import DealResult, Journal, KnownRefs
from bridge.errors import (
    AuthError,
    ConfigError,
    NotFound,
    PermanentCrmError,
    RateLimited,
    StoreUnavailable,
    TransientCrmError,
)
from bridge.flow import FlowContext, deliver_payment
from bridge.intake import customer_identity, order_from_stored, payment_from_stored
from bridge.logs import clip, mask_keys
from bridge.order_delivery import ORDER_KIND, deliver_order_event
from bridge.order_flow import OrderContext
from bridge.payloads import validation_details
from bridge.refusals import RefusalExplainer
from bridge.settings import CrmConfig, Settings
from bridge.sources.intake import BodyError, MappingFailed, UnknownSource, payment_from_source
from bridge.store import DeliveryJob, OrderLink, Store
from bridge.store.backsync import CRM_EVENT_KIND, PLATFORM

log = logging.getLogger("bridge.worker")

Clock = Callable[[], float]


@dataclass(frozen=True)
class Delivered:
    outcome: ClassVar[str] = "success"
    result: DealResult
    warnings: tuple[str, ...]
    remember: KnownRefs | None  # payments: the customer's contact and deal for next time
    order_link: OrderLink | None = None  # orders: the order → deal link and what was applied


@dataclass(frozen=True)
class Retry:
    """Try again later: at the schedule's next step, or `retry_after` if that is later."""

    outcome: ClassVar[str] = "retry"
    error: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Paused:
    """Credentials failed: the CRM waits, and this attempt does not count."""

    outcome: ClassVar[str] = "paused"
    error: str


@dataclass(frozen=True)
class Failed:
    outcome: ClassVar[str] = "failed"
    error: str


@dataclass(frozen=True)
class NotFoundOutcome:
    outcome: ClassVar[str] = "not_found"
    error: str


@dataclass(frozen=True)
class Forwarded:
    """A CRM event handled: its callback acknowledged by the platform, or nothing to send."""

    outcome: ClassVar[str] = "success"
    done: CallbackDone


Attempt = Delivered | Forwarded | Retry | Paused | Failed | NotFoundOutcome
# How long one callback to the platform may take (connect, send, answer).
CALLBACK_TIMEOUT_SECONDS = 10.0
# A retry heals itself most of the time: WARNING, so `journalctl -p err` holds only what
# needs the operator (failed, dead).
_LOG_LEVELS = {"not_found": logging.INFO, "paused": logging.WARNING, "retry": logging.WARNING}


@dataclass
class _Pause:
    reason: str
    next_probe_at: float


@dataclass
class _Outage:
    """The database refused a write: wait, then put interrupted deliveries back."""

    retry_at: float
    backoff: float = 1.0
    interrupted: set[int] = field(default_factory=set)


@dataclass
class Worker:
    store: Store
    adapters: Mapping[str, CrmAdapter]
    settings: Settings
    clock: Clock = time.time
    pause_probe_seconds: float = 30.0
    on_outcome: Callable[[str, str, float], None] | None = None
    # (kind, crm, text) when an operator should hear of it: failed, dead, paused, resumed.
    on_alert: Callable[[str, str, str], None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _running: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    _groups: dict[int, BatchGroup] = field(default_factory=dict)  # delivery id → its group
    _jobs: dict[int, DeliveryJob] = field(default_factory=dict)
    _blocked: bool = False
    _next_due: float | None = None
    _outage: _Outage | None = None
    _busy_keys: set[tuple[str, str]] = field(default_factory=set)
    _paused: dict[str, _Pause] = field(default_factory=dict)
    _settled: dict[int, asyncio.Event] = field(default_factory=dict)
    _stopping: bool = False
    _refusals: RefusalExplainer = field(default_factory=RefusalExplainer)
    _refusal_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # per CRM, form
    # CRMs the operator paused (`crm-bridge pause`), read from the store at most once a
    # second: another process changes them.
    _held: dict[str, str] = field(default_factory=dict)
    _held_read_at: float = float("-inf")
    # Back-sync callbacks (`PLATFORM_CALLBACK_URL`): tests hand in the platform stand-in.
    platform_transport: httpx.AsyncBaseTransport | None = None
    _platform_client: httpx.AsyncClient | None = None
    _callback: tuple[Settings, CallbackTarget | None] | None = None

    # ---- public surface ----------------------------------------------------------------

    def wake(self) -> None:
        """New work was stored. With every slot taken it cannot start yet, and the
        delivery that frees a slot wakes the loop anyway: a burst of webhooks then costs
        the loop nothing."""
        if self._slots_used() < self.settings.worker_concurrency:
            self._wake.set()

    def paused(self) -> dict[str, str]:
        return {crm: pause.reason for crm, pause in self._paused.items()}

    def running_tasks(self) -> list[asyncio.Task[None]]:
        return list(self._running.values())

    def reconfigure(self, settings: Settings, adapters: Mapping[str, CrmAdapter]) -> None:
        """A reload: deliveries started from now on use these; running ones finish with
        what they started with (each holds its adapter and config)."""
        self.settings = settings
        self.adapters = adapters
        self._refusals.forget()
        self._refusal_counts.clear()  # a reload may point a CRM elsewhere
        for crm in list(self._paused):
            if crm not in adapters:
                del self._paused[crm]
        self._wake.set()

    async def recheck_credentials(self) -> None:
        """After a reload: pause CRMs still without credentials, lift the others' pause
        (a token that was just configured)."""
        for crm, adapter in self.adapters.items():
            problem = await adapter.connection.credentials_problem()
            if problem is None and crm in self._paused:
                reason = self._paused.pop(crm).reason
                log.warning(
                    "%s resumed: credentials in place after a reload (was: %s)", crm, reason
                )
                await self.store.set_crm_state(crm, paused_reason=None)
            elif problem is not None:
                self._pause(crm, problem)
                await self.store.set_crm_state(crm, paused_reason=problem)
        self._wake.set()

    def callback(self) -> CallbackTarget | None:
        """The platform's callback under the settings in force (None: back-sync off; a
        reload that broke it is logged once and sends nothing until fixed)."""
        if self._callback is None or self._callback[0] is not self.settings:
            try:
                target = callback_target(self.settings)
            except ConfigError as exc:
                log.error("back-sync callbacks wait: %s", exc)
                target = None
            self._callback = (self.settings, target)
        return self._callback[1]

    def held(self) -> dict[str, str]:
        """CRMs the operator paused, as last read from the store."""
        return dict(self._held)

    async def _refresh_held(self, now: float) -> None:
        if now - self._held_read_at < 1.0:
            return
        self._held_read_at = now
        holds = await self.store.holds()
        current = {crm: f"{hold.reason} (by {hold.by})" for crm, hold in holds.items()}
        for crm in current.keys() - self._held.keys():
            log.warning("%s paused by the operator: %s", crm, current[crm])
            self._alert("paused", crm, f"{crm} paused by the operator: {current[crm]}")
        for crm in self._held.keys() - current.keys():
            log.warning("%s resumed by the operator", crm)
            self._alert("resumed", crm, f"{crm} resumed by the operator")
            self._wake.set()
        self._held = current

    def settled_signal(self, event_id: int) -> asyncio.Event:
        """An event set each time one of the event's deliveries finishes an attempt."""
        return self._settled.setdefault(event_id, asyncio.Event())

    def forget_signal(self, event_id: int) -> None:
        self._settled.pop(event_id, None)

    async def run(self) -> None:
        await self.store.reset_interrupted(delay=self._late_write_delay())
        await self._pause_without_credentials()
        while not self._stopping:
            self._wake.clear()
            try:
                await self._dispatch()
            except StoreUnavailable as exc:
                self._store_failed(None, exc)
            await self._sleep_until_due()

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking work; give running deliveries `grace_seconds`, then abandon them.

        An abandoned delivery stays `processing` in the database and is put back in the
        queue at the next start; the journal makes repeating it safe.
        """
        self._stopping = True
        self._wake.set()
        tasks = list(self._running.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._platform_client is not None:
            await self._platform_client.aclose()
            self._platform_client = None

    async def _pause_without_credentials(self) -> None:
        """A CRM with no credentials yet (a fresh install) waits, and health says why."""
        for crm, adapter in self.adapters.items():
            try:
                problem = await adapter.connection.credentials_problem()
            except StoreUnavailable as exc:
                problem = f"cannot read stored credentials: {exc}"
            if problem is not None:
                self._pause(crm, problem)
                await self.store.set_crm_state(crm, paused_reason=problem)
            else:
                await self.store.set_crm_state(crm, paused_reason=None)

    # ---- dispatch ----------------------------------------------------------------------

    async def _dispatch(self) -> int:
        now = self.clock()
        if self._outage is not None and not await self._store_recovered(self._outage, now):
            return 0
        await self._refresh_held(now)
        crms = [name for name in self.adapters if self._may_run(name, now)]
        if self.callback() is not None and self._may_run(PLATFORM, now):
            crms.append(PLATFORM)  # back-sync callbacks, a queue of their own
        free = self.settings.worker_concurrency - self._slots_used()
        self._blocked = free <= 0
        self._next_due = None
        if free <= 0 or not crms:
            return 0
        widest = max((self._group_limit(crm) for crm in crms), default=1)
        due = await self.store.due_deliveries(now, crms, limit=free * widest)
        self._next_due = due.next_due_at
        started = 0
        # Finished a moment ago in memory, not yet in the store: its end wakes us.
        ready = [job for job in due.jobs if not self._running_or_busy(job)]
        self._blocked = self._blocked or len(ready) < len(due.jobs)
        gathering = self._gathering(ready)
        filling: dict[str, BatchGroup] = {}  # the group each CRM's payments join now
        for job in ready:
            if self._stopping:
                break
            if (job.crm in gathering and _batchable(job)) or self._customer_busy(job):
                self._blocked = True  # the running group's (or delivery's) end wakes us
                continue
            if job.crm in self._paused:
                if job.crm in {j.crm for j in self._probing()}:
                    continue
                self._paused[job.crm].next_probe_at = now + self.pause_probe_seconds
            group = filling.get(job.crm)
            if not self._joins(job, group):
                if free <= 0:
                    self._blocked = True
                    continue
                free -= 1
                group = self._new_group(job)
                if group is not None:
                    filling[job.crm] = group
            self._start(job, group)
            started += 1
        return started

    def _running_or_busy(self, job: DeliveryJob) -> bool:
        return job.delivery_id in self._running or self._customer_busy(job)

    def _gathering(self, ready: list[DeliveryJob]) -> set[str]:
        """CRMs whose due payments wait for the CRM's running group to end.

        Its members end a few milliseconds apart, and each end would otherwise start a
        group of the one or two payments due by then: batches would shrink to nothing.
        So while a group runs, another starts only when it can be full; the rest join
        the next group, which starts once the running one is done."""
        running = {self._jobs[delivery_id].crm for delivery_id in self._groups}
        due = Counter(job.crm for job in ready if _batchable(job))
        return {crm for crm in running if due[crm] < self._group_limit(crm)}

    def _slots_used(self) -> int:
        """Running deliveries, a group counting as one."""
        singles = len(self._running) - len(self._groups)
        return singles + len({id(group) for group in self._groups.values()})

    def _group_limit(self, crm: str) -> int:
        """How many due payments of `crm` one group may take (1: no batching)."""
        forms = self._batch_forms(crm)
        return 1 if forms is None else group_size(forms, self.settings.file.crm[crm].batch_size)

    def _batch_forms(self, crm: str) -> BatchForms | None:
        adapter = self.adapters.get(crm)
        if adapter is None or crm in self._paused:  # a paused CRM's probe runs alone
            return None
        return batch_forms(adapter)

    def _joins(self, job: DeliveryJob, group: BatchGroup | None) -> bool:
        return group is not None and _batchable(job) and group.members < self._group_limit(job.crm)

    def _new_group(self, job: DeliveryJob) -> BatchGroup | None:
        """A group for this payment and the CRM's next due ones, where batching applies."""
        forms = self._batch_forms(job.crm)
        if forms is None or not _batchable(job) or self._group_limit(job.crm) <= 1:
            return None
        # One refusal memory per CRM and process (`REFUSALS_BEFORE_PER_CALL`).
        refusals = self._refusal_counts.setdefault(job.crm, {})
        return BatchGroup(self.adapters[job.crm], forms, refusals)

    def _may_run(self, crm: str, now: float) -> bool:
        if crm in self._held:
            return False
        pause = self._paused.get(crm)
        return pause is None or pause.next_probe_at <= now

    def _probing(self) -> list[DeliveryJob]:
        return [job for job in self._jobs.values() if job.crm in self._paused]

    def _customer_busy(self, job: DeliveryJob) -> bool:
        return any((job.crm, key) in self._busy_keys for key in job.customer_keys)

    def _start(self, job: DeliveryJob, group: BatchGroup | None = None) -> None:
        self._busy_keys.update((job.crm, key) for key in job.customer_keys)
        self._jobs[job.delivery_id] = job
        member = None
        if group is not None:
            self._groups[job.delivery_id] = group
            member = group.join()  # before the task runs: no batch call leaves without it
        task = asyncio.get_running_loop().create_task(self._deliver(job, member))
        self._running[job.delivery_id] = task
        task.add_done_callback(lambda _task: self._finished(job))

    def _finished(self, job: DeliveryJob) -> None:
        self._running.pop(job.delivery_id, None)
        self._groups.pop(job.delivery_id, None)
        self._jobs.pop(job.delivery_id, None)
        self._busy_keys.difference_update((job.crm, key) for key in job.customer_keys)
        signal = self._settled.get(job.event_id)
        if signal is not None:
            signal.set()
        self._wake.set()

    async def _sleep_until_due(self) -> None:
        # A finishing delivery wakes the loop, so work blocked behind a busy customer or
        # a full pool needs no polling; otherwise sleep until the next retry comes due.
        timeout = 1.0
        if not self._blocked and self._next_due is not None:
            timeout = min(max(self._next_due - self.clock(), 0.0), 1.0)
        if self._paused:
            timeout = min(timeout, self.pause_probe_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.01))

    # ---- one delivery ------------------------------------------------------------------

    async def _deliver(self, job: DeliveryJob, member: GroupMember | None = None) -> None:
        started = time.perf_counter()
        try:
            try:
                await self.store.mark_processing(job.delivery_id)
                with counting_calls() as stats, recording_calls() as calls:
                    attempt = await self._attempt(job, member)
            finally:
                if member is not None:  # its group no longer waits for it, however it ended
                    member.leave()
            await self.store.record_crm_calls(job.delivery_id, job.attempts, calls.calls)
            final = await self._record(job, attempt, stats.calls)
        except StoreUnavailable as exc:
            self._store_failed(job.delivery_id, exc)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._log_outcome(job, attempt, final, stats.calls, elapsed_ms)
        if self.on_outcome is not None:
            self.on_outcome(job.crm, attempt.outcome, elapsed_ms)

    async def _attempt(self, job: DeliveryJob, member: GroupMember | None = None) -> Attempt:
        if job.kind == CRM_EVENT_KIND:
            return await self._crm_event(job)
        adapter: CrmAdapter = member if member is not None else self.adapters[job.crm]
        try:
            if job.kind == ORDER_KIND:
                delivered = await self._order(job, adapter)
            else:
                delivered = await self._payment(job, adapter)
        except NotFound as exc:
            return NotFoundOutcome(exc.message)
        except AuthError as exc:
            return Paused(exc.message)
        except PermanentCrmError as exc:
            # Explained by config key where the request was built from config (issue 16).
            config = self.settings.file.crm[job.crm]
            return Failed(await self._refusals.explain(job.crm, adapter, config, exc.message))
        except RateLimited as exc:
            return Retry(exc.message, exc.retry_after)
        except TransientCrmError as exc:
            late = late_write_wait(self.settings.file.crm[job.crm])
            return Retry(exc.message, late if exc.maybe_applied else None)
        except StoreUnavailable:
            raise
        except ValidationError as exc:
            # Stored before intake refused such bodies (e.g. a lone surrogate): no retry
            # can deliver it, so the operator sees it failed now, not in three days.
            fields = ", ".join(d["field"] for d in validation_details(exc))
            return Failed(f"the stored body is not valid: {fields}")
        except (UnknownSource, MappingFailed, BodyError) as exc:
            # The source's section was removed, or changed so that it no longer reads
            # this stored body: no retry helps until the operator restores it.
            return Failed(f"the stored body cannot be mapped: {clip(str(exc), 300)}")
        except Exception as exc:
            log.exception("delivery %s/%s: unexpected error", job.key, job.crm)
            return Retry(f"internal error: {type(exc).__name__}: {exc}")
        resumed = self._paused.pop(job.crm, None)
        if resumed is not None:
            log.warning(
                "%s resumed: a delivery succeeded (was paused: %s)", job.crm, resumed.reason
            )
            self._alert("resumed", job.crm, f"{job.crm} resumed (was paused: {resumed.reason})")
        return delivered

    async def _payment(self, job: DeliveryJob, adapter: CrmAdapter) -> Delivered:
        if job.source:
            payment, warnings = payment_from_source(
                job.source, job.payload, job.received_at, self.settings
            )
        else:
            payment, warnings = payment_from_stored(job.payload, job.received_at, self.settings)
        journal = await self.store.journal(job.delivery_id)

        async def record(done: Journal) -> None:
            await self.store.record_steps(job.delivery_id, done)

        identity = customer_identity(payment.customer)
        known = await self.store.known_refs(job.crm, job.customer_keys)
        outcome = await deliver_payment(
            payment,
            self._context(job.crm, adapter),
            journal,
            record,
            first_attempt=job.attempts == 1 and journal.is_empty,
            known=known if known is not None and known.identity == identity else None,
        )
        result = outcome.result
        remember = KnownRefs(result.contact_id, result.deal_id, identity, job.customer_keys)
        return Delivered(result, (*warnings, *outcome.warnings), remember)

    async def _order(self, job: DeliveryJob, adapter: CrmAdapter) -> Delivered:
        config = self.settings.file.crm[job.crm]
        orders = order_adapter(adapter)
        if orders is None or not config.takes_orders:
            # Settings refuse such a section at start; a reload may have removed its stages.
            raise PermanentCrmError(job.crm, "this CRM section takes no orders (no order_stages)")
        order, warnings = order_from_stored(job.payload, self.settings)
        rules = self.settings.file.order
        ctx = OrderContext(orders, config, rules, self.settings.create_if_not_found)
        done = await deliver_order_event(self.store, job, order, ctx)
        return Delivered(done.result, (*warnings, *done.warnings), None, done.link)

    async def _crm_event(self, job: DeliveryJob) -> Attempt:
        """A CRM event to the platform (bridge.backsync.delivery). Its CRM's trouble (the
        Bitrix24 stage read) never pauses the platform's queue: it is retried."""
        target = self.callback()
        if target is None:  # turned off by a reload since this job was picked
            return Retry("back-sync is off: PLATFORM_CALLBACK_URL is not set")
        if self._platform_client is None:
            self._platform_client = httpx.AsyncClient(
                timeout=CALLBACK_TIMEOUT_SECONDS, transport=self.platform_transport
            )
        try:
            done = await deliver_crm_event(
                self.store,
                job,
                self.settings,
                self.adapters,
                target,
                self._platform_client,
                self.clock,
            )
        except PlatformRefused as exc:
            return Failed(exc.message)
        except PlatformUnavailable as exc:
            return Retry(exc.message, exc.retry_after)
        except RateLimited as exc:
            return Retry(exc.message, exc.retry_after)
        except (AuthError, TransientCrmError) as exc:
            return Retry(f"reading the deal: {exc.message}")
        except (PermanentCrmError, NotFound) as exc:
            return Failed(f"reading the deal: {exc.message}")
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.exception("delivery %s/%s: unexpected error", job.key, job.crm)
            return Retry(f"internal error: {type(exc).__name__}: {exc}")
        return Forwarded(done)

    def _context(self, crm: str, adapter: CrmAdapter) -> FlowContext:
        return FlowContext(
            adapter=adapter,
            config=self.settings.file.crm[crm],
            rules=self.settings.file.payment,
            create_if_not_found=self.settings.create_if_not_found,
            display_tz=ZoneInfo(self.settings.display_timezone),
        )

    async def _record(self, job: DeliveryJob, attempt: Attempt, calls: int) -> str:
        """Store the attempt's end; answers the outcome written (`dead` for a retry that
        ran out of schedule), which the log line and alerts name."""
        crm, delivery_id = job.crm, job.delivery_id
        match attempt:
            case Delivered(result=result, remember=remember, order_link=order_link):
                await self.store.finish_delivery(
                    delivery_id,
                    status="success",
                    contact_id=result.contact_id,
                    deal_id=result.deal_id,
                    deal_created=result.deal_created,
                    pipeline_id=result.pipeline_id,
                    crm_calls=calls,
                    remember=remember,
                    order_link=order_link,
                )
                await self.store.set_crm_state(crm, success=True)
            case Forwarded(done=done):
                await self.store.finish_delivery(
                    delivery_id,
                    status="success",
                    deal_id=done.deal_id,
                    crm_calls=calls,
                    forwarded=done.forwarded,
                )
                if done.webhook_id is not None:
                    await self.store.set_crm_state(crm, success=True)
            case Paused(error=error):
                self._pause(crm, error)
                await self.store.finish_delivery(
                    delivery_id, status="pending", error=error, crm_calls=calls, count_attempt=False
                )
                await self.store.set_crm_state(crm, paused_reason=error, error=error)
            case Retry(error=error, retry_after=retry_after):
                next_at = self._next_attempt_at(job.attempts, retry_after)
                if next_at is None:
                    self._alert("dead", crm, f"{job.kind} {job.key} in {crm} is dead: {error}")
                await self.store.finish_delivery(
                    delivery_id,
                    status="retrying" if next_at is not None else "dead",
                    error=error,
                    crm_calls=calls,
                    next_attempt_at=next_at,
                )
                await self.store.set_crm_state(crm, error=error)
                return "retry" if next_at is not None else "dead"
            case Failed(error=error):
                self._alert("failed", crm, f"{job.kind} {job.key} in {crm} failed: {error}")
                await self.store.finish_delivery(
                    delivery_id, status="failed", error=error, crm_calls=calls
                )
                await self.store.set_crm_state(crm, error=error)
            case NotFoundOutcome(error=error):
                await self.store.finish_delivery(
                    delivery_id, status="not_found", error=error, crm_calls=calls
                )
        return attempt.outcome

    # ---- database outages --------------------------------------------------------------

    def _store_failed(self, delivery_id: int | None, exc: StoreUnavailable) -> None:
        """Stop starting work until the database takes writes again (no busy loop)."""
        now = self.clock()
        if self._outage is None:
            log.error("database unavailable, deliveries wait: %s", exc)
            self._outage = _Outage(retry_at=now + 1.0)
        if delivery_id is not None:
            self._outage.interrupted.add(delivery_id)

    async def _store_recovered(self, outage: _Outage, now: float) -> bool:
        if now < outage.retry_at:
            self._next_due = outage.retry_at
            return False
        try:
            # Deliveries cut short mid-flow are `processing` in the store; their journal
            # makes running them again safe. Their CRM calls had all been answered, so
            # nothing can still land: no need to wait out a request timeout.
            await self.store.requeue(sorted(outage.interrupted))
        except StoreUnavailable:
            outage.backoff = min(outage.backoff * 2, 30.0)
            outage.retry_at = now + outage.backoff
            self._next_due = outage.retry_at
            return False
        log.warning(
            "database writable again: %d interrupted deliveries requeued", len(outage.interrupted)
        )
        self._outage = None
        return True

    def _late_write_delay(self) -> float:
        """A write abandoned mid-request may still land at the CRM within its timeout."""
        configs = self.settings.file.crm
        return max((late_write_wait(configs[name]) for name in self.adapters), default=0)

    def _next_attempt_at(self, attempts: int, retry_after: float | None = None) -> float | None:
        schedule = self.settings.retry_schedule_seconds
        if attempts > len(schedule):
            return None
        # A CRM that says when to come back (Retry-After, a spent daily budget) is believed.
        return self.clock() + max(schedule[attempts - 1], retry_after or 0.0)

    def _alert(self, kind: str, crm: str, text: str) -> None:
        if self.on_alert is not None:
            self.on_alert(kind, crm, text)

    def _pause(self, crm: str, reason: str) -> None:
        if crm not in self._paused:
            log.error("%s paused: %s", crm, reason)
            self._alert("paused", crm, f"{crm} paused: {reason}")
        self._paused[crm] = _Pause(reason, self.clock() + self.pause_probe_seconds)

    def _log_outcome(
        self, job: DeliveryJob, attempt: Attempt, final: str, calls: int, ms: float
    ) -> None:
        """`final`: what `_record` wrote (a retry out of schedule is `dead`)."""
        parts = [
            f"event={job.kind}:{job.key}",
            f"crm={job.crm}",
            f"outcome={final}",
            f"attempt={job.attempts}",
        ]
        tail = [f"calls={calls}", f"ms={ms:.0f}", f"customer={mask_keys(job.customer_keys)}"]
        match attempt:
            case Delivered(result=result, warnings=warnings):
                level = logging.INFO
                parts += [
                    f"contact={result.contact_id}",
                    f"deal={result.deal_id}",
                    f"created={'yes' if result.deal_created else 'no'}",
                    *tail,
                    *(f"warning={warning!r}" for warning in warnings),
                ]
            case Forwarded(done=done):
                level = logging.INFO
                parts += [
                    f"deal={done.deal_id}",
                    f"order={done.order_id or '-'}",
                    f"webhook_id={done.webhook_id or '-'}",
                    f"calls={calls}",
                    f"ms={ms:.0f}",
                    f"decision={done.reason!r}",
                ]
            case _:
                level = _LOG_LEVELS.get(final, logging.ERROR)
                parts += [*tail, f"error={attempt.error!r}"] if attempt.error else tail
        log.log(level, " ".join(parts))


def late_write_wait(config: CrmConfig) -> float:
    """Seconds before a write whose answer was lost is looked for in the CRM again.

    Not just the request timeout: the CRM may apply the write long after the bridge
    stopped waiting for its answer (issue 13.12 saw notes land after twice the timeout,
    and the look before that wrote them again)."""
    return max(config.late_write_seconds, config.request_timeout_seconds)


def _batchable(job: DeliveryJob) -> bool:
    """Payments batch; orders and CRM events run alone (their steps have no batch form)."""
    return job.kind not in (ORDER_KIND, CRM_EVENT_KIND)
