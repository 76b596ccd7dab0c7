"""The estates the fake IAM serves: one account of generated (or loaded) users, or an
Organization of many such accounts. Deterministic: same arguments, same users, keys, ids
and dates, so a benchmark can compute the exact answer without asking the fake."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ACCOUNT_ID = "123456789012"
# Member accounts of a generated Organization: ORG_BASE, ORG_BASE + 1, ...
ORG_BASE = 210_000_000_000
KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
REPORT_HEADER = (
    "user,arn,user_creation_time,password_enabled,password_last_used,"
    "password_last_changed,password_next_rotation,mfa_active,access_key_1_active,"
    "access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,"
    "access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,"
    "access_key_2_last_used_date,access_key_2_last_used_region,"
    "access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,"
    "cert_2_last_rotated")
NOW = 1_760_000_000.0  # a fixed "now", so every run sees the same dates
PATHS = ["/", "/", "/", "/engineering/", "/ops/", "/service/ci/"]
TEAMS = ["payments", "platform", "data", "ops", "security"]

Truth = dict[str, dict[str, int]]  # {user: {Active: n, Inactive: n}}


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


def _rand_id(rng: random.Random, prefix: str, n: int) -> str:
    return prefix + "".join(rng.choices(KEY_ALPHABET, k=n))


def _user(rng: random.Random, i: int, two_key_fraction: float, inactive_fraction: float,
          tagged_fraction: float, used_fraction: float) -> User:
    u = User(name=f"user-{i:06d}", path=rng.choice(PATHS),
             created=NOW - rng.randrange(30, 2000) * 86400.0,
             user_id=_rand_id(rng, "AIDA", 17))
    if rng.random() < tagged_fraction:
        u.tags["Team"] = rng.choice(TEAMS)
        if rng.random() < 0.5:
            u.tags["CostCenter"] = f"cc-{rng.randrange(100, 999)}"
    for k in range(2 if rng.random() < two_key_fraction else 1):
        created = u.created + rng.randrange(0, 20) * 86400.0 + k * 3600.0
        key_id = _rand_id(rng, "AKIA", 16)
        inactive = k == 1 and rng.random() < inactive_fraction
        key = Key(key_id=key_id, status="Inactive" if inactive else "Active", created=created)
        if rng.random() < used_fraction:
            key.last_used = NOW - rng.randrange(0, 200) * 86400.0
            key.last_used_service = rng.choice(["s3", "sts", "ec2"])
            key.last_used_region = "us-east-1"
        u.keys.append(key)
    return u


@dataclass
class Dataset:
    users: list[User]
    account_id: str = ACCOUNT_ID
    root_keys: int = 0
    root_created: float = 1_400_000_000.0

    @classmethod
    def generate(cls, users: int, two_key_fraction: float = 0.1,
                 inactive_fraction: float = 0.5, tagged_fraction: float = 0.7,
                 used_fraction: float = 0.8, seed: int = 1,
                 account_id: str = ACCOUNT_ID) -> Dataset:
        """``two_key_fraction`` of the users hold two keys (``inactive_fraction`` of those
        have the second one inactive); the rest one."""
        rng = random.Random(seed)
        return cls([_user(rng, i, two_key_fraction, inactive_fraction, tagged_fraction,
                          used_fraction) for i in range(users)], account_id=account_id)

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

    def truth(self) -> Truth:
        """What an exact collection of this account must find."""
        return {u.name: {s: sum(1 for k in u.keys if k.status == s)
                         for s in ("Active", "Inactive")} for u in self.users}

    def key_count(self) -> int:
        return sum(len(u.keys) for u in self.users)

    def arn(self, u: User) -> str:
        return f"arn:aws:iam::{self.account_id}:user{u.path}{u.name}"

    def report_csv(self) -> bytes:
        """The credential report, as AWS writes it (a <root_account> row first)."""
        lines = [REPORT_HEADER]
        root_key = ("true," + report_time(self.root_created) + ",N/A,N/A,N/A"
                    if self.root_keys else "false,N/A,N/A,N/A,N/A")
        lines.append(f"<root_account>,arn:aws:iam::{self.account_id}:root,"
                     f"{report_time(self.root_created)},not_supported,N/A,not_supported,"
                     f"not_supported,true,{root_key},false,N/A,N/A,N/A,N/A,false,N/A,false,N/A")
        lines += [self._report_row(u) for u in self.users]
        return ("\n".join(lines) + "\n").encode()

    def _report_row(self, u: User) -> str:
        slots = [f"{'true' if k.status == 'Active' else 'false'},{report_time(k.created)},"
                 f"{report_time(k.last_used)},{k.last_used_region},{k.last_used_service}"
                 for k in sorted(u.keys, key=lambda k: k.created)[:2]]
        slots += ["false,N/A,N/A,N/A,N/A"] * (2 - len(slots))
        name = u.name if "," not in u.name else f'"{u.name}"'
        arn = self.arn(u)
        arn = arn if "," not in arn else f'"{arn}"'
        return (f"{name},{arn},{report_time(u.created)},false,N/A,N/A,N/A,false,"
                f"{slots[0]},{slots[1]},false,N/A,false,N/A")


def org_account_id(index: int) -> str:
    return f"{ORG_BASE + index:012d}"


def organization(accounts: int, users: int, seed: int = 1, **kw: Any) -> list[Dataset]:
    """``accounts`` accounts of ``users`` users each; one account is the single-account
    estate (same seed, the default account id)."""
    if accounts == 1:
        return [Dataset.generate(users, seed=seed, **kw)]
    return [Dataset.generate(users, seed=seed + i, account_id=org_account_id(i), **kw)
            for i in range(accounts)]


def load(data: dict[str, Any]) -> list[Dataset]:
    """A dataset file: one account (Dataset.to_json) or {"accounts": [...]}."""
    if "accounts" in data:
        return [Dataset.from_json(a) for a in data["accounts"]]
    return [Dataset.from_json(data)]


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
