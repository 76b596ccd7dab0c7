"""A fast in-memory fake of AWS IAM (and STS AssumeRole / GetCallerIdentity) for benchmarks.

moto answers every call correctly but spends a few milliseconds of CPU on each, which on
a 2-core machine would hide the exporter's own cost. This fake answers the calls the
exporter makes from a generated (or loaded) estate in tens of microseconds, over real
HTTP/1.1 with keep-alive, with the XML shapes AWS and moto use.

- One account, or an Organization: ``--accounts N --users M`` serves N accounts of M
  users each (ids 210000000000, 210000000001, ...). AssumeRole into one of them returns
  credentials whose access key id names the account (``ASIAFAKE<account id>``); requests
  signed with them are that account's, anything else is the first account's.
- IAM's quota, as IAM enforces it: a token bucket per account (``--quota-rate`` r/s,
  ``--quota-burst`` b); a request with no token gets ``400 Throttling``. ``--throttle``
  (a random share, seeded) is only for tests that want a throttle on demand.
- Injectable per-request latency (an ``asyncio.sleep``: it holds no worker, so any number
  of concurrent requests wait in parallel, as they would for a remote endpoint).
- Counts requests by action and by account (throttled ones too, separately, and the most
  requests an account sent within one clock second).
- Control plane under ``/_fake/`` (JSON): ``GET stats``, ``POST reset`` (counts),
  ``POST config`` ({latency_ms, throttle, seed, quota_rate, quota_burst}),
  ``POST forget-report``, ``POST generate-reports`` (a report ready in every account),
  ``POST change-key`` ({account, user, action, key_id, status}: a key created, updated
  or deleted as an administrator would, not counted).

Run it in its own process so that its CPU does not share a GIL with the exporter::

    python -m bench.fakeiam --accounts 200 --users 250 --latency-ms 50 --quota-rate 20

It prints ``LISTENING <port>`` on stdout when ready. ``FakeIam`` does that from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from bench.fakedata import Dataset, load, organization
from bench.fakeservice import FakeIamService, Settings, access_key_of, error

__all__ = ["Dataset", "FakeIam", "FakeIamService", "Settings"]

ROOT = Path(__file__).resolve().parent.parent

# -- HTTP/1.1 over asyncio ----------------------------------------------------------------

_REASONS = {200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
            410: b"Gone", 500: b"Internal Server Error"}


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                        ) -> tuple[bytes, str, dict[bytes, bytes], bytes] | None:
    """(method, path, headers, body) of the next request; None when the client is gone."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head[:-4].split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    path = rest.partition(b" ")[0].decode("latin-1")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get(b"content-length", b"0") or 0)
    if headers.get(b"expect", b"").lower() == b"100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        body = await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return method, path, headers, body


def _control(service: FakeIamService, path: str, body: bytes) -> tuple[int, bytes, bytes]:
    try:
        payload = json.dumps(service.control(path.partition("?")[0], body)).encode()
        return 200, payload, b"application/json"
    except KeyError:
        return 404, b"{}", b"application/json"


def _api(service: FakeIamService, method: bytes, headers: dict[bytes, bytes],
         body: bytes) -> tuple[int, bytes, bytes]:
    if method != b"POST":
        return 400, error("InvalidAction", "POST only", "0"), b"text/xml"
    params = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                           keep_blank_values=True).items()}
    key = access_key_of(headers.get(b"authorization", b""))
    status, data = service.handle(params, key)
    return status, data, b"text/xml"


async def _serve_connection(service: FakeIamService, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while (req := await _read_request(reader, writer)) is not None:
            method, path, headers, body = req
            if path.startswith("/_fake/"):
                status, data, ctype = _control(service, path, body)
            else:
                status, data, ctype = _api(service, method, headers, body)
                if service.settings.latency > 0:
                    await asyncio.sleep(service.settings.latency)
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                         b"Date: %s\r\n\r\n" % (status, _REASONS.get(status, b"Error"), ctype,
                                                len(data), _http_date()) + data)
            try:
                await writer.drain()
            except ConnectionError:  # the client went away (a test or bench stopping)
                return
            if headers.get(b"connection", b"").lower() == b"close":
                return
    finally:
        writer.close()


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                          time.gmtime(now)).encode())
    return _date_cache[1]


async def _main(service: FakeIamService, host: str, port: int) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(service, r, w), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    async with server:
        await server.serve_forever()


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--accounts", type=int, default=1)
    ap.add_argument("--users", type=int, default=1000, help="users per account")
    ap.add_argument("--two-key-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dataset", help="JSON file (Dataset.to_json, or {accounts: [...]})")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--throttle", type=float, default=0.0, help="random share throttled")
    ap.add_argument("--quota-rate", type=float, default=0.0,
                    help="IAM requests/s per account (token bucket); 0: no quota")
    ap.add_argument("--quota-burst", type=float, default=0.0,
                    help="bucket size; 0: the rate")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.dataset:
        data = load(json.loads(Path(args.dataset).read_text()))
    else:
        data = organization(args.accounts, args.users, seed=args.seed,
                            two_key_fraction=args.two_key_fraction)
    service = FakeIamService(data, Settings(
        latency=args.latency_ms / 1000, throttle=args.throttle,
        quota_rate=args.quota_rate, quota_burst=args.quota_burst))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(service, args.host, args.port))
    return 0


# -- driving it from another process ------------------------------------------------------


class FakeIam:
    """Starts the fake in a subprocess; ``url``, ``stats()``, ``reset()``, ``configure()``."""

    def __init__(self, users: int = 1000, latency_ms: float = 20.0, throttle: float = 0.0,
                 seed: int = 1, dataset: Path | None = None, accounts: int = 1,
                 quota_rate: float = 0.0, quota_burst: float = 0.0) -> None:
        cmd = [sys.executable, "-m", "bench.fakeiam", "--users", str(users),
               "--accounts", str(accounts), "--latency-ms", str(latency_ms),
               "--throttle", str(throttle), "--seed", str(seed),
               "--quota-rate", str(quota_rate), "--quota-burst", str(quota_burst)]
        if dataset is not None:
            cmd += ["--dataset", str(dataset)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"fake IAM did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=json.dumps(data or {}),
                         headers={"Content-Type": "application/json"})
            result: dict[str, Any] = json.loads(conn.getresponse().read())
            return result
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        return self._call("/_fake/stats")

    def reset(self) -> dict[str, Any]:
        return self._call("/_fake/reset")

    def configure(self, **settings: Any) -> dict[str, Any]:
        return self._call("/_fake/config", settings)

    def forget_report(self) -> dict[str, Any]:
        return self._call("/_fake/forget-report")

    def generate_reports(self) -> dict[str, Any]:
        """A credential report ready in every account, as after an earlier pass."""
        return self._call("/_fake/generate-reports")

    def change_key(self, account: str, user: str, action: str, key_id: str | None = None,
                   status: str | None = None) -> str:
        """CreateAccessKey / UpdateAccessKey / DeleteAccessKey on a user, as an
        administrator would (not counted as a request); the key's id."""
        out = self._call("/_fake/change-key", {"account": account, "user": user,
                                               "action": action, "key_id": key_id,
                                               "status": status})
        if "key_id" not in out:
            raise KeyError(f"change-key {action} {account}/{user} {key_id}: {out}")
        return str(out["key_id"])

    def cpu_seconds(self) -> float:
        """User + system CPU the fake has used so far (from /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        # Imported here: bench.harness loads the exporter's config module, which the fake
        # server (this module run as a subprocess) has no use for.
        from bench.harness import stop_process

        stop_process(self.proc, grace=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> FakeIam:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


if __name__ == "__main__":
    raise SystemExit(main())
