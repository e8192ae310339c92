"""The ASGI app: `create_app(settings)` wires store, adapters and worker in a lifespan;
the webhook routes (`bridge.webhooks`: payments, orders, other platforms' sources) are
served in front of Litestar (`BridgeApp`), the rest (health, metrics, CRM events) by it.

Every inbound request is answered with one of the codes of SPEC §2 and logged to the
`requests` table; the event itself is committed before any CRM is called.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.types import HTTPScope, Receive, Scope, Send

from bridge import webhooks
from bridge.alerts import Alerter, alert_transport
from bridge.backsync import receive as crm_events
from bridge.backsync.config import callback_target
from bridge.backsync.events import InboundRequest
from bridge.crm import build_adapters, check_order_sections
from bridge.crm.base import CrmAdapter
from bridge.crypto import TokenCipher
from bridge.errors import ConfigError, StoreUnavailable
from bridge.health_view import health_content
from bridge.logs import clip
from bridge.metrics import CONTENT_TYPE, Metrics
from bridge.reload import Loader, reload_runtime
from bridge.settings import Settings
from bridge.store import RequestRecord, Store
from bridge.store.backsync import PLATFORM
from bridge.worker import Worker

log = logging.getLogger("bridge.app")

Clock = Callable[[], float]
# Builds the CRM adapters at start (default `bridge.crm.build_adapters`); tests run the
# whole app over in-memory CRMs with it.
AdapterBuilder = Callable[[Settings, Store], Mapping[str, CrmAdapter]]


@dataclass
class Runtime:
    settings: Settings
    store: Store
    worker: Worker
    adapters: Mapping[str, CrmAdapter]
    metrics: Metrics
    clock: Clock
    hmac_secrets: tuple[str, ...]
    standard_secrets: tuple[str, ...]
    worker_task: asyncio.Task[None] | None = None
    config_loaded_at: float | None = None
    alerter: Alerter | None = None
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None
    # `serve` records what it loaded (bridge.staleness) at start and each reload.
    on_reloaded: Callable[[Store, Settings], Awaitable[None]] | None = None


def create_app(
    settings: Settings,
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    clock: Clock = time.time,
    reloader: Loader | None = None,
    on_loaded: Callable[[Store, Settings], Awaitable[None]] | None = None,
    adapters: AdapterBuilder | None = None,
) -> BridgeApp:
    """`reloader`: how SIGHUP re-reads the settings (`serve` gives it; tests need none);
    `on_loaded`: called with the settings in force, at start and after each reload."""
    app = BridgeApp(settings, transports, clock)
    app.reloader, app.on_loaded, app.adapters = reloader, on_loaded, adapters
    return app


class BridgeApp:
    """What the server runs. `/webhook/payment`, the route every webhook takes, goes
    straight to its handler; everything else, the lifespan included, to Litestar.

    Litestar's routing, exception middleware, `Request` and `Response` cost more per
    webhook than the bridge's own work on it, so the payment route does without them
    (see `bridge.asgi_io`); its answers are the same bytes Litestar's would be."""

    def __init__(
        self,
        settings: Settings,
        transports: Mapping[str, httpx.AsyncBaseTransport] | None,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._transports = transports
        self._clock = clock
        self.runtime: Runtime | None = None  # while the lifespan runs
        self.reloader: Loader | None = None
        self.on_loaded: Callable[[Store, Settings], Awaitable[None]] | None = None
        self.adapters: AdapterBuilder | None = None
        self.litestar = Litestar(
            route_handlers=[health, metrics, crm_event],
            lifespan=[self._lifespan],
            request_max_body_size=settings.max_body_bytes,
            exception_handlers={Exception: _internal_error},
            openapi_config=None,
            logging_config=None,  # `crm-bridge serve` configures logging for journald itself
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        webhook = webhooks.route_for(self.runtime, scope)
        if webhook is not None:
            await webhooks.serve(self.runtime, webhook, cast(HTTPScope, scope), receive, send)
        else:
            await self.litestar(scope, receive, send)

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        runtime = await _start(self._settings, self._transports, self._clock, self.adapters)
        runtime.transports = self._transports
        runtime.on_reloaded = self.on_loaded
        app.state.runtime = runtime
        self.runtime = runtime
        if self.on_loaded is not None:
            await self.on_loaded(runtime.store, runtime.settings)
        loop = asyncio.get_running_loop()
        if self.reloader is not None:
            reloader = self.reloader
            loop.add_signal_handler(
                signal.SIGHUP, lambda: loop.create_task(reload_runtime(runtime, reloader))
            )
        try:
            yield
        finally:
            if self.reloader is not None:
                loop.remove_signal_handler(signal.SIGHUP)
            self.runtime = None
            await _stop(runtime)


async def _start(
    settings: Settings,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None,
    clock: Clock,
    build: AdapterBuilder | None = None,
) -> Runtime:
    cipher = (
        TokenCipher([key.get_secret_value() for key in settings.bridge_secret_key])
        if settings.bridge_secret_key
        else None
    )
    store = await Store.open(settings.database_path, clock=clock, cipher=cipher)
    metrics = Metrics()
    adapters: Mapping[str, CrmAdapter]
    try:
        if build is None:
            adapters = build_adapters(
                settings, store, transports=transports, on_call=metrics.observe_call
            )
        else:
            adapters = build(settings, store)
            check_order_sections(settings, adapters)
    except ConfigError:
        await store.close()
        raise
    try:
        callback_target(settings)  # back-sync's URL and secret: refused at start if unusable
    except ConfigError:
        await store.close()
        raise
    alerter = Alerter(settings, store, clock=clock, transport=alert_transport(transports))
    worker = Worker(
        store,
        adapters,
        settings,
        clock=clock,
        pause_probe_seconds=settings.pause_probe_seconds,
        on_outcome=metrics.observe_outcome,
        on_alert=alerter.notify,
        # Tests hand the platform stand-in in under the name "platform".
        platform_transport=(transports or {}).get(PLATFORM),
    )
    runtime = Runtime(
        settings,
        store,
        worker,
        adapters,
        metrics,
        clock,
        config_loaded_at=clock(),
        alerter=alerter,
        hmac_secrets=tuple(s.get_secret_value() for s in settings.webhook_secrets),
        standard_secrets=tuple(s.get_secret_value() for s in settings.standard_webhook_secrets),
    )
    runtime.worker_task = asyncio.get_running_loop().create_task(worker.run())
    alerter.start()
    # Everything built so far lives as long as the process: keep the cyclic collector's
    # full passes (tens of ms with the whole framework on the heap) off the request path.
    gc.collect()
    gc.freeze()
    log.info(
        "bridge started: database %s, CRMs %s, wait window %ss",
        settings.database_path,
        ", ".join(adapters) or "none",
        settings.wait_seconds,
    )
    return runtime


async def _stop(runtime: Runtime) -> None:
    await runtime.worker.stop(runtime.settings.shutdown_grace_seconds)
    if runtime.worker_task is not None:
        await asyncio.gather(runtime.worker_task, return_exceptions=True)
    for adapter in runtime.adapters.values():
        await adapter.connection.aclose()
    if runtime.alerter is not None:
        await runtime.alerter.stop()
    await runtime.store.close()
    log.info("bridge stopped")


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


@post(crm_events.ROUTE + "/{name:str}", status_code=200)
async def crm_event(request: Request[Any, Any, State]) -> Response[Any]:
    """POST /webhook/crm/{name}: a CRM telling of deals moved (bridge.backsync.receive).
    Not the hot path, so Litestar serves it; stored before the 2xx, answered without
    waiting for the worker."""
    rt = _runtime(request.app.state)
    name = str(request.path_params["name"])
    body = await request.body()
    client = request.client
    remote = clip(client.host, 64) if client else ""
    inbound = InboundRequest(request.method, _public_url(request.scope), request.headers, body)
    taken = await crm_events.take(rt.store, rt.settings, name, inbound, rt.clock(), remote)
    route = f"{crm_events.ROUTE}/{clip(name, 64)}"
    rt.store.log_request(
        RequestRecord(route, remote, taken.verdict, taken.code, taken.key, taken.detail)
    )
    rt.metrics.count_request(crm_events.ROUTE, taken.code)  # one label for every section
    if taken.new:
        rt.worker.wake()
    return Response(content=taken.payload, status_code=taken.code)


def _public_url(scope: Any) -> str:
    """The URL the CRM called, as HubSpot signs it: the scheme as the server saw it (the
    server believes `X-Forwarded-Proto` from `FORWARDED_ALLOW_IPS` only, so behind the
    proxy it is the public `https`), the `Host` the proxy passes on (`proxy_set_header
    Host $host`), the path and query as sent, undecoded."""
    headers = dict(scope.get("headers") or ())
    host = headers.get(b"host", b"").decode("latin-1")
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    # Some servers' `raw_path` carries the query too (ASGI says it should not).
    raw_path = scope.get("raw_path") or scope["path"].encode()
    path = raw_path.split(b"?", 1)[0].decode("latin-1")
    query = (scope.get("query_string") or b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query}" if query else "")


@get("/webhook/health")
async def health(request: Request[Any, Any, State]) -> Response[Any]:
    rt = _runtime(request.app.state)
    now = rt.clock()
    try:
        await rt.store.check_writable()
        queue = await rt.store.queue_stats()
        states = await rt.store.crm_states()
        holds = await rt.store.holds()
        counts = await rt.store.delivery_counts()
    except StoreUnavailable as exc:
        # Health is unauthenticated: the cause (file path, OS error) goes to the journal,
        # the answer only says that the storage is down.
        log.warning("health: storage unavailable: %s", exc)
        return Response(
            content={"status": "error", "database": {"ok": False, "error": "unavailable"}},
            status_code=503,
        )
    content = health_content(
        now=now,
        queue=queue,
        states=states,
        paused=rt.worker.paused(),
        holds=holds,
        counts=counts,
        adapters=rt.adapters,
        config_loaded_at=rt.config_loaded_at,
        backsync=rt.worker.callback() is not None,
    )
    rt.metrics.queue_depth.set(queue.depth)
    rt.metrics.oldest_pending_age.set(content["oldest_pending_age_seconds"] or 0)
    return Response(content=content, status_code=200)


@get("/metrics")
async def metrics(request: Request[Any, Any, State]) -> Response[bytes]:
    rt = _runtime(request.app.state)
    try:
        queue = await rt.store.queue_stats()
        stats = await rt.store.operator_stats()
    except StoreUnavailable:
        pass  # the counters still render; the database gauges keep their last values
    else:
        rt.metrics.queue_depth.set(queue.depth)
        oldest = rt.clock() - queue.oldest_pending_at if queue.oldest_pending_at else 0
        rt.metrics.oldest_pending_age.set(oldest)
        for status, count in stats.events.items():
            rt.metrics.events.labels(status).set(count)
        for crm in stats.crms:
            for status, count in crm.deliveries.items():
                rt.metrics.deliveries_stored.labels(crm.crm, status).set(count)
    paused = {**rt.worker.paused(), **rt.worker.held()}  # the bridge's pauses and the operator's
    for name in rt.adapters:
        rt.metrics.crm_paused.labels(name).set(1 if name in paused else 0)
    return Response(content=rt.metrics.render(), media_type=CONTENT_TYPE)


def _internal_error(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    """Every error answer of the Litestar routes (404, 405, 500...), with its row in the
    request log: rejected requests are logged too (SPEC §7)."""
    path = clip(request.url.path, 200)
    if isinstance(exc, HTTPException):
        code, content = exc.status_code, {"error": exc.detail}
        detail = f"method {clip(request.method, 16)}" if code == 405 else ""
    else:
        log.exception("unhandled error on %s %s", clip(request.method, 16), path)
        code, content, detail = 500, {"error": "internal_error"}, "internal error"
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        client = request.client
        remote = clip(client.host, 64) if client else ""
        # The row only: a metrics label per path a scanner tries would grow without end.
        runtime.store.log_request(RequestRecord(path, remote, "not checked", code, None, detail))
    return Response(content=content, status_code=code)
