"""A stand-in for the shop's platform: receives back-sync callbacks, verifies them as the
platform must (Standard Webhooks, `bridge.signing.verify`), and records what it got.

- `POST /hooks/crm` (`PATH`): a request whose `webhook-signature` does not verify with
  `secret` within 5 minutes of the stand-in's `clock` is answered 401 and recorded in
  `refused` (with the reason); a verified one is recorded in `received` and answered 204.
- `events()`: the verified callbacks' bodies, one per `webhook-id` (first seen), in the
  order they arrived: what a platform deduplicating by `webhook-id` acts on.
  `deliveries(msg_id)`: how many times one id arrived (retries included).
- Faults come from `FakeService`: `down()`, `fail_next(status=500)`, `fail_next(kind="timeout")`,
  `latency`… so tests can hold the platform down for a day of the retry schedule.

Run it for a manual trial (prints each callback it verified):

    python -m tests.fakes.platform --port 8099 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.signing import verify
from tests.fakes.service import FakeRequest, FakeResponse, FakeService

PATH = "/hooks/crm"


@dataclass(frozen=True)
class Received:
    msg_id: str
    timestamp: str
    body: dict[str, Any]


class FakePlatform(FakeService):
    name = "fake platform"

    def __init__(
        self,
        secret: str,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[Received], None] | None = None,
    ) -> None:
        super().__init__(rate_limit=1_000_000)
        self.secret, self.clock, self.on_event = secret, clock, on_event
        self.received: list[Received] = []
        self.refused: list[str] = []
        self.routes = [("POST", re.compile(re.escape(PATH)), self._receive)]

    def events(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for item in self.received:
            seen.setdefault(item.msg_id, item.body)
        return list(seen.values())

    def deliveries(self, msg_id: str) -> int:
        return sum(1 for item in self.received if item.msg_id == msg_id)

    def _receive(self, request: FakeRequest) -> FakeResponse:
        verdict = verify(
            request.headers,
            request.body,
            hmac_secrets=[],
            standard_secrets=[self.secret],
            legacy_enabled=False,
            now=self.clock(),
        )
        if not verdict.ok or verdict.scheme != "standard":
            with self._lock:
                self.refused.append(verdict.reason)
            return FakeResponse(401, {"error": verdict.reason})
        try:
            body = json.loads(request.body)
        except ValueError:
            return FakeResponse(400, {"error": "body is not JSON"})
        item = Received(request.headers["webhook-id"], request.headers["webhook-timestamp"], body)
        with self._lock:
            self.received.append(item)
        if self.on_event is not None:
            self.on_event(item)
        return FakeResponse(204)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--secret", required=True, help="PLATFORM_CALLBACK_SECRET's value")
    options = parser.parse_args()
    platform = FakePlatform(options.secret, on_event=lambda item: print(item.msg_id, item.body))
    print(f"listening on http://{options.host}:{options.port}{PATH}")
    uvicorn.run(
        platform.asgi_app, host=options.host, port=options.port, lifespan="off", interface="asgi3"
    )


if __name__ == "__main__":
    main()
