"""HTTP hostility against the real daemon (gunicorn + app): unknown paths and methods,
oversized requests, slow clients, and 200 concurrent scrapes while users are read.

All traffic stays on 127.0.0.1 and every loop is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from exporter import server
from tests.awsproxy import AwsProxy
from tests.daemon import Daemon, parse_samples, sample
from tests.helpers import MOTO_ACCOUNT, add_user, iam_client, reset_moto

pytestmark = pytest.mark.e2e

USERS = 40
THREADS = 4  # web.threads: small, so that starving them would show


@pytest.fixture(scope="module")
def daemon(moto_server: str) -> Iterator[tuple[Daemon, AwsProxy]]:
    reset_moto(moto_server)
    iam = iam_client(moto_server)
    for i in range(USERS):
        add_user(iam, f"user{i:03d}", ("Active",))
    proxy = AwsProxy(moto_server).start()
    d = Daemon({
        "interval_seconds": 2,
        "aws": {"endpoint_url": proxy.url, "max_attempts": 2, "read_timeout_seconds": 5},
        "collection": {"concurrency": 2},
        "web": {"threads": THREADS},
    })
    try:
        d.wait_ready()
        yield d, proxy
    finally:
        d.stop()
        proxy.stop()


def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Sends raw bytes; returns everything the server answered before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/metricsx", "/METRICS", "/%00",
                                  "/metrics/../../etc/passwd", "/" + "a" * 2000])
def test_unknown_paths_404(daemon: tuple[Daemon, AwsProxy], path: str) -> None:
    d, _ = daemon
    r = requests.get(d.url + path, timeout=10)
    assert r.status_code == 404
    assert "iam_" not in r.text


def test_query_strings_are_ignored(daemon: tuple[Daemon, AwsProxy]) -> None:
    d, _ = daemon
    r = requests.get(d.url + "/metrics?name[]=x&debug=1", timeout=10)
    assert r.status_code == 200 and "iam_user_access_keys" in r.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_other_methods_405(daemon: tuple[Daemon, AwsProxy], method: str) -> None:
    d, _ = daemon
    r = requests.request(method, d.url + "/metrics", data=b"x" * 100, timeout=10)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD"


def test_oversized_request_line_is_rejected(daemon: tuple[Daemon, AwsProxy]) -> None:
    d, _ = daemon
    answer = raw_request(d.port, b"GET /metrics?" + b"a" * 8000 + b" HTTP/1.1\r\n"
                         b"Host: x\r\n\r\n")
    assert status_of(answer) in (400, 414), answer[:200]
    assert b"iam_user_access_keys" not in answer


def test_too_many_or_too_large_headers_are_rejected(daemon: tuple[Daemon, AwsProxy]) -> None:
    d, _ = daemon
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    answer = raw_request(d.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status_of(answer) in (400, 431), answer[:200]
    big = b"X-Big: " + b"v" * 20000 + b"\r\n"
    answer = raw_request(d.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert status_of(answer) in (400, 431), answer[:200]
    huge = b"X-Big: " + b"v" * 4000 + b"\r\n"
    answer = raw_request(d.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + huge * 60 + b"\r\n")
    assert status_of(answer) in (400, 431), answer[:200]
    # Garbage that is not HTTP at all.
    assert status_of(raw_request(d.port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
                                 + b"\x00" * 64 + b"\r\n\r\n")) in (0, 400)
    assert d.get("/metrics").status_code == 200  # and the daemon is fine


def test_slow_clients_time_out_without_blocking_scrapes(
        daemon: tuple[Daemon, AwsProxy]) -> None:
    """Idle connections (more than the worker has threads) and clients that stall
    mid-request (fewer than its threads) are cut off after server.CLIENT_TIMEOUT, and
    scrapes are answered meanwhile."""
    d, _ = daemon
    idle = [socket.create_connection(("127.0.0.1", d.port), timeout=30)
            for _ in range(THREADS * 5)]
    stalled = []
    for _ in range(THREADS - 1):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never ends
        stalled.append(s)
    started = time.monotonic()
    try:
        time.sleep(0.5)
        for _ in range(10):
            t0 = time.monotonic()
            r = requests.get(d.url + "/metrics", timeout=5)
            assert r.status_code == 200
            assert time.monotonic() - t0 < 2, "a scrape waited for the slow clients"
        # The stalled clients are disconnected after the client timeout.
        for s in stalled:
            answer = b""
            try:
                while chunk := s.recv(4096):
                    answer += chunk
            except ConnectionResetError:
                pass
            assert b"200 OK" not in answer
        took = time.monotonic() - started
        assert server.CLIENT_TIMEOUT - 1 <= took < server.CLIENT_TIMEOUT + 8, took
    finally:
        for s in idle + stalled:
            s.close()
    assert d.get("/healthz").status_code == 200
    logs = d.logs()
    assert "client too slow" in logs
    assert "Traceback" not in logs


def last_success(s: dict[Any, float]) -> float:
    return sample(s, "iam_exporter_last_success_timestamp_seconds",
                  account_id=MOTO_ACCOUNT) or 0.0


def test_200_concurrent_scrapes_while_users_are_read(
        daemon: tuple[Daemon, AwsProxy]) -> None:
    d, proxy = daemon
    proxy.latency = 0.03  # a pass now takes ~1 s: scrapes overlap it
    try:
        before = last_success(d.scrape())
        barrier = threading.Barrier(200, timeout=30)

        def scrape(i: int) -> tuple[int, str]:
            barrier.wait()
            headers = {"Accept-Encoding": "gzip"} if i % 2 else {}
            r = requests.get(d.url + "/metrics", timeout=30, headers=headers)
            return r.status_code, r.text

        with ThreadPoolExecutor(200) as pool:
            results = list(pool.map(scrape, range(200)))
        assert [code for code, _ in results] == [200] * 200
        for _, text in results:
            s = parse_samples(text)
            assert sample(s, "iam_user_access_keys", account_id=MOTO_ACCOUNT,
                          user_name="user000", status="Active") == 1
            assert sample(s, "iam_account_users", account_id=MOTO_ACCOUNT) == USERS
        # Two more passes end while and after the scrapes hit.
        middle = last_success(d.wait_for(lambda s: last_success(s) > before))
        after = d.wait_for(lambda s: last_success(s) > middle)
        assert sample(after, "iam_exporter_collection_success", account_id=MOTO_ACCOUNT) == 1
    finally:
        proxy.latency = 0.0
