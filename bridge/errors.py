"""The bridge's exception tree. Each class says what the caller should do.

    BridgeError
    ├── ConfigError              fix the configuration file or environment
    ├── StoreUnavailable         the database cannot take writes: answer 503
    └── CrmError                 something went wrong talking to one CRM
        ├── TransientCrmError    retry later (network, timeout, 5xx, 408)
        │   └── RateLimited      retry after `retry_after` seconds (429)
        ├── AuthError            token missing, expired beyond refresh, revoked: pause the CRM
        ├── PermanentCrmError    retrying will not help (4xx, unknown field id): fail now
        └── NotFound             customer unknown and creation disabled: outcome `not_found`

Only `worker.py` catches broadly, at the one per-delivery boundary that records the error.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; the message names the file and key."""


class StoreUnavailable(BridgeError):
    """The SQLite store cannot be read or written."""


class CrmError(BridgeError):
    def __init__(self, crm: str, message: str) -> None:
        super().__init__(f"{crm}: {message}")
        self.crm = crm
        self.message = message


class TransientCrmError(CrmError):
    """Worth retrying: the CRM or the network may recover.

    `maybe_applied`: a write whose answer was lost (timeout, dropped connection) may still
    land at the CRM; looking again before its timeout has passed could miss it.
    """

    def __init__(self, crm: str, message: str, *, maybe_applied: bool = False) -> None:
        super().__init__(crm, message)
        self.maybe_applied = maybe_applied


class RateLimited(TransientCrmError):
    def __init__(self, crm: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(crm, message)
        self.retry_after = retry_after


class AuthError(CrmError):
    """No usable credentials: the CRM is paused until an operator provides them."""


class PermanentCrmError(CrmError):
    """A request the CRM will never accept as sent (a 4xx, an unknown field id)."""


class NotFound(CrmError):
    """The contact or deal does not exist and creation is disabled."""
