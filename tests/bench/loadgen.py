"""Open-loop load generator, run as its own process: `python -m bench.loadgen SPEC.json`.

Request i is due at `start + i / rate` whatever happened to the requests before it
(rate 0: all at `start`, a burst). A dispatcher hands each due request to a pool of
keep-alive connections; when every connection is busy the request waits in the queue,
and its latency, measured from the time it was *due* (not sent), includes that wait —
so a stalled server shows up in the percentiles instead of silently lowering the offered
rate (no coordinated omission). The generator's own lateness is reported as `lag_ms`.

SPEC: {"url", "rate", "connections", "warmup", "bodies": FILE (one body per line),
"secret"}; the first `warmup` requests are sent but not counted. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

START_DELAY = 0.3  # seconds between opening the connections and the first due time


@dataclass
class Tally:
    warmup: int
    latencies: list[float] = field(default_factory=list)  # from due time, seconds
    service: list[float] = field(default_factory=list)  # from send time, seconds
    lags: list[float] = field(default_factory=list)  # send time - due time, seconds
    statuses: dict[int, int] = field(default_factory=dict)  # 0: no answer
    last_done: float = 0.0

    def record(self, index: int, status: int, due: float, sent: float, done: float) -> None:
        self.last_done = max(self.last_done, done)
        if index < self.warmup:
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(done - due)
        self.service.append(done - sent)
        self.lags.append(sent - due)


def encode_request(host: str, path: str, body: bytes, secret: str) -> bytes:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Signature: sha256={signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, server keeps the connection) of one HTTP/1.1 response; body discarded."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection") != "close"


async def connection_worker(
    host: str,
    port: int,
    queue: asyncio.Queue[tuple[int, float] | None],
    requests: list[bytes],
    tally: Tally,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (item := await queue.get()) is not None:
            index, due = item
            sent = time.perf_counter()
            try:
                writer.write(requests[index])
                status, keep = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status, keep = 0, False
            tally.record(index, status, due, sent, time.perf_counter())
            if not keep:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def load_requests(spec: dict[str, Any]) -> list[bytes]:
    url = urlsplit(spec["url"])
    lines = Path(spec["bodies"]).read_text(encoding="utf-8").splitlines()
    return [encode_request(url.netloc, url.path, line.encode(), spec["secret"]) for line in lines]


async def run(spec: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    rate = float(spec["rate"])
    tally = Tally(int(spec.get("warmup", 0)))
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    workers = [
        asyncio.create_task(connection_worker(host, port, queue, requests, tally))
        for _ in range(int(spec["connections"]))
    ]
    await asyncio.sleep(START_DELAY)  # connections open before the first due time
    start = time.perf_counter()
    wall_start = time.time()
    for index in range(len(requests)):
        due = start + (index / rate if rate > 0 else 0.0)
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((index, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return summary(tally, rate, len(requests), start, wall_start)


def summary(
    tally: Tally, rate: float, total: int, start: float, wall_start: float
) -> dict[str, Any]:
    measured = len(tally.latencies)
    offered_seconds = (total - 1) / rate if rate > 0 else 0.0
    return {
        "offered_rate": rate,
        "requests": total,
        "measured": measured,
        "statuses": {str(code): n for code, n in sorted(tally.statuses.items())},
        "latency_ms": percentiles(tally.latencies),
        "service_ms": percentiles(tally.service),
        "lag_ms": percentiles(tally.lags),
        "offered_seconds": round(offered_seconds, 3),
        "elapsed_seconds": round(tally.last_done - start, 3),
        "wall_start": wall_start,
        "wall_last_answer": wall_start + (tally.last_done - start),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
        return round(ordered[rank] * 1000, 3)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p99.9": at(0.999),
        "max": round(ordered[-1] * 1000, 3),
        "mean": round(sum(ordered) / len(ordered) * 1000, 3),
    }


def run_loadgen(
    url: str,
    bodies: list[str],
    workdir: Path,
    *,
    rate: float,
    connections: int,
    warmup: int = 0,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run the generator as a separate process (its own interpreter and core)."""
    from tests.bench.config import SECRET, base_env, python_command

    stamp = time.monotonic_ns()
    bodies_file = workdir / f"bodies-{stamp}.jsonl"
    bodies_file.write_text("\n".join(bodies), encoding="utf-8")
    spec_file = workdir / f"loadgen-{stamp}.json"
    spec = {
        "url": url,
        "rate": rate,
        "connections": connections,
        "warmup": warmup,
        "bodies": str(bodies_file),
        "secret": SECRET,
    }
    spec_file.write_text(json.dumps(spec))
    done = subprocess.run(  # noqa: S603 - our own command line
        python_command("tests.bench.loadgen", str(spec_file)),
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    requests = load_requests(spec)
    try:
        import uvloop  # the same event loop as the servers, when installed
    except ImportError:
        result = asyncio.run(run(spec, requests))
    else:
        result = uvloop.run(run(spec, requests))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
