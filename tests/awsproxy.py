"""A small HTTP proxy in front of the moto server: counts AWS actions and injects faults.

moto answers every request correctly and at once; this proxy lets tests see how many
calls the exporter made (by action, and by the service each request is signed for) and
make AWS fail on demand. It speaks plain HTTP on 127.0.0.1 and forwards to one upstream.

Query-protocol requests (IAM, STS) are named by their Action. JSON-protocol ones (SQS,
Organizations) are counted as "?"; their operation (from X-Amz-Target) is the "Action"
form parameter a rule sees, as for the query protocol.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/]+/[^/]+/([^/]+)/")

# fault → (HTTP status, AWS error code) of the error document it answers with
ERRORS = {
    "deny": (403, "AccessDenied"),
    "throttle": (400, "Throttling"),
    "http500": (500, "InternalFailure"),
    "http503": (503, "ServiceUnavailable"),
    "expired": (403, "ExpiredToken"),
    "invalid_token": (403, "InvalidClientTokenId"),
    "no_such_entity": (404, "NoSuchEntity"),
    "limit": (409, "LimitExceeded"),
}
# Faults answered from moto's real answer: "truncate" sends half of it under the full
# Content-Length, then closes; "cut" sends half of it under a Content-Length that matches
# (well framed, not well formed); "empty" sends a 200 with no body.
FORWARDED = frozenset({"truncate", "cut", "empty"})
ERROR_XML = (
    '<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error>'
    "<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
    "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
)


class _Handler(BaseHTTPRequestHandler):
    server: AwsProxy  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:  # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle and delayed
        # ACKs add ~40 ms to every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _params(self, body: bytes) -> dict[str, list[str]]:
        target = self.headers.get("X-Amz-Target")
        if target is None:
            return parse_qs(body.decode("utf-8", "replace"))
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = {}
        fields = doc.items() if isinstance(doc, dict) else ()
        return {**{k: [v] for k, v in fields if isinstance(v, str)},
                "Action": [target.rsplit(".", 1)[-1]]}

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        params = self._params(body)
        action = "?" if "X-Amz-Target" in self.headers else params.get("Action", ["?"])[0]
        proxy = self.server
        fault = proxy.fault_for(action, params)
        authorization = self.headers.get("Authorization") or ""
        if fault is None and proxy.bucket is not None:
            fault = proxy.bucket.take(authorization)
        signed = CREDENTIAL_RE.search(authorization)
        proxy.record(action, fault, signed.group(2) if signed else "?")
        delay = proxy.latencies.get(action, proxy.latency)
        if delay:
            time.sleep(delay)
        if fault == "reset":
            self.close_connection = True
            self.connection.close()
            return
        if fault == "hang":
            time.sleep(proxy.hang_seconds)
            self.close_connection = True
            return
        if fault == "garbage":  # a 200 that is not the XML AWS sends
            self._reply(200, b"<html>\x00\xff not xml", "text/xml")
            return
        if fault is not None and fault not in FORWARDED:
            status, code = ERRORS[fault]
            self._reply(status, ERROR_XML.format(code=code, message=f"injected {fault}")
                        .encode(), "text/xml")
            return
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request("POST", self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if proxy.rewrite is not None:
                data = proxy.rewrite(action, data)
            if fault in ("cut", "empty"):  # well framed, but half the answer, or none
                self._reply(resp.status if fault == "cut" else 200,
                            data[:len(data) // 2] if fault == "cut" else b"",
                            resp.getheader("Content-Type") or "text/xml")
                return
            if fault == "truncate":  # the full Content-Length, half the body, then close
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type") or "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._reply(resp.status, data, resp.getheader("Content-Type") or "text/xml")
        finally:
            conn.close()

    def _reply(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class TokenBucket:
    """IAM's throttling as IAM does it: a token bucket per account (``rate`` tokens a
    second, at most ``burst`` held); a request finding no token is answered 400
    Throttling. Only requests signed for ``service`` are limited; every one of them is
    recorded in ``stamps`` as (monotonic time, account key, throttled).

    The account is told by the access key id in the request's signature (``account_of``
    maps it to an account; by default each access key id is its own account).
    """

    def __init__(self, rate: float, burst: float, service: str = "iam",
                 account_of: Callable[[str], str] | None = None) -> None:
        self.rate, self.burst, self.service = rate, burst, service
        self.account_of = account_of or (lambda key_id: key_id)
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, float]] = {}  # account → (tokens, at)
        self.stamps: list[tuple[float, str, bool]] = []

    def take(self, authorization: str) -> str | None:
        m = CREDENTIAL_RE.search(authorization)
        if m is None or m.group(2) != self.service:
            return None
        account = self.account_of(m.group(1))
        with self._lock:
            now = time.monotonic()
            tokens, at = self._tokens.get(account, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            throttled = tokens < 1.0
            if not throttled:
                tokens -= 1.0
            self._tokens[account] = (tokens, now)
            self.stamps.append((now, account, throttled))
        return "throttle" if throttled else None

    def requests(self) -> list[tuple[float, str, bool]]:
        with self._lock:
            return list(self.stamps)


class AwsProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname or "127.0.0.1", u.port or 80
        self.lock = threading.Lock()
        self.actions: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        # Requests by the service their signature names (iam, sts, sqs, organizations).
        self.services: Counter[str] = Counter()
        # fault mode for every action, or per action; None = pass through
        self.mode: str | None = None
        self.modes: dict[str, str] = {}
        self.fault_budget: int | None = None  # how many more faults to inject; None: no limit
        self.hang_seconds = 5.0
        self.latency = 0.0  # added to every request, like the distance to a real region
        self.latencies: dict[str, float] = {}  # by action, instead of latency
        # Share of requests that get the fault of mode/modes (seeded: runs are repeatable).
        self.rate = 1.0
        self.rng = random.Random(7)
        # Per-request decision by action and form parameters, before mode/modes; a fault
        # name or None (then mode/modes apply).
        self.rule: Callable[[str, dict[str, list[str]]], str | None] | None = None
        # Rewrites the body of upstream (moto) answers, by action.
        self.rewrite: Callable[[str, bytes], bytes] | None = None
        # IAM's rate limit (a token bucket per account), applied after mode/modes/rule;
        # None: no limit. Its throttles are recorded in faults like any other.
        self.bucket: TokenBucket | None = None
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fault_for(self, action: str, params: dict[str, list[str]] | None = None
                  ) -> str | None:
        with self.lock:
            fault = self.rule(action, params or {}) if self.rule is not None else None
            if fault is None:
                fault = self.modes.get(action, self.mode)
                if fault is not None and self.rate < 1.0 and self.rng.random() >= self.rate:
                    fault = None
            if fault is not None and self.fault_budget is not None:
                if self.fault_budget <= 0:
                    return None
                self.fault_budget -= 1
            return fault

    def record(self, action: str, fault: str | None, service: str = "?") -> None:
        with self.lock:
            self.actions[action] += 1
            self.services[service] += 1
            if fault:
                self.faults[action] += 1

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.actions)

    def service_counts(self) -> Counter[str]:
        """Requests so far by the service they were signed for."""
        with self.lock:
            return Counter(self.services)

    def start(self) -> AwsProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
