"""The nginx example (etc/nginx/crm-bridge.conf) in front of a real `bridge serve`.

Runs when nginx is installed (CI installs it: .ci/run) and is skipped otherwise. The file
is used as shipped, with only its ports and certificate paths replaced: TLS terminates at
nginx, webhooks get through, the request log shows the client's address and not one the
client claimed in its own X-Forwarded-For, and what the world should not see is 404/403.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ROOT, payment_payload, signed
from tests.intake_support import serving_bridge
from tests.process import BridgeProcess, free_port, wait_until

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(path)), None
)
EXAMPLE = ROOT / "etc" / "nginx" / "crm-bridge.conf"

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (CI installs it)")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _site(bridge_port: int, https_port: int, cert: Path, key: Path) -> str:
    text = EXAMPLE.read_text(encoding="utf-8")
    changes = [
        (r"listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        (r"listen \[::\]:443 ssl;\n", ""),
        (r"http://127\.0\.0\.1:8080", f"http://127.0.0.1:{bridge_port}"),
        (r"ssl_certificate /\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key /\S+;", f"ssl_certificate_key {key};"),
    ]
    for pattern, replacement in changes:
        text, count = re.subn(pattern, replacement, text)
        assert count >= 1, f"{pattern} not in {EXAMPLE}"
    return text


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BridgeProcess, str]]:
    with serving_bridge(tmp_path_factory, "proxy") as bridge:
        prefix = bridge.home / "nginx"
        prefix.mkdir()
        cert, key = _self_signed(prefix)
        https_port = free_port()
        (prefix / "site.conf").write_text(_site(bridge.port, https_port, cert, key))
        # Workers run as the user running the test (root in CI: nginx would drop to nobody,
        # who cannot read the test's private temporary directory).
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log;\nevents {{ worker_connections 64; }}\n"
            "http {\n  access_log off;\n"
            + "".join(
                f"  {kind}_temp_path {prefix}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"  include {prefix}/site.conf;\n}}\n"
        )
        assert NGINX is not None
        nginx = subprocess.Popen(  # noqa: S603 - the system's nginx on our own config
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        base = f"https://127.0.0.1:{https_port}"

        def up() -> bool:
            assert nginx.poll() is None, nginx.stderr.read() if nginx.stderr else b""
            try:
                httpx.get(base, verify=False, timeout=2)  # noqa: S501 - a test certificate
                return True
            except httpx.TransportError:
                return False

        try:
            wait_until(up, 20, "nginx")
            yield bridge, base
        finally:
            nginx.terminate()
            nginx.communicate(timeout=20)  # also closes its stderr pipe


def test_webhooks_pass_through_nginx_with_the_real_client_address(
    proxied: tuple[BridgeProcess, str],
) -> None:
    bridge, base = proxied
    body = json.dumps(payment_payload("pay_via_proxy")).encode()
    headers = {**signed(body), "X-Forwarded-For": "203.0.113.66"}  # the client's own claim
    with httpx.Client(verify=False, timeout=30) as client:  # noqa: S501 - a test certificate
        answer = client.post(f"{base}/webhook/payment", content=body, headers=headers)
    assert answer.status_code == 202
    bridge.wait_for(
        lambda: bridge.query("SELECT remote_addr FROM requests WHERE event_key = 'pay_via_proxy'"),
        what="the request-log row",
    )
    rows = bridge.query("SELECT remote_addr FROM requests WHERE event_key = 'pay_via_proxy'")
    assert rows == [("127.0.0.1",)]  # nginx's view of the client, not the claimed address


def test_the_world_sees_only_the_webhook_route_and_body_limits(
    proxied: tuple[BridgeProcess, str],
) -> None:
    _, base = proxied
    with httpx.Client(verify=False, timeout=30) as client:  # noqa: S501 - a test certificate
        assert client.get(f"{base}/metrics").status_code == 404
        assert client.get(f"{base}/").status_code == 404
        # From loopback the operator's health check gets through.
        assert client.get(f"{base}/webhook/health").status_code == 200
        too_big = client.post(f"{base}/webhook/payment", content=b"x" * 2_000_000)
    assert too_big.status_code == 413
