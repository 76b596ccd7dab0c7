"""What the fake IAM answers: the IAM and STS actions the exporter calls, per account.

- Key changes through the control plane (``change-key``), as an administrator's
  CreateAccessKey / UpdateAccessKey / DeleteAccessKey would make them, not counted as
  requests (scenario 8 sends each one's CloudTrail event to an SQS queue).
- The account of a request is read from its SigV4 ``Credential=`` (signatures are not
  checked): an access key id made by the fake's AssumeRole (``ASIAFAKE`` + account id)
  names its account; any other key is the first (default) account's.
- IAM's quota: a token bucket per account (``quota_rate`` requests/s, ``quota_burst``
  tokens). A request that finds no token is answered ``400 Throttling``, as IAM does.
  ``throttle`` (a random share, seeded) is kept for tests that want a throttle on demand.
  STS calls are neither throttled nor counted against an account.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from bench import iamactions
from bench.fakedata import KEY_ALPHABET, Dataset, Key, iso
from bench.iamactions import ApiError

IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
STS_VERSION = "2011-06-15"
ASSUMED_PREFIX = "ASIAFAKE"  # + the 12-digit account id: 20 characters, as AWS's are
SECRET = "fakeSecretAccessKeyForTheBenchmarks00000"
ROLE_ARN_RE = re.compile(r"^arn:aws[\w-]*:iam::(\d{12}):role/(?:[\w+=,.@/-]*/)?([\w+=,.@-]+)\Z")


@dataclass
class Settings:
    latency: float = 0.02  # seconds added to every request
    throttle: float = 0.0  # a random share of IAM requests answered 400 Throttling
    seed: int = 7
    quota_rate: float = 0.0  # IAM requests/s per account; 0: no quota
    quota_burst: float = 0.0  # tokens in the bucket; 0: as many as quota_rate (at least 1)


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(burst or rate, 1.0)
        self.tokens, self.stamp = self.burst, time.monotonic()

    def take(self, now: float) -> bool:
        if self.rate <= 0:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Account:
    """One account's users, indexes, quota and counts."""

    def __init__(self, data: Dataset, settings: Settings) -> None:
        self.data = data
        self.by_name = {u.name: u for u in data.users}
        self.by_key = {k.key_id: (u, k) for u in data.users for k in u.keys}
        self.report_started: float | None = None
        self.report_body: bytes | None = None
        self.bucket = TokenBucket(settings.quota_rate, settings.quota_burst)
        self.reset()

    def reset(self) -> None:
        self.requests = self.throttled = 0
        self.second, self.in_second, self.peak = 0, 0, 0

    def arrive(self, now: float) -> None:
        """Counts a request, and the most that arrived within one clock second."""
        self.requests += 1
        sec = int(now)
        if sec != self.second:
            self.second, self.in_second = sec, 0
        self.in_second += 1
        self.peak = max(self.peak, self.in_second)

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "throttled": self.throttled,
                "peak_per_second": self.peak}

    def change_key(self, user: str, action: str, key_id: str | None = None,
                   status: str | None = None) -> str:
        """A key change, as an administrator's call would make it (not counted as a
        request); the id of the key created, updated or deleted. The credential report
        stays as it was generated, as IAM's does."""
        u = self.by_name[user]
        if action == "CreateAccessKey":
            rng = random.Random(f"{self.data.account_id}/{user}/{len(self.by_key)}")
            key = Key("AKIA" + "".join(rng.choices(KEY_ALPHABET, k=16)), "Active",
                      time.time())
            u.keys.append(key)
            self.by_key[key.key_id] = (u, key)
            return key.key_id
        found = self.by_key.get(key_id or "")
        if found is None or found[0] is not u:
            raise KeyError(key_id)
        if action == "UpdateAccessKey":
            found[1].status = status or "Inactive"
        elif action == "DeleteAccessKey":
            u.keys.remove(found[1])
            del self.by_key[found[1].key_id]
        else:
            raise KeyError(action)
        return found[1].key_id


def wrap(action: str, result: str, request_id: str, ns: str = IAM_NS) -> bytes:
    return (f'<{action}Response xmlns="{ns}"><{action}Result>{result}</{action}Result>'
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            f"</{action}Response>").encode()


def error(code: str, message: str, request_id: str, ns: str = IAM_NS,
          kind: str = "Sender") -> bytes:
    return (f'<ErrorResponse xmlns="{ns}"><Error><Type>{kind}</Type><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>").encode()


def access_key_of(authorization: bytes) -> str:
    """The access key id in a SigV4 Authorization header ('' if none)."""
    at = authorization.find(b"Credential=")
    if at < 0:
        return ""
    start = at + len(b"Credential=")
    end = authorization.find(b"/", start)
    return authorization[start:end].decode("latin-1") if end > 0 else ""


class FakeIamService:
    def __init__(self, datasets: list[Dataset], settings: Settings) -> None:
        self.settings = settings
        self.accounts = {d.account_id: Account(d, settings) for d in datasets}
        self.default = self.accounts[datasets[0].account_id]
        self.rng = random.Random(settings.seed)
        self.counts: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.sessions: dict[str, tuple[str, str]] = {}  # access key → (role, session)
        self.next_id = 0

    # -- which account

    def account_of(self, access_key: str) -> Account:
        if access_key.startswith(ASSUMED_PREFIX):
            found = self.accounts.get(access_key[len(ASSUMED_PREFIX):])
            if found is not None:
                return found
        return self.default

    # -- STS

    def assume_role(self, p: dict[str, str]) -> str:
        arn, session = p.get("RoleArn", ""), p.get("RoleSessionName", "")
        m = ROLE_ARN_RE.match(arn)
        if not m or not 2 <= len(session) <= 64:
            raise ApiError(400, "ValidationError", f"Invalid RoleArn or session: {arn!r}")
        account_id, role = m.groups()
        if account_id not in self.accounts:
            raise ApiError(403, "AccessDenied", "User is not authorized to perform: "
                                                f"sts:AssumeRole on resource: {arn}")
        key = ASSUMED_PREFIX + account_id
        self.sessions[key] = (role, session)
        expires = time.time() + int(p.get("DurationSeconds") or 3600)
        token = base64.b64encode(f"fake-session:{account_id}:{session}".encode()).decode()
        return (f"<Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{SECRET}"
                f"</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>"
                f"{iso(int(expires))}</Expiration></Credentials><AssumedRoleUser><Arn>"
                f"arn:aws:sts::{account_id}:assumed-role/{escape(role)}/{escape(session)}"
                f"</Arn><AssumedRoleId>AROAFAKE{account_id}:{escape(session)}"
                "</AssumedRoleId></AssumedRoleUser><PackedPolicySize>0</PackedPolicySize>")

    def get_caller_identity(self, access_key: str) -> str:
        account_id = self.account_of(access_key).data.account_id
        role = self.sessions.get(access_key)  # only keys the fake's AssumeRole made
        if role is None:
            return (f"<UserId>AIDAFAKEBENCH00000000</UserId><Account>{account_id}"
                    f"</Account><Arn>arn:aws:iam::{account_id}:user/bench</Arn>")
        return (f"<UserId>AROAFAKE{account_id}:{escape(role[1])}</UserId>"
                f"<Account>{account_id}</Account><Arn>arn:aws:sts::{account_id}:"
                f"assumed-role/{escape(role[0])}/{escape(role[1])}</Arn>")

    def _sts(self, action: str, params: dict[str, str], access_key: str, rid: str
             ) -> tuple[int, bytes]:
        try:
            if action == "AssumeRole":
                return 200, wrap(action, self.assume_role(params), rid, STS_NS)
            if action == "GetCallerIdentity":
                return 200, wrap(action, self.get_caller_identity(access_key), rid, STS_NS)
        except ApiError as e:
            return e.status, error(e.code, e.message, rid, STS_NS)
        return 400, error("InvalidAction", f"Could not find operation {action}", rid, STS_NS)

    # -- IAM

    def _throttle(self, acct: Account, now: float) -> bool:
        if not acct.bucket.take(now):
            return True
        return bool(self.settings.throttle) and self.rng.random() < self.settings.throttle

    def _iam(self, action: str, params: dict[str, str], access_key: str, rid: str
             ) -> tuple[int, bytes]:
        acct = self.account_of(access_key)
        now = time.monotonic()
        acct.arrive(now)
        if self._throttle(acct, now):
            acct.throttled += 1
            self.throttled[action] += 1
            return 400, error("Throttling", "Rate exceeded", rid)
        handler = iamactions.HANDLERS.get(action)
        if handler is None:
            return 400, error("InvalidAction", f"Could not find operation {action}", rid)
        try:
            return 200, wrap(action, handler(acct, params), rid)
        except ApiError as e:
            return e.status, error(e.code, e.message, rid)

    def handle(self, params: dict[str, str], access_key: str = "") -> tuple[int, bytes]:
        """(status, XML) for one query-protocol request's parameters."""
        action = params.get("Action", "?")
        self.counts[action] += 1
        self.next_id += 1
        rid = f"{self.next_id:08x}-fake-4000-8000-{self.next_id:012x}"
        if params.get("Version") == STS_VERSION:
            return self._sts(action, params, access_key, rid)
        return self._iam(action, params, access_key, rid)

    # -- the control plane

    def stats(self) -> dict[str, Any]:
        iam = sum(a.requests for a in self.accounts.values())
        return {"requests": dict(self.counts), "throttled": dict(self.throttled),
                "total": sum(self.counts.values()), "iam_total": iam,
                "throttled_total": sum(self.throttled.values()),
                "accounts": {k: a.stats() for k, a in self.accounts.items()}}

    def configure(self, args: dict[str, Any]) -> None:
        s = self.settings
        if "latency_ms" in args:
            s.latency = float(args["latency_ms"]) / 1000
        if "throttle" in args:
            s.throttle = float(args["throttle"])
        if "seed" in args:
            self.rng.seed(int(args["seed"]))
        if "quota_rate" in args or "quota_burst" in args:
            s.quota_rate = float(args.get("quota_rate", s.quota_rate))
            s.quota_burst = float(args.get("quota_burst", s.quota_burst))
            for acct in self.accounts.values():
                acct.bucket = TokenBucket(s.quota_rate, s.quota_burst)

    def control(self, path: str, body: bytes) -> dict[str, Any]:
        args = json.loads(body) if body else {}
        if path == "/_fake/reset":
            self.counts.clear()
            self.throttled.clear()
            for acct in self.accounts.values():
                acct.reset()
        elif path == "/_fake/config":
            self.configure(args)
        elif path in ("/_fake/forget-report", "/_fake/generate-reports"):
            # Forget, or have a credential report ready in every account (as after the
            # exporter's previous pass: AWS keeps one for 4 hours).
            started = time.time() if path.endswith("generate-reports") else None
            for acct in self.accounts.values():
                acct.report_started, acct.report_body = started, None
        elif path == "/_fake/change-key":
            # {account, user, action, key_id, status} → {key_id}
            acct = self.accounts[args["account"]]
            return {"key_id": acct.change_key(args["user"], args["action"],
                                              args.get("key_id"), args.get("status"))}
        elif path != "/_fake/stats":
            raise KeyError(path)
        s = self.settings
        return {**self.stats(), "latency_ms": s.latency * 1000, "throttle": s.throttle,
                "quota_rate": s.quota_rate, "quota_burst": s.quota_burst,
                "users": sum(len(a.data.users) for a in self.accounts.values())}
