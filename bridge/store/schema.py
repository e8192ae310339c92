"""The schema: ordered migrations (`PRAGMA user_version`) and shared SQL fragments."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable

from bridge.store.backsync import MIGRATION_9

_EVENT_STATUS_CASE = """
CASE
  WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
               AND d.status IN ('failed', 'dead')) THEN 'failed'
  WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
               AND d.status = 'processing') THEN 'processing'
  WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
               AND d.status IN ('pending', 'retrying')) THEN 'pending'
  WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
               AND d.status = 'not_found') THEN 'not_found'
  ELSE 'success'
END"""

REFRESH_EVENT_SQL = f"""
UPDATE events SET
  status = {_EVENT_STATUS_CASE},
  processed_at = CASE WHEN ({_EVENT_STATUS_CASE}) IN ('success', 'failed', 'not_found') THEN ?
                 ELSE NULL END,
  error_message = (SELECT group_concat(d.crm || ': ' || d.last_error, '; ') FROM deliveries d
                   WHERE d.event_id = events.id AND d.last_error IS NOT NULL
                   AND d.status != 'success')
WHERE id = ? AND status != 'skipped'
"""

REFRESH_EVENT_SQL_BY_DELIVERY = REFRESH_EVENT_SQL.replace(
    "WHERE id = ? AND", "WHERE id = (SELECT event_id FROM deliveries WHERE id = ?) AND"
)


# Finished, older than the cutoff (received and processed), and nothing left to run.


def migrate(db: sqlite3.Connection, upto: int | None = None) -> None:
    """Apply the migrations the database has not seen (up to version `upto`, all by
    default), each in its own transaction."""
    row = db.execute("PRAGMA user_version").fetchone()
    version = int(row[0]) if row else 0
    for number, script in enumerate(MIGRATIONS[version:upto], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            if callable(script):
                script(db)
            for statement in _statements(script) if isinstance(script, str) else ():
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";\n") if part.strip()]


def _repair_payloads(db: sqlite3.Connection) -> None:
    """Stored bodies that are not JSON to SQLite (intake took `NaN` and `Infinity` until
    it refused them) get those numbers as null, so `json_extract` over
    `payment_events` works again. Once, as a migration: it reads every invalid row."""
    rows = db.execute("SELECT id, payload FROM events WHERE NOT json_valid(payload)").fetchall()
    for event_id, payload in rows:
        try:
            value = json.loads(payload)
        except (ValueError, RecursionError):
            continue  # not JSON even to Python: left for the operator, as it came
        repaired = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False)
        if not repaired.isascii():
            try:
                repaired.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate too: escaped, as it came
                repaired = json.dumps(_finite(value), allow_nan=False)
        db.execute("UPDATE events SET payload = ? WHERE id = ?", (repaired, event_id))


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


Migration = str | Callable[[sqlite3.Connection], None]

MIGRATIONS: tuple[Migration, ...] = (
    # 1: the event log, deliveries, step journal, tokens and the audit view of SPEC §7.
    """
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    route TEXT NOT NULL,
    remote_addr TEXT NOT NULL,
    verdict TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    event_key TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX requests_received ON requests (received_at);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    amount NUMERIC,
    customer_keys TEXT NOT NULL DEFAULT '[]',
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    processed_at TEXT,
    error_message TEXT,
    UNIQUE (kind, key)
);
CREATE INDEX events_status ON events (status);
CREATE INDEX events_received ON events (received_at);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    crm TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    contact_id TEXT,
    deal_id TEXT,
    deal_created INTEGER,
    pipeline_id TEXT,
    last_error TEXT,
    crm_calls INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    UNIQUE (event_id, crm)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE TABLE journal (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    value TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (delivery_id, step)
);
CREATE TABLE crm_tokens (
    crm TEXT PRIMARY KEY,
    ciphertext TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE crm_state (
    crm TEXT PRIMARY KEY,
    paused_reason TEXT,
    last_success_at TEXT,
    last_error TEXT,
    last_error_at TEXT
);
CREATE VIEW payment_events AS
SELECT
    e.id AS id,
    e.key AS payment_id,
    e.received_at AS created_at,
    e.processed_at AS processed_at,
    e.status AS status,
    e.amount AS amount,
    d.contact_id AS contact_id,
    d.deal_id AS lead_id,
    d.pipeline_id AS pipeline_id,
    d.deal_created AS lead_created,
    e.payload AS payload,
    e.error_message AS error_message,
    MAX(COALESCE((SELECT MAX(x.attempts) FROM deliveries x WHERE x.event_id = e.id), 0) - 1, 0)
        AS retry_count
FROM events e
LEFT JOIN deliveries d ON d.id = (SELECT MIN(y.id) FROM deliveries y WHERE y.event_id = e.id)
WHERE e.kind = 'payment'
""",
    # 2: live webhooks before imported backlog; the request log searchable by payment.
    """
ALTER TABLE events ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX requests_event_key ON requests (event_key);
CREATE INDEX deliveries_event ON deliveries (event_id)
""",
    # 3: the contact and deal each customer's last payment went to, per CRM.
    """
CREATE TABLE customer_refs (
    crm TEXT NOT NULL,
    customer_key TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    deal_id TEXT NOT NULL,
    identity TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (crm, customer_key)
)
""",
    # 4: deliveries_event repeated the UNIQUE (event_id, crm) index's leading column, and
    # every delivery written paid for it.
    """
DROP INDEX deliveries_event
""",
    # 5: duplicate protection outlives `crm-bridge prune` (the keys of succeeded events it
    # deleted), and the row `check_writable` rewrites to probe what intake needs.
    """
CREATE TABLE succeeded_keys (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at TEXT NOT NULL
)
""",
    # 6: bodies stored with NaN/Infinity before intake refused them, made JSON again.
    _repair_payloads,
    # 7: the operator's day — every CRM call of a delivery (pruned with it), a CRM held
    # by the operator (durable), alerts sent, and what the running bridge loaded.
    """
CREATE TABLE crm_calls (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    at TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    ms REAL NOT NULL,
    error TEXT
);
CREATE INDEX crm_calls_delivery ON crm_calls (delivery_id);
ALTER TABLE crm_state ADD COLUMN held_reason TEXT;
ALTER TABLE crm_state ADD COLUMN held_by TEXT;
ALTER TABLE crm_state ADD COLUMN held_at TEXT;
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    text TEXT NOT NULL,
    channel TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX alerts_at ON alerts (at);
CREATE TABLE runtime (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
""",
    # 8: the `[source.NAME]` an event's body came from (NULL: the payment route), so the
    # worker maps the stored body with that source's mapping (bridge.sources).
    """
ALTER TABLE events ADD COLUMN source TEXT
""",
    # 9: orders (SPEC §8) — in the same event log (kind 'order'); the newest `updated_at`
    # received per order (intake's stale check), the order → deal link per CRM with what
    # was last applied there, and the audit view beside `payment_events`.
    """
CREATE TABLE order_heads (
    order_id TEXT PRIMARY KEY,
    updated_at TEXT NOT NULL,
    event_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE order_links (
    crm TEXT NOT NULL,
    order_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    company_id TEXT,
    deal_id TEXT NOT NULL,
    pipeline_id TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    total TEXT NOT NULL,
    items TEXT NOT NULL DEFAULT '[]',
    applied TEXT NOT NULL,
    event_key TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (crm, order_id)
);
CREATE VIEW order_events AS
SELECT
    e.id AS id,
    json_extract(e.payload, '$.order.id') AS order_id,
    json_extract(e.payload, '$.event') AS event,
    json_extract(e.payload, '$.order.status') AS order_status,
    json_extract(e.payload, '$.order.updated_at') AS updated_at,
    e.key AS event_key,
    e.received_at AS created_at,
    e.processed_at AS processed_at,
    e.status AS status,
    e.amount AS amount,
    d.crm AS crm,
    d.status AS delivery_status,
    d.contact_id AS contact_id,
    d.deal_id AS deal_id,
    d.pipeline_id AS pipeline_id,
    d.deal_created AS deal_created,
    MAX(COALESCE(d.attempts, 0) - 1, 0) AS retry_count,
    COALESCE(d.last_error, e.error_message) AS error_message,
    e.payload AS payload
FROM events e
LEFT JOIN deliveries d ON d.event_id = e.id
WHERE e.kind = 'order'
""",
    # 10: back-sync (issue 19) — CRM events live in the event log (kind 'crm_event', one
    # delivery to 'platform'); the bridge's own stage moves, deal → order, the audit view.
    MIGRATION_9,
    # 11: batched drain (issue 20) — how many deliveries a CRM call served (1: its own).
    "ALTER TABLE crm_calls ADD COLUMN batch INTEGER NOT NULL DEFAULT 1",
)
