"""The data model: what the exporter serves of each account.

Everything here is immutable, so a snapshot can be handed from the poller thread to the
web threads without locks: the poller builds new objects and swaps one reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# "Active" or "Inactive"; any other status AWS reports (botocore's model lists "Expired")
# is kept as it is and counted under its own name.
KeyStatus = str
STATUSES: tuple[KeyStatus, ...] = ("Active", "Inactive")


@dataclass(frozen=True, slots=True)
class AccessKey:
    # None where the source cannot know it (the credential report has no key ids).
    key_id: str | None
    status: KeyStatus
    created: float | None  # unix seconds
    slot: int = 0  # credential-report column (1 or 2); 0 for the list strategy
    last_used: float | None = None


@dataclass(frozen=True, slots=True)
class User:
    name: str
    path: str = "/"
    keys: tuple[AccessKey, ...] = ()
    # Only the configured tags (metrics.user_tags), as (tag key, value) pairs.
    tags: tuple[tuple[str, str], ...] = ()
    # Tagged with the exemption tag: left out of the key-count alerts.
    exempt: bool = False
    # Why the keys are the last known ones: the last read failed ("AccessDenied",
    # "Throttling", ...); "" when the last read succeeded.
    stale: str = ""

    def count(self, status: KeyStatus) -> int:
        return sum(1 for k in self.keys if k.status == status)


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """What GetAccountSummary says; None where the call failed."""

    root_access_keys_present: int | None = None
    users: int | None = None


@dataclass(frozen=True, slots=True)
class Discovery:
    """How the last AWS Organizations discovery went."""

    success: bool
    accounts: int  # accounts the Organization listed, before sharding
    last_success: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A non-fatal gap: the data is served, but this part could not be read."""

    operation: str
    code: str

    def __str__(self) -> str:
        return f"{self.operation}: {self.code}"


class KeyTotals(NamedTuple):
    """An account's keys by status, and its users (not exempt) with several active keys."""

    active: int
    inactive: int
    multi_active_users: int
    # Every status (Active and Inactive always, any other AWS reports as it comes).
    by_status: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class AccountInventory:
    account_id: str
    strategy: str
    users: tuple[User, ...]
    summary: AccountSummary = field(default_factory=AccountSummary)
    report_generated: float | None = None  # credential report GeneratedTime, unix seconds
    # Non-fatal gaps (e.g. GetAccountSummary denied).
    warnings: tuple[Gap, ...] = ()
    # Whether every key's last use (or "never used") is known; None: not collected.
    last_used_complete: bool | None = None
    # Users whose keys could not be read and have no last known keys: (name, path, reason).
    unread: tuple[tuple[str, str, str], ...] = ()
    def key_totals(self) -> KeyTotals:
        by_status = dict.fromkeys(STATUSES, 0)
        multi = 0
        for user in self.users:
            for k in user.keys:
                by_status[k.status] = by_status.get(k.status, 0) + 1
            if not user.exempt and user.count("Active") > 1:
                multi += 1
        return KeyTotals(by_status["Active"], by_status["Inactive"], multi, by_status)


@dataclass(frozen=True, slots=True)
class AccountState:
    """One account's line in the snapshot: what the store holds and how the account's
    reads are going.

    ``inventory`` survives failures (the store keeps every user's last read), so alerts
    do not resolve just because AWS hiccupped.
    """

    key: str  # stable target key (role ARN or "self")
    account_id: str
    name: str
    inventory: AccountInventory | None
    success: bool
    duration: float
    last_success: float | None
    error: str | None = None  # error class of the last account-wide failure, if failing
    # The per-user series were withdrawn: no success for collection.max_stale_seconds.
    withdrawn: bool = False
    # Freshness: read time of the least recently read user, users never read, and the
    # IAM requests per second that reading every user once per interval takes.
    oldest_read: float | None = None
    never_read: int = 0
    needed_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    accounts: tuple[AccountState, ...] = ()
    # When it was taken; None until the watched accounts are known.
    completed_at: float | None = None
    # Account-wide failures so far, by (account_id, error class): a counter.
    error_counts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # How the last Organizations discovery went; None when discovery is off.
    discovery: Discovery | None = None
    shard: tuple[int, int] = (0, 1)  # (index, total)
    # Every watched account was listed and each of its users read once since start (an
    # account whose listing failed counts once it failed; a shard with no accounts is
    # ready at once).
    ready: bool = False
