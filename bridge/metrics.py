"""Prometheus metrics, one registry per app instance (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bridge_webhook_requests_total",
            "Inbound webhook requests by route and answered HTTP status",
            ["route", "status"],
            registry=self.registry,
        )
        self._request_counts: dict[tuple[str, int], Counter] = {}
        self.deliveries = Counter(
            "bridge_delivery_attempts_total",
            "Delivery attempts by CRM and outcome",
            ["crm", "outcome"],
            registry=self.registry,
        )
        self.crm_calls = Histogram(
            "bridge_crm_call_seconds",
            "CRM HTTP call latency by CRM and operation",
            ["crm", "operation"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "bridge_crm_rate_limited_total",
            "HTTP 429 answers received from each CRM",
            ["crm"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "bridge_queue_depth",
            "Deliveries not yet finished (pending, retrying or processing)",
            registry=self.registry,
        )
        self.oldest_pending_age = Gauge(
            "bridge_oldest_pending_age_seconds",
            "Age of the oldest unfinished event",
            registry=self.registry,
        )
        self.events = Gauge(
            "bridge_events", "Stored events by status", ["status"], registry=self.registry
        )
        self.deliveries_stored = Gauge(
            "bridge_deliveries",
            "Stored deliveries by CRM and status",
            ["crm", "status"],
            registry=self.registry,
        )
        self.crm_paused = Gauge(
            "bridge_crm_paused", "1 while a CRM is paused", ["crm"], registry=self.registry
        )

    def count_request(self, route: str, status: int) -> None:
        """One answered request; each (route, status) child is looked up once, not per
        webhook."""
        child = self._request_counts.get((route, status))
        if child is None:
            child = self._request_counts[(route, status)] = self.requests.labels(route, str(status))
        child.inc()

    def observe_call(self, crm: str, operation: str, seconds: float, status: int) -> None:
        self.crm_calls.labels(crm, operation).observe(seconds)
        if status == 429:
            self.rate_limited.labels(crm).inc()

    def observe_outcome(self, crm: str, outcome: str, _ms: float) -> None:
        self.deliveries.labels(crm, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
