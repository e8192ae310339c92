"""Serve a fake's ASGI app on a loopback port from a thread, for subprocess tests."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import uvicorn


class Servable(Protocol):
    async def asgi_app(self, scope: Any, receive: Any, send: Any) -> None: ...

    def release_hangs(self) -> None: ...


class _HideDrops(logging.Filter):
    """A fake's deliberate "drop" raises in the app; uvicorn would log it as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ConnectionAbortedError)


def serve_in_thread(fake: Servable, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Start `fake.asgi_app` with uvicorn on a free port; returns (base URL, stop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        fake.asgi_app,
        interface="asgi3",
        lifespan="off",
        loop="asyncio",
        ws="none",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    logging.getLogger("uvicorn.error").addFilter(_HideDrops())
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake's server did not start")
        time.sleep(0.01)

    def stop() -> None:
        fake.release_hangs()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://{host}:{port}", stop
