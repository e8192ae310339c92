"""Closed-loop load with wrk: N connections, each sends its next request when the answer
to the last one arrives. Every request is a new payment, signed per request by
`signed_post.lua`. wrk's latencies are reported but are closed-loop figures (a slow answer
delays the requests behind it); `loadgen` measures latency properly."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.bodies import wrk_template
from tests.bench.config import SECRET

SCRIPT = Path(__file__).resolve().parent / "signed_post.lua"


@dataclass(frozen=True)
class WrkResult:
    run_id: str  # payment ids of this run start with "w<run_id>-"
    connections: int
    seconds: float
    requests: int
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def accepted(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    def as_json(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "per_second": round(self.per_second, 1),
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "closed_loop_latency_ms": self.latency_ms,
        }


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    return path


def run_wrk(url: str, connections: int, seconds: float, workdir: Path) -> WrkResult:
    run_id = secrets.token_hex(4)
    template = workdir / f"wrk-{run_id}.txt"
    template.write_text("\n".join(wrk_template(run_id)), encoding="utf-8")
    command = [
        require_wrk(),
        "--threads", "1",  # one core is plenty for wrk; the other is the server's
        "--connections", str(connections),
        "--duration", f"{max(1, round(seconds))}s",
        "--timeout", "10s",
        "--script", str(SCRIPT),
        f"{url}/webhook/payment",
        "--", str(template), SECRET,
    ]  # fmt: skip
    done = subprocess.run(  # noqa: S603 - our own command line
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    raw = json.loads(line.removeprefix("BENCH "))
    statuses: dict[int, int] = {}
    for code, count in raw["statuses"]:
        statuses[int(code)] = statuses.get(int(code), 0) + int(count)
    latency = {key: round(value / 1000, 3) for key, value in raw["latency_us"].items()}
    return WrkResult(
        run_id=run_id,
        connections=connections,
        seconds=raw["duration_us"] / 1e6,
        requests=int(raw["requests"]),
        statuses=statuses,
        socket_errors={k: int(v) for k, v in raw["errors"].items() if k != "status"},
        latency_ms=latency,
    )
