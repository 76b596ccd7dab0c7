"""The store: per account, what IAM showed of each user and when it was read.

Polls (the resync), listings and event re-reads all write here, from many threads, in
any order; a write never replaces a newer read with an older one. What ``/metrics``
serves is rendered from this store (``AccountStore.inventory``).

Two things are kept per user, each with its own read time: its identity (path, tags,
exemption: from the listing or GetUser) and its keys (ListAccessKeys, or the credential
report, whose generation time is the read time). A user IAM said is gone leaves a
tombstone, so that a listing taken before the deletion cannot bring it back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.inventory import AccessKey, AccountInventory, AccountSummary, Gap, User


@dataclass(frozen=True, slots=True)
class Identity:
    """A user's name (as IAM spells it), path, configured tags and exemption."""

    name: str
    path: str = "/"
    tags: tuple[tuple[str, str], ...] = ()
    exempt: bool = False
    # False where the tags could not be read yet (the listing was denied and GetUser has
    # not answered for this user): then untagged and not exempt.
    tags_known: bool = True


@dataclass(frozen=True, slots=True)
class Observation:
    keys: tuple[AccessKey, ...]
    at: float  # unix time IAM showed these keys
    # Every key's last use (or no use) known.
    dates_complete: bool = True


@dataclass
class _Member:
    identity: Identity
    identity_at: float
    seen: Observation | None = None
    failed: str = ""  # error code of the last read, "" when it succeeded
    tried_at: float = 0.0  # when a read of it last ended, well or not (0: never)


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current the account's data is."""

    oldest_read: float | None  # read time of the least recently read user
    never_read: int  # users listed but not read yet
    users: int


@dataclass
class AccountExtras:
    """Account-wide reads: the summary, the credential report, non-fatal gaps."""

    summary: AccountSummary = field(default_factory=AccountSummary)
    report_generated: float | None = None
    root_keys: int | None = None
    gaps: dict[str, Gap] = field(default_factory=dict)  # by operation


# The gap the users' reads report (the others come from the listing).
READ_GAP = "GetAccessKeyLastUsed"


def _key(name: str) -> str:
    return name.lower()  # IAM user names are unique whatever their case


class AccountStore:
    """One account's users. Thread-safe; every change bumps ``version``."""

    def __init__(self, account_id: str, strategy: str, dates: bool = True) -> None:
        self._lock = threading.Lock()
        self.account_id = account_id
        self.strategy = strategy
        self.dates = dates  # last-used dates are read (collection.last_used is not off)
        self._members: dict[str, _Member] = {}
        self._gone: dict[str, float] = {}  # tombstones: when IAM said the user is gone
        self.listed = False  # a listing has succeeded since start
        self.extras = AccountExtras()
        self.version = 0

    # -- writes --------------------------------------------------------------------------

    def _bump(self) -> None:
        self.version += 1

    def observe(self, name: str, keys: tuple[AccessKey, ...] | None, at: float,
                identity: Identity | None = None, dates_complete: bool = True) -> bool:
        """Records a read of one user (keys None: IAM says it does not exist). Returns
        False when a newer read was already recorded (nothing changes)."""
        k = _key(name)
        with self._lock:
            m = self._members.get(k)
            newest = max(m.seen.at if m is not None and m.seen is not None else -1.0,
                         self._gone.get(k, -1.0))
            if at <= newest:
                if m is not None:
                    m.tried_at = max(m.tried_at, at)
                return False
            if keys is None:
                self._members.pop(k, None)
                self._gone[k] = at
            else:
                self._gone.pop(k, None)
                if m is None:
                    m = self._members[k] = _Member(identity or Identity(name), at)
                elif identity is not None and at > m.identity_at:
                    m.identity, m.identity_at = identity, at
                m.seen = Observation(keys, at, dates_complete)
                m.failed, m.tried_at = "", max(m.tried_at, at)
            self._bump()
            return True

    def failed(self, name: str, code: str, at: float) -> None:
        """A read of one user failed: its last known keys stay, marked with why."""
        with self._lock:
            m = self._members.get(_key(name))
            if m is not None:
                m.tried_at = max(m.tried_at, at)
                if m.failed != code:
                    m.failed = code
                    self._bump()

    def listed_users(self, identities: Iterable[Identity], started: float
                     ) -> tuple[list[str], list[str]]:
        """A listing that began at ``started``: adds new users, refreshes identities not
        read since, and drops users it lacks that were not read since it began. Returns
        the names of the users new to the store, and of those dropped."""
        new: list[str] = []
        gone: list[str] = []
        with self._lock:
            present: set[str] = set()
            for ident in identities:
                k = _key(ident.name)
                present.add(k)
                if self._gone.get(k, -1.0) >= started:
                    continue  # deleted after the listing began
                m = self._members.get(k)
                if m is None:
                    self._members[k] = _Member(ident, started)
                    new.append(ident.name)
                elif started > m.identity_at:
                    if not ident.tags_known:  # keep the last known tags and exemption
                        ident = Identity(ident.name, ident.path, m.identity.tags,
                                         m.identity.exempt, m.identity.tags_known)
                    m.identity, m.identity_at = ident, started
            for k in [k for k, m in self._members.items() if k not in present
                      and max(m.identity_at, m.seen.at if m.seen else -1.0) < started]:
                gone.append(self._members.pop(k).identity.name)
            # Tombstones older than a listing are not needed any more.
            for k in [k for k, at in self._gone.items() if at < started]:
                del self._gone[k]
            self.listed = True
            self._bump()
        return new, gone

    def gap(self, gap: Gap) -> None:
        """A part of the account could not be read (until the next listing)."""
        with self._lock:
            if self.extras.gaps.get(gap.operation) != gap:
                self.extras.gaps[gap.operation] = gap
                self._bump()

    def set_extras(self, extras: AccountExtras) -> None:
        """A listing's account-wide reads. A gap of the users' own reads (a last-used date
        that could not be read) stays while a user still lacks that date."""
        with self._lock:
            for op, gap in self.extras.gaps.items():
                if op not in extras.gaps and op == READ_GAP and any(
                        m.seen is not None and not m.seen.dates_complete
                        for m in self._members.values()):
                    extras.gaps[op] = gap
            self.extras = extras
            self._bump()

    def all_failed(self) -> str | None:
        """The error of the first user when every user's last read failed, else None."""
        with self._lock:
            members = list(self._members.values())
        if members and all(m.failed for m in members):
            return members[0].failed
        return None

    # -- reads ---------------------------------------------------------------------------

    def known(self, name: str) -> User | None:
        """The user as last read, for an event re-read (its last-used dates, identity)."""
        with self._lock:
            m = self._members.get(_key(name))
            return _user(m) if m is not None and m.seen is not None else None

    def identity(self, name: str) -> Identity | None:
        with self._lock:
            m = self._members.get(_key(name))
            return m.identity if m is not None else None

    def members(self) -> list[tuple[str, float | None]]:
        """(name, last read time or None) of every user, in listing order."""
        with self._lock:
            return [(m.identity.name, m.seen.at if m.seen else None)
                    for m in self._members.values()]

    def key_ids(self) -> set[str]:
        """The ids of every key the store holds."""
        with self._lock:
            return {k.key_id for m in self._members.values() if m.seen is not None
                    for k in m.seen.keys if k.key_id}

    def freshness(self) -> Freshness:
        with self._lock:
            reads = [m.seen.at for m in self._members.values() if m.seen is not None]
            never = sum(1 for m in self._members.values() if m.seen is None)
            users = len(self._members)
        return Freshness(min(reads) if reads else None, never, users)

    def untried_since(self, since: float) -> int:
        """Users no read of which has ended since ``since``."""
        with self._lock:
            return sum(1 for m in self._members.values() if m.tried_at < since)

    def inventory(self) -> AccountInventory:
        """The account as the store has it now."""
        with self._lock:
            members = sorted(self._members.values(), key=lambda m: m.identity.name)
            users = tuple(_user(m) for m in members if m.seen is not None)
            unread = tuple((m.identity.name, m.identity.path, m.failed) for m in members
                           if m.seen is None and m.failed)
            complete = all(m.seen.dates_complete for m in members if m.seen is not None)
            extras = self.extras
        summary = extras.summary
        if summary.root_access_keys_present is None and extras.root_keys is not None:
            summary = AccountSummary(int(extras.root_keys > 0), summary.users)
        return AccountInventory(
            account_id=self.account_id, strategy=self.strategy, users=users,
            summary=summary, report_generated=extras.report_generated,
            warnings=tuple(extras.gaps.values()),
            last_used_complete=complete if self.dates else None,
            unread=unread)


def _user(m: _Member) -> User:
    assert m.seen is not None
    i = m.identity
    return User(name=i.name, path=i.path, keys=m.seen.keys, tags=i.tags, exempt=i.exempt,
                stale=m.failed)
