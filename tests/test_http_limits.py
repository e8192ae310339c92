"""What one client can hold of a running `crm-bridge serve`, over real sockets (issue 13).

Header size and count, header and body time, idle keep-alive, concurrent connections:
each is bounded by the bridge's own server (`bridge.server`), whatever sits in front, and
each limit that bites leaves a WARNING in the journal. A body over the limit is drained
(bounded) so a client that sends it whole still reads its 413.

The limits are set low here (1 s, 5 connections) so the tests are quick; the assertions
never measure time: a socket timeout of 15 s only turns "never answered" into a failure.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import payment_payload, signed
from tests.intake_support import serving_bridge
from tests.process import BridgeProcess, wait_until

NEVER = 15.0  # seconds a socket waits before the test calls it "no answer"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    with serving_bridge(
        tmp_path_factory,
        "limits",
        HEADER_TIMEOUT_SECONDS="1",
        BODY_TIMEOUT_SECONDS="1",
        KEEP_ALIVE_SECONDS="1",
        MAX_CONNECTIONS="5",
        MAX_BODY_BYTES="100000",
    ) as process:
        yield process


def connect(bridge: BridgeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", bridge.port), timeout=NEVER)


def read_answer(sock: socket.socket) -> bytes:
    """Everything until the server closes; TimeoutError if it holds on for NEVER."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def answer_to(bridge: BridgeProcess, request: bytes = b"") -> bytes:
    """What the server answers on a new connection to `request` (maybe nothing at all)."""
    with connect(bridge) as sock:
        sock.sendall(request)
        return read_answer(sock)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def request_head(body: bytes, *, length: int | None = None, extra: bytes = b"") -> bytes:
    headers = "".join(f"{name}: {value}\r\n" for name, value in signed(body).items())
    return (
        b"POST /webhook/payment HTTP/1.1\r\nHost: bridge\r\n"
        + headers.encode()
        + extra
        + b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length)
    )


def test_headers_over_16_kib_get_431_and_the_connection_is_closed(bridge: BridgeProcess) -> None:
    with connect(bridge) as sock:
        sock.sendall(b"POST /webhook/payment HTTP/1.1\r\nHost: bridge\r\nX-Pad: ")
        # Far more than the limit, never finished: uvicorn alone buffered it all (64 MiB
        # per connection in the attack) and waited for the end of the line.
        try:
            for _ in range(64):
                sock.sendall(b"a" * 16384)
            answer = read_answer(sock)
        except ConnectionError:
            # The server stopped reading and closed while bytes of ours were still
            # unread, so the kernel sent a reset (whether the 431 was read first depends
            # on timing). Either way it refused; the log line says why.
            answer = b"HTTP/1.1 431 (reset)"
    assert status_of(answer) == 431
    wait_until(lambda: "limit headers" in bridge.log_text(), 10, "a log line")


def test_more_than_100_headers_get_431(bridge: BridgeProcess) -> None:
    body = json.dumps(payment_payload("pay_many_headers")).encode()
    many = b"".join(b"X-H%d: 1\r\n" % n for n in range(150))
    answer = answer_to(bridge, request_head(body, extra=many) + body)
    assert status_of(answer) == 431
    assert bridge.query("SELECT COUNT(*) FROM events WHERE key = 'pay_many_headers'") == [(0,)]


def test_headers_dripped_slowly_are_cut_off_with_408(bridge: BridgeProcess) -> None:
    answer = answer_to(bridge, b"POST /webhook/payment HTTP/1.1\r\nHost: bridge\r\n")  # no end
    assert status_of(answer) == 408
    wait_until(lambda: "limit header_timeout" in bridge.log_text(), 10, "a log line")


def test_a_connection_that_sends_nothing_is_closed(bridge: BridgeProcess) -> None:
    answer = answer_to(bridge)
    assert answer == b"" or status_of(answer) == 408  # closed, not held


def test_a_body_dripped_slowly_gets_408_and_a_request_log_row(bridge: BridgeProcess) -> None:
    body = json.dumps(payment_payload("pay_slow_body")).encode()
    answer = answer_to(bridge, request_head(body) + body[:10])  # the rest never comes
    assert status_of(answer) == 408
    assert answer.endswith(b'{"error":"request_timeout"}')
    wait_until(
        lambda: bridge.query("SELECT COUNT(*) FROM requests WHERE http_status = 408") == [(1,)],
        10,
        "the request-log row",
    )
    assert bridge.query("SELECT COUNT(*) FROM events WHERE key = 'pay_slow_body'") == [(0,)]


def test_an_idle_keep_alive_connection_is_closed(bridge: BridgeProcess) -> None:
    body = json.dumps(payment_payload("pay_keep_alive")).encode()
    answer = answer_to(bridge, request_head(body) + body)  # then nothing: the server must close
    assert status_of(answer) == 202
    assert answer.endswith(b'{"status":"queued"}')


def test_connections_past_the_limit_get_503_and_real_webhooks_get_through_after(
    bridge: BridgeProcess,
) -> None:
    idle = [connect(bridge) for _ in range(5)]  # hold every slot, sending nothing
    try:
        wait_until(lambda: _answer_of_one_more(bridge) == 503, 10, "a 503 past the limit")
    finally:
        for sock in idle:
            sock.close()
    # The header timeout frees the slots of silent connections too; a webhook then works.
    wait_until(lambda: _webhook_status(bridge, "pay_after_flood") == 202, 10, "a 202")
    wait_until(lambda: "limit max_connections" in bridge.log_text(), 10, "a log line")


def _answer_of_one_more(bridge: BridgeProcess) -> int:
    answer = answer_to(bridge)
    return status_of(answer) if answer else 0


def _webhook_status(bridge: BridgeProcess, payment_id: str) -> int:
    try:
        return bridge.post_payment(payment_payload(payment_id)).status_code
    except Exception:
        return 0


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_sent_whole_still_reads_413(
    bridge: BridgeProcess, declared: bool
) -> None:
    body = b"x" * 1_500_000  # 15 × the limit
    request = request_head(body) + body
    if not declared:
        head = request_head(body).replace(
            b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"
        )
        chunk = b"%x\r\n" % 100_000 + body[:100_000] + b"\r\n"
        request = head + chunk * 15 + b"0\r\n\r\n"
    for _ in range(5):  # a reset came about half the time before: several tries
        answer = answer_to(bridge, request)  # a reset raises ConnectionResetError here
        assert status_of(answer) == 413
        assert answer.endswith(b'{"error":"payload_too_large"}')
