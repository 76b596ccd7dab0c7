"""A fast in-memory fake of AWS IAM (and sts:GetCallerIdentity) for benchmarks.

moto answers every call correctly but spends a few milliseconds of CPU on each, which on
a 2-core machine would hide the exporter's own cost. This fake answers the calls the
exporter makes from a generated (or loaded) dataset in tens of microseconds, over real
HTTP/1.1 with keep-alive, with the XML shapes AWS and moto use (botocore parses them;
tests/test_fakeiam_contract.py checks the exporter sees the same through moto and here).

- Query protocol: ``POST /`` with a form body (``Action=...``); the signature is ignored.
- Injectable per-request latency (an ``asyncio.sleep``: it holds no worker, so any number
  of concurrent requests wait in parallel, as they would for a remote endpoint).
- Throttling: a fraction of requests answered ``400 Throttling`` (seeded RNG).
- Counts requests by action (throttled ones too, separately).
- Control plane under ``/_fake/`` (JSON): ``GET stats``, ``POST reset`` (counts),
  ``POST config`` ({latency_ms, throttle, seed}), ``POST forget-report``.

Run it in its own process so that its CPU does not share a GIL with the exporter::

    python -m bench.fakeiam --users 2000 --two-key-fraction 0.1 --latency-ms 20 --port 0

It prints ``LISTENING <port>`` on stdout when ready. ``FakeIam`` does that from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

ACCOUNT_ID = "123456789012"
IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
PAGE_DEFAULT = 100  # AWS's default MaxItems
PAGE_MAX = 1000
KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
REPORT_HEADER = (
    "user,arn,user_creation_time,password_enabled,password_last_used,"
    "password_last_changed,password_next_rotation,mfa_active,access_key_1_active,"
    "access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,"
    "access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,"
    "access_key_2_last_used_date,access_key_2_last_used_region,"
    "access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,"
    "cert_2_last_rotated")
# How long AWS keeps a generated report before GenerateCredentialReport starts a new one.
REPORT_TTL = 4 * 3600
ROOT = Path(__file__).resolve().parent.parent


# -- the dataset --------------------------------------------------------------------------


@dataclass(slots=True)
class Key:
    key_id: str
    status: str  # Active | Inactive
    created: float
    last_used: float | None = None
    last_used_service: str = "N/A"
    last_used_region: str = "N/A"


@dataclass(slots=True)
class User:
    name: str
    path: str = "/"
    created: float = 1_600_000_000.0
    user_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    keys: list[Key] = field(default_factory=list)


@dataclass
class Dataset:
    users: list[User]
    account_id: str = ACCOUNT_ID
    root_keys: int = 0
    root_created: float = 1_400_000_000.0

    @classmethod
    def generate(cls, users: int, two_key_fraction: float = 0.1,
                 inactive_fraction: float = 0.5, tagged_fraction: float = 0.7,
                 used_fraction: float = 0.8, seed: int = 1) -> Dataset:
        """A deterministic estate: same arguments, same users, keys, ids and dates.

        ``two_key_fraction`` of the users hold two keys (``inactive_fraction`` of those
        have the second one inactive); the rest one.
        """
        rng = random.Random(seed)
        now = 1_760_000_000.0  # fixed "now", so every run sees the same dates
        paths = ["/", "/", "/", "/engineering/", "/ops/", "/service/ci/"]
        teams = ["payments", "platform", "data", "ops", "security"]
        out: list[User] = []
        for i in range(users):
            u = User(name=f"user-{i:06d}", path=rng.choice(paths),
                     created=now - rng.randrange(30, 2000) * 86400.0,
                     user_id="AIDA" + "".join(rng.choices(KEY_ALPHABET, k=17)))
            if rng.random() < tagged_fraction:
                u.tags["Team"] = rng.choice(teams)
                if rng.random() < 0.5:
                    u.tags["CostCenter"] = f"cc-{rng.randrange(100, 999)}"
            n = 2 if rng.random() < two_key_fraction else 1
            for k in range(n):
                created = u.created + rng.randrange(0, 20) * 86400.0 + k * 3600.0
                key = Key(key_id="AKIA" + "".join(rng.choices(KEY_ALPHABET, k=16)),
                          status="Inactive" if k == 1 and rng.random() < inactive_fraction
                          else "Active", created=created)
                if rng.random() < used_fraction:
                    key.last_used = now - rng.randrange(0, 200) * 86400.0
                    key.last_used_service = rng.choice(["s3", "sts", "ec2"])
                    key.last_used_region = "us-east-1"
                u.keys.append(key)
            out.append(u)
        return cls(out)

    def to_json(self) -> dict[str, Any]:
        return {"account_id": self.account_id, "root_keys": self.root_keys,
                "users": [{"name": u.name, "path": u.path, "created": u.created,
                           "user_id": u.user_id, "tags": u.tags,
                           "keys": [{"key_id": k.key_id, "status": k.status,
                                     "created": k.created, "last_used": k.last_used,
                                     "last_used_service": k.last_used_service,
                                     "last_used_region": k.last_used_region}
                                    for k in u.keys]} for u in self.users]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dataset:
        users = [User(name=u["name"], path=u.get("path", "/"),
                      created=u.get("created", 1_600_000_000.0),
                      user_id=u.get("user_id") or "AIDA" + f"{i:017d}",
                      tags=dict(u.get("tags", {})),
                      keys=[Key(**k) for k in u.get("keys", [])])
                 for i, u in enumerate(data["users"])]
        return cls(users, account_id=data.get("account_id", ACCOUNT_ID),
                   root_keys=data.get("root_keys", 0))

    def truth(self) -> dict[str, dict[str, int]]:
        """{user: {Active: n, Inactive: n}}: what an exact collection must find."""
        return {u.name: {s: sum(1 for k in u.keys if k.status == s)
                         for s in ("Active", "Inactive")} for u in self.users}

    def key_count(self) -> int:
        return sum(len(u.keys) for u in self.users)


# -- XML ----------------------------------------------------------------------------------


def iso(ts: float) -> str:
    """IAM's timestamp format in XML (moto adds microseconds; botocore reads both)."""
    d = datetime.fromtimestamp(ts, UTC)
    if d.microsecond:
        return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def report_time(ts: float | None) -> str:
    """The credential report's format: ISO 8601 with +00:00, whole seconds."""
    if ts is None:
        return "N/A"
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.n:08x}-fake-4000-8000-{self.n:012x}"


def _wrap(action: str, result: str, request_id: str, ns: str = IAM_NS) -> bytes:
    inner = f"<{action}Result>{result}</{action}Result>" if result is not None else ""
    return (f'<{action}Response xmlns="{ns}">{inner}<ResponseMetadata>'
            f"<RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>"
            ).encode()


def _error(code: str, message: str, request_id: str, ns: str = IAM_NS,
           kind: str = "Sender") -> bytes:
    return (f'<ErrorResponse xmlns="{ns}"><Error><Type>{kind}</Type><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>").encode()


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _tags_xml(tags: dict[str, str]) -> str:
    return "".join(f"<member><Key>{escape(k)}</Key><Value>{escape(v)}</Value></member>"
                   for k, v in tags.items())


# -- the service --------------------------------------------------------------------------


@dataclass
class Settings:
    latency: float = 0.02  # seconds added to every request
    throttle: float = 0.0  # fraction of requests answered 400 Throttling
    seed: int = 7


class FakeIamService:
    def __init__(self, data: Dataset, settings: Settings) -> None:
        self.data = data
        self.settings = settings
        self.by_name = {u.name: u for u in data.users}
        self.by_key = {k.key_id: (u, k) for u in data.users for k in u.keys}
        self.rng = random.Random(settings.seed)
        self.counts: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.report_started: float | None = None
        self.report_body: bytes | None = None
        self.next_id = _Ids()
        self.handlers = {
            "ListUsers": self.list_users,
            "ListAccessKeys": self.list_access_keys,
            "GetAccessKeyLastUsed": self.get_access_key_last_used,
            "GetAccountSummary": self.get_account_summary,
            "GenerateCredentialReport": self.generate_credential_report,
            "GetCredentialReport": self.get_credential_report,
            "GetAccountAuthorizationDetails": self.get_account_authorization_details,
            "ListUserTags": self.list_user_tags,
            "GetCallerIdentity": self.get_caller_identity,
        }

    # -- pagination helpers

    @staticmethod
    def _page(params: dict[str, str], total: int) -> tuple[int, int]:
        raw = params.get("MaxItems")
        size = PAGE_DEFAULT
        if raw is not None:
            try:
                size = int(raw)
            except ValueError:
                raise ApiError(400, "ValidationError", f"Invalid MaxItems {raw!r}") from None
            if not 1 <= size <= PAGE_MAX:
                raise ApiError(400, "ValidationError", (
                    f"1 validation error detected: Value '{size}' at 'maxItems' failed to "
                    "satisfy constraint: Member must have value less than or equal to 1000"))
        start = 0
        marker = params.get("Marker")
        if marker:
            try:
                start = int(base64.b64decode(marker).decode().rpartition(":")[2])
            except ValueError:
                raise ApiError(400, "InvalidInput", "Invalid Marker") from None
            if not 0 < start <= total:
                raise ApiError(400, "InvalidInput", "Invalid Marker")
        return start, min(start + size, total)

    @staticmethod
    def _more(action: str, end: int, total: int) -> str:
        if end >= total:
            return "<IsTruncated>false</IsTruncated>"
        marker = base64.b64encode(f"{action}:{end}".encode()).decode()
        return f"<IsTruncated>true</IsTruncated><Marker>{marker}</Marker>"

    def _user(self, params: dict[str, str]) -> User:
        name = params.get("UserName")
        if not name:
            raise ApiError(400, "ValidationError", "UserName is required")
        user = self.by_name.get(name)
        if user is None:
            raise ApiError(404, "NoSuchEntity", f"The user with name {name} cannot be found.")
        return user

    def _arn(self, u: User) -> str:
        return f"arn:aws:iam::{self.data.account_id}:user{u.path}{u.name}"

    def _user_xml(self, u: User) -> str:
        return (f"<Path>{escape(u.path)}</Path><UserName>{escape(u.name)}</UserName>"
                f"<UserId>{u.user_id}</UserId><Arn>{escape(self._arn(u))}</Arn>"
                f"<CreateDate>{iso(u.created)}</CreateDate>")

    # -- actions

    def list_users(self, p: dict[str, str]) -> str:
        users = self.data.users
        prefix = p.get("PathPrefix")
        if prefix:
            users = [u for u in users if u.path.startswith(prefix)]
        start, end = self._page(p, len(users))
        members = "".join(f"<member>{self._user_xml(u)}</member>" for u in users[start:end])
        return f"<Users>{members}</Users>{self._more('ListUsers', end, len(users))}"

    def list_access_keys(self, p: dict[str, str]) -> str:
        u = self._user(p)
        members = "".join(
            f"<member><UserName>{escape(u.name)}</UserName><AccessKeyId>{k.key_id}"
            f"</AccessKeyId><Status>{k.status}</Status><CreateDate>{iso(k.created)}"
            "</CreateDate></member>" for k in u.keys)
        return (f"<UserName>{escape(u.name)}</UserName><AccessKeyMetadata>{members}"
                "</AccessKeyMetadata><IsTruncated>false</IsTruncated>")

    def get_access_key_last_used(self, p: dict[str, str]) -> str:
        found = self.by_key.get(p.get("AccessKeyId", ""))
        if found is None:
            raise ApiError(403, "AccessDenied", "The access key does not belong to you.")
        u, k = found
        used = f"<LastUsedDate>{iso(k.last_used)}</LastUsedDate>" if k.last_used else ""
        return (f"<UserName>{escape(u.name)}</UserName><AccessKeyLastUsed>{used}"
                f"<ServiceName>{k.last_used_service}</ServiceName>"
                f"<Region>{k.last_used_region}</Region></AccessKeyLastUsed>")

    def get_account_summary(self, _: dict[str, str]) -> str:
        values = {
            "Users": len(self.data.users), "UsersQuota": 5000, "Groups": 0,
            "GroupsQuota": 300, "Roles": 0, "RolesQuota": 1000, "Policies": 0,
            "PoliciesQuota": 1500, "AccessKeysPerUserQuota": 2,
            "AccountAccessKeysPresent": 1 if self.data.root_keys else 0,
            "AccountMFAEnabled": 0, "AccountSigningCertificatesPresent": 0,
            "MFADevices": 0, "MFADevicesInUse": 0,
        }
        entries = "".join(f"<entry><key>{k}</key><value>{v}</value></entry>"
                          for k, v in values.items())
        return f"<SummaryMap>{entries}</SummaryMap>"

    def generate_credential_report(self, _: dict[str, str]) -> str:
        now = time.time()
        if self.report_started is None or now - self.report_started > REPORT_TTL:
            self.report_started, self.report_body = now, None
            return ("<State>STARTED</State><Description>No report exists. Starting a new "
                    "report generation task</Description>")
        return "<State>COMPLETE</State>"

    def _report_csv(self) -> bytes:
        lines = [REPORT_HEADER]
        d = self.data
        root_key = ("true," + report_time(d.root_created) + ",N/A,N/A,N/A"
                    if d.root_keys else "false,N/A,N/A,N/A,N/A")
        lines.append(f"<root_account>,arn:aws:iam::{d.account_id}:root,"
                     f"{report_time(d.root_created)},not_supported,N/A,not_supported,"
                     f"not_supported,true,{root_key},false,N/A,N/A,N/A,N/A,false,N/A,false,N/A")
        for u in d.users:
            slots = []
            for k in sorted(u.keys, key=lambda k: k.created)[:2]:
                slots.append(f"{'true' if k.status == 'Active' else 'false'},"
                             f"{report_time(k.created)},{report_time(k.last_used)},"
                             f"{k.last_used_region},{k.last_used_service}")
            while len(slots) < 2:
                slots.append("false,N/A,N/A,N/A,N/A")
            name = u.name if "," not in u.name else f'"{u.name}"'
            arn = self._arn(u)
            arn = arn if "," not in arn else f'"{arn}"'
            lines.append(f"{name},{arn},{report_time(u.created)},false,N/A,N/A,N/A,false,"
                         f"{slots[0]},{slots[1]},false,N/A,false,N/A")
        return ("\n".join(lines) + "\n").encode()

    def get_credential_report(self, _: dict[str, str]) -> str:
        if self.report_started is None:
            raise ApiError(410, "ReportNotPresent", "Credential report not present.")
        if self.report_body is None:
            self.report_body = base64.b64encode(self._report_csv())
        return (f"<Content>{self.report_body.decode()}</Content>"
                f"<ReportFormat>text/csv</ReportFormat>"
                f"<GeneratedTime>{iso(int(self.report_started))}</GeneratedTime>")

    def get_account_authorization_details(self, p: dict[str, str]) -> str:
        filters = {v for k, v in p.items() if k.startswith("Filter.member.")}
        users = self.data.users if not filters or "User" in filters else []
        start, end = self._page(p, len(users))
        members = "".join(
            f"<member>{self._user_xml(u)}<UserPolicyList/><GroupList/>"
            f"<AttachedManagedPolicies/>"
            + (f"<Tags>{_tags_xml(u.tags)}</Tags>" if u.tags else "") + "</member>"
            for u in users[start:end])
        return (f"<UserDetailList>{members}</UserDetailList><GroupDetailList/>"
                f"<RoleDetailList/><Policies/>"
                f"{self._more('GetAccountAuthorizationDetails', end, len(users))}")

    def list_user_tags(self, p: dict[str, str]) -> str:
        u = self._user(p)
        return f"<Tags>{_tags_xml(u.tags)}</Tags><IsTruncated>false</IsTruncated>"

    def get_caller_identity(self, _: dict[str, str]) -> str:
        return (f"<UserId>AIDAFAKEBENCH00000000</UserId><Account>{self.data.account_id}"
                f"</Account><Arn>arn:aws:iam::{self.data.account_id}:user/bench</Arn>")

    # -- one request

    def handle(self, body: bytes) -> tuple[int, bytes, bool]:
        """(status, XML, throttled?) for one query-protocol request body."""
        params = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                               keep_blank_values=True).items()}
        action = params.get("Action", "?")
        ns = STS_NS if params.get("Version") == "2011-06-15" else IAM_NS
        self.counts[action] += 1
        rid = self.next_id()
        if self.settings.throttle and self.rng.random() < self.settings.throttle:
            self.throttled[action] += 1
            return 400, _error("Throttling", "Rate exceeded", rid, ns), True
        handler = self.handlers.get(action)
        if handler is None:
            return 400, _error("InvalidAction", f"Could not find operation {action}", rid,
                               ns), False
        try:
            return 200, _wrap(action, handler(params), rid, ns), False
        except ApiError as e:
            return e.status, _error(e.code, e.message, rid, ns), False

    def stats(self) -> dict[str, Any]:
        return {"requests": dict(self.counts), "throttled": dict(self.throttled),
                "total": sum(self.counts.values()),
                "throttled_total": sum(self.throttled.values())}

    def control(self, path: str, body: bytes) -> dict[str, Any]:
        args = json.loads(body) if body else {}
        if path == "/_fake/reset":
            self.counts.clear()
            self.throttled.clear()
        elif path == "/_fake/config":
            if "latency_ms" in args:
                self.settings.latency = float(args["latency_ms"]) / 1000
            if "throttle" in args:
                self.settings.throttle = float(args["throttle"])
            if "seed" in args:
                self.rng.seed(int(args["seed"]))
        elif path == "/_fake/forget-report":
            self.report_started, self.report_body = None, None
        elif path != "/_fake/stats":
            raise KeyError(path)
        return {**self.stats(), "latency_ms": self.settings.latency * 1000,
                "throttle": self.settings.throttle, "users": len(self.data.users)}


# -- HTTP/1.1 over asyncio ----------------------------------------------------------------

_REASONS = {200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
            410: b"Gone", 500: b"Internal Server Error"}


async def _serve_connection(service: FakeIamService, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
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
            body = await reader.readexactly(length) if length else b""
            if path.startswith("/_fake/"):
                try:
                    status = 200
                    payload = json.dumps(service.control(path.partition("?")[0], body))
                    data, ctype = payload.encode(), b"application/json"
                except KeyError:
                    status, data, ctype = 404, b"{}", b"application/json"
            else:
                if method != b"POST":
                    status, data = 400, _error("InvalidAction", "POST only", "0")
                else:
                    status, data, _ = service.handle(body)
                ctype = b"text/xml"
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--two-key-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dataset", help="JSON file (Dataset.to_json) instead of generating")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--throttle", type=float, default=0.0)
    args = ap.parse_args(argv)
    if args.dataset:
        data = Dataset.from_json(json.loads(Path(args.dataset).read_text()))
    else:
        data = Dataset.generate(args.users, two_key_fraction=args.two_key_fraction,
                                seed=args.seed)
    service = FakeIamService(data, Settings(latency=args.latency_ms / 1000,
                                            throttle=args.throttle))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(service, args.host, args.port))
    return 0


# -- driving it from another process ------------------------------------------------------


class FakeIam:
    """Starts the fake in a subprocess; ``url``, ``stats()``, ``reset()``, ``configure()``."""

    def __init__(self, users: int = 1000, latency_ms: float = 20.0, throttle: float = 0.0,
                 seed: int = 1, dataset: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "bench.fakeiam", "--users", str(users),
               "--latency-ms", str(latency_ms), "--throttle", str(throttle),
               "--seed", str(seed)]
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
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=json.dumps(data or {}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            result: dict[str, Any] = json.loads(resp.read())
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
