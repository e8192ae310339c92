"""`crm-bridge send`: sign a body with the configured secret, post it to the running
bridge and print the answer — a first webhook without writing a signing script."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import click
import httpx

from bridge.cli._env import CliEnv
from bridge.signing import sign_headers

# Shipped inside the package so an install under /opt has them too; etc/examples links here.
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_PAYMENT = EXAMPLES / "payment.json"


def example_body() -> bytes:
    return EXAMPLE_PAYMENT.read_bytes()


def read_body(file: Path | None, example: bool) -> tuple[bytes, Path]:
    """FILE's bytes, or the shipped example's; exactly one of them must be asked for."""
    if (file is None) == (not example):
        raise click.UsageError("give either FILE or --example")
    path = EXAMPLE_PAYMENT if file is None else file
    try:
        return path.read_bytes(), path
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from exc


def with_payment_id(body: bytes, payment_id: str) -> bytes:
    """The body with `course_order.payment_id` replaced (a repeat is otherwise a 409)."""
    try:
        data = json.loads(body)
        data["course_order"]["payment_id"] = payment_id
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(
            "--payment-id/--new-id need a JSON body with course_order.payment_id"
        ) from exc
    return json.dumps(data, ensure_ascii=False, indent=2).encode()


def payment_id_of(body: bytes) -> str | None:
    try:
        value = json.loads(body)["course_order"]["payment_id"]
    except (ValueError, KeyError, TypeError):
        return None
    return None if value is None else str(value)


def order_id_of(body: bytes) -> str | None:
    """The order id of an order body (`{"event": …, "order": {"id": …}}`), else None."""
    try:
        value = json.loads(body)["order"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return None if value is None else str(value)


def local_url(host: str, port: int, route: str = "/webhook/payment") -> str:
    # A bridge listening on every address is reached on loopback from this machine.
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    if ":" in reach:
        reach = f"[{reach}]"
    return f"http://{reach}:{port}{route}"


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--example", is_flag=True, help="Send the shipped example payment instead.")
@click.option("--payment-id", default=None, help="Replace the body's payment_id with this.")
@click.option("--new-id", is_flag=True, help="Replace the body's payment_id with a fresh one.")
@click.option("--url", default=None, help="Post here (default: the configured HOST and PORT).")
@click.option("--secret", default=None, help="Sign with this HMAC secret, not WEBHOOK_SECRETS.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the answer.")
@click.option(
    "--connect-wait",
    default=10.0,
    show_default=True,
    help="Seconds to keep trying while nothing listens yet (a bridge just started).",
)
@click.pass_obj
def send(
    env: CliEnv,
    file: Path | None,
    example: bool,
    payment_id: str | None,
    new_id: bool,
    url: str | None,
    secret: str | None,
    timeout: float,
    connect_wait: float,
) -> None:
    """Sign FILE (a payment body, or an order body: to /webhook/order) and post it to the
    running bridge; print its answer."""
    settings = env.settings()
    body, _path = read_body(file, example)
    if new_id:
        payment_id = f"pay_{time.strftime('%Y%m%d%H%M%S', time.gmtime(env.clock()))}"
        payment_id += f"_{uuid.uuid4().hex[:6]}"
    if payment_id is not None:
        body = with_payment_id(body, payment_id)
    hmac_secret = secret or _first(settings.webhook_secrets)
    standard_secret = None if secret else _first(settings.standard_webhook_secrets)
    if not (hmac_secret or standard_secret):
        raise click.ClickException(
            "no webhook secret: set WEBHOOK_SECRETS in .env (see env.example) or pass --secret"
        )
    headers = sign_headers(
        body,
        hmac_secret=hmac_secret,
        standard_secret=None if hmac_secret else standard_secret,
        msg_id=f"msg_{uuid.uuid4().hex}",
        now=int(env.clock()),
    )
    headers["Content-Type"] = "application/json"
    order_id = order_id_of(body)  # an order body goes to the order route
    route = "/webhook/order" if order_id is not None else "/webhook/payment"
    target = url or local_url(settings.host, settings.port, route)
    try:
        with httpx.Client(timeout=timeout, transport=env.http_transport) as client:
            response = _post(client, target, body, headers, connect_wait)
    except httpx.ConnectError as exc:
        raise click.ClickException(
            f"cannot connect to {target}: is the bridge running (`crm-bridge serve` or"
            f" `make run`)? ({exc})"
        ) from exc
    except httpx.HTTPError as exc:
        raise click.ClickException(f"POST {target}: {type(exc).__name__}: {exc}") from exc
    click.echo(f"{response.status_code} {_summary(response)}")
    click.echo(response.text)
    key = payment_id_of(body) or order_id
    if key is not None and response.status_code < 500:
        click.echo(f"details: crm-bridge show {key}", err=True)
    if response.status_code >= 400 and response.status_code != 409:
        raise SystemExit(1)


def _post(
    client: httpx.Client, url: str, body: bytes, headers: dict[str, str], connect_wait: float
) -> httpx.Response:
    # `crm-bridge serve &` followed at once by `send` (the README's walk) finds nothing
    # listening for a second or two: a refused connection is tried again meanwhile.
    deadline = time.monotonic() + connect_wait
    while True:
        try:
            return client.post(url, content=body, headers=headers)
        except httpx.ConnectError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def _first(secrets: tuple[Any, ...]) -> str | None:
    return str(secrets[0].get_secret_value()) if secrets else None


def _summary(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(data, dict):
        return str(data.get("status") or data.get("error") or response.reason_phrase)
    return response.reason_phrase
