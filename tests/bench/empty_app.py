"""The baseline: a Litestar endpoint that does no work, served the way `crm-bridge serve` is.

`POST /webhook/payment` reads the body and answers 202 `{"status": "queued"}`, the answer
the bridge gives with WAIT_SECONDS=0; uvicorn gets the same arguments as in `crm-bridge serve`
(default loop and HTTP implementation: uvloop and httptools when installed).
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from litestar import Litestar, Request, post


@post("/webhook/payment", status_code=202)
async def payment(request: Request[Any, Any, Any]) -> dict[str, str]:
    await request.body()
    return {"status": "queued"}


app = Litestar(route_handlers=[payment], openapi_config=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app, host=args.host, port=args.port, log_config=None, access_log=False, lifespan="on"
    )


if __name__ == "__main__":
    main()
