"""The data model: what one collection cycle learned about one account.

Everything here is immutable, so a snapshot can be handed from the poller thread to the
web threads without locks: the poller builds new objects and swaps one reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    # Why the keys are the last known ones rather than read in this cycle ("AccessDenied",
    # "Throttling", "DeadlineExceeded", ...); "" when read fresh.
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
    """A non-fatal gap of a cycle: the data is served, but this part is missing."""

    operation: str
    code: str

    def __str__(self) -> str:
        return f"{self.operation}: {self.code}"


class KeyTotals(NamedTuple):
    """An account's keys by status, and its users (not exempt) with several active keys."""

    active: int
    inactive: int
    multi_active_users: int


@dataclass(frozen=True, slots=True)
class AccountInventory:
    account_id: str
    strategy: str
    users: tuple[User, ...]
    summary: AccountSummary = field(default_factory=AccountSummary)
    report_generated: float | None = None  # credential report GeneratedTime, unix seconds
    # Non-fatal gaps of the cycle (e.g. GetAccountSummary denied).
    warnings: tuple[Gap, ...] = ()
    # Whether every key's last use (or "never used") is known; None: not collected.
    last_used_complete: bool | None = None
    # Users whose keys could not be read and have no last known keys: (name, path, reason).
    unread: tuple[tuple[str, str, str], ...] = ()
    # Unix time the data is as of: the cycle's start (list), the report's generation
    # (credential-report). An event read after it is newer and survives this data.
    data_time: float = 0.0

    def with_user(self, name: str, user: User | None) -> AccountInventory:
        """This inventory with one user replaced, added, or (None) removed."""
        users = [u for u in self.users if u.name != name]
        if user is not None:
            users.append(user)
            users.sort(key=lambda u: u.name)
        unread = tuple(x for x in self.unread if x[0] != name)
        return replace(self, users=tuple(users), unread=unread)

    def key_totals(self) -> KeyTotals:
        active = inactive = multi = 0
        for user in self.users:
            n = user.count("Active")
            active += n
            inactive += user.count("Inactive")
            if n > 1 and not user.exempt:
                multi += 1
        return KeyTotals(active, inactive, multi)


@dataclass(frozen=True, slots=True)
class AccountState:
    """One account's line in the snapshot: its freshest good data and how the last cycle went.

    ``inventory`` is the last *good* inventory; it survives failed cycles so alerts do not
    resolve just because AWS hiccupped.
    """

    key: str  # stable target key (role ARN or "self")
    account_id: str
    name: str
    inventory: AccountInventory | None
    success: bool
    duration: float
    last_success: float | None
    error: str | None = None  # error class of the last cycle, if it failed
    # The per-user series were withdrawn: no success for collection.max_stale_seconds.
    withdrawn: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    accounts: tuple[AccountState, ...] = ()
    cycles: int = 0
    completed_at: float | None = None
    # Failed cycles so far, by (account_id, error class): a counter carried across cycles.
    error_counts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # How the last Organizations discovery went; None when discovery is off.
    discovery: Discovery | None = None
    shard: tuple[int, int] = (0, 1)  # (index, total)
    # The last cycle took longer than the interval.
    overrun: bool = False

    @property
    def ready(self) -> bool:
        """A cycle has finished and there is data to serve (some account succeeded once),
        or this replica has no account to watch (a shard left empty must not stall a
        rollout)."""
        return self.completed_at is not None and (
            not self.accounts or any(a.inventory is not None for a in self.accounts))
