"""The synthetic Organization bench/rules_cost.py measures the rules on: accounts, users
and keys (deterministic), every series of the families a rules file reads, with the
exporter's label sets (docs/metrics.md), and those series written as OpenMetrics."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

JOB, INSTANCE = "iam-key-exporter", "a:9877"  # on every series, and on the scraped ones
START, FOREVER = -(2**62), 2**62
DAY = 86400
INTERVAL = 300  # the exporter's interval_seconds in the data


@dataclass(slots=True)
class Series:
    head: str  # name{labels}
    steps: list[tuple[int, str]]  # (from, value) in time order, each until the next
    end: int = FOREVER  # the first time without the series
    fn: Callable[[int], float] | None = None  # a value that changes with every sample

    @property
    def start(self) -> int:
        return self.steps[0][0]

    def at(self, t: int) -> str | None:
        """The value at t, as written; None where the series does not exist."""
        if self.end <= t or self.start > t:
            return None
        if self.fn is not None:
            return fmt(self.fn(t))
        return self.steps[bisect.bisect_right(self.steps, t, key=lambda x: x[0]) - 1][1]


@dataclass
class Key:
    id: str
    created: int
    last_used: int | None
    status: list[tuple[int, str]]  # (from, Active | Inactive); the key exists from the first


@dataclass
class User:
    account: int
    name: str
    index: int
    keys: list[Key]
    exempt: bool
    team: str
    path: str
    unread: bool

    def active(self, t: int) -> int:
        return sum(1 for k in self.keys if status_at(k, t) == "Active")

    def inactive(self, t: int) -> int:
        return sum(1 for k in self.keys if status_at(k, t) == "Inactive")

    def changes(self) -> list[int]:
        return sorted({s for k in self.keys for s, _ in k.status if s != START})


def status_at(key: Key, t: int) -> str | None:
    current = None
    for since, status in key.status:
        if since <= t:
            current = status
    return current


def fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def labels(name: str, **kv: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in kv.items())
    return f'{name}{{{inner},job="{JOB}",instance="{INSTANCE}"}}' if inner else \
        f'{name}{{job="{JOB}",instance="{INSTANCE}"}}'


@dataclass
class Estate:
    """A deterministic Organization: accounts x users x keys, times relative to t0 (the
    first sample of the history)."""

    users: int
    per_account: int
    hours: float
    t0: int
    accounts: int = 0
    people: list[User] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(14)
        self.accounts = max(1, math.ceil(self.users / self.per_account))
        span = int(self.hours * 3600)
        g = 0
        for a in range(self.accounts):
            n = self.users // self.accounts + (1 if a < self.users % self.accounts else 0)
            for j in range(n):
                self.people.append(self._user(rng, a, j, g, span))
                g += 1

    def _user(self, rng: random.Random, a: int, j: int, g: int, span: int) -> User:
        t0 = self.t0

        def active_key(k: int) -> Key:
            r = rng.random()
            created = t0 - int(DAY * (rng.uniform(91, 700) if r < 0.10 else
                                      rng.uniform(1, 90)))
            u = rng.random()
            last: int | None = (None if u < 0.02 else
                                t0 - int(DAY * rng.uniform(46, 300)) if u < 0.07 else
                                t0 - int(rng.uniform(0, 7 * DAY)))
            if last is not None:
                last = max(last, created)
            return Key(key_id(g, k), created, last, [(START, "Active")])

        keys = [active_key(0)]
        rotating = g % 250 == 11
        if g % 20 == 7:  # 5 %: two active keys, for days
            keys.append(active_key(1))
        elif rotating:  # 0.4 %: a rotation during the history
            tc = t0 + int(span * (0.2 + 0.4 * rng.random())) // 60 * 60
            keys.append(Key(key_id(g, 1), tc, None, [(tc, "Active")]))
            keys[0].status.append((tc + 45 * 60, "Inactive"))
        elif g % 5 == 1:  # 20 %: an old inactive key beside the active one
            created = t0 - int(DAY * rng.uniform(100, 600))
            keys.append(Key(key_id(g, 1), created, created + DAY, [(START, "Inactive")]))
        return User(a, f"user-{j:04d}", g, keys, g % 50 == 3 or g % 100 == 27,
                    f"team-{g % 20:02d}", "/service/" if g % 3 == 0 else "/",
                    g % 1000 == 499)

    def account_id(self, a: int) -> str:
        return f"{200000000000 + 1009 * a:012d}"

    def by_account(self) -> Iterator[tuple[int, list[User]]]:
        current: list[User] = []
        for u in self.people:
            if current and u.account != current[0].account:
                yield current[0].account, current
                current = []
            current.append(u)
        if current:
            yield current[0].account, current


def key_id(g: int, k: int) -> str:
    return f"AKIA{g:012X}{k:04X}"


def step_series(head: str, at: Callable[[int], float], changes: Iterable[int]) -> Series:
    """A series whose value is at(t), piecewise constant, changing only at `changes`."""
    steps = [(START, fmt(at(START)))]
    for t in sorted(set(changes)):
        v = fmt(at(t))
        if v != steps[-1][1]:
            steps.append((t, v))
    return Series(head, steps)


def const(head: str, v: float) -> Series:
    return Series(head, [(START, fmt(v))])


def ramp(head: str, fn: Callable[[int], float]) -> Series:
    return Series(head, [(START, "")], fn=fn)


def key_series(name: str, u: User, acct: str, value: Callable[[Key], int | None]
               ) -> list[Series]:
    out = []
    for k in u.keys:
        v = value(k)
        if v is None:
            continue
        for i, (since, status) in enumerate(k.status):
            end = k.status[i + 1][0] if i + 1 < len(k.status) else FOREVER
            head = labels(name, account_id=acct, user_name=u.name, access_key_id=k.id,
                          status=status)
            out.append(Series(head, [(since, fmt(v))], end))
    return out


UserFamily = Callable[[str, User, str], list[Series]]
AccountFamily = Callable[[str, "Estate", int, list[User]], list[Series]]
GlobalFamily = Callable[[str, "Estate"], list[Series]]


def _user_access_keys(n: str, u: User, acct: str) -> list[Series]:
    ch = u.changes()
    return [step_series(labels(n, account_id=acct, user_name=u.name, status="Active"),
                        u.active, ch),
            step_series(labels(n, account_id=acct, user_name=u.name, status="Inactive"),
                        u.inactive, ch)]


USER_FAMILIES: dict[str, UserFamily] = {
    "iam_user_access_keys": _user_access_keys,
    "iam_user_info": lambda n, u, acct: [const(labels(
        n, account_id=acct, user_name=u.name, path=u.path,
        exempt="true" if u.exempt else "false", team=u.team), 1)],
    "iam_user_unread": lambda n, u, acct: [const(labels(
        n, account_id=acct, user_name=u.name, reason="AccessDenied"), 1)] if u.unread else [],
    "iam_access_key_created_timestamp_seconds":
        lambda n, u, acct: key_series(n, u, acct, lambda k: k.created),
    "iam_access_key_last_used_timestamp_seconds":
        lambda n, u, acct: key_series(n, u, acct, lambda k: k.last_used),
}


def failing(a: int) -> bool:
    return a % 67 == 13


def _every_cycle(e: Estate, a: int, lag: int = 0) -> Callable[[int], float]:
    """The end time of the last cycle (one every INTERVAL s), or old for a failing one."""
    phase = (a * 37) % INTERVAL
    if failing(a):
        return lambda t: float(e.t0 - 3600 - lag)
    return lambda t: float(t - (t - phase) % INTERVAL - lag)


def _multiple(users: list[User]) -> Callable[[int], float]:
    return lambda t: float(sum(1 for u in users if not u.exempt and u.active(t) > 1))


def _changes(users: list[User]) -> list[int]:
    return sorted({c for u in users for c in u.changes()})


def _per_account(value: Callable[[Estate, int, list[User]], float]) -> AccountFamily:
    return lambda n, e, a, us: [const(labels(n, account_id=e.account_id(a)), value(e, a, us))]


def _ramp_account(fn: Callable[[Estate, int], Callable[[int], float]]) -> AccountFamily:
    return lambda n, e, a, us: [ramp(labels(n, account_id=e.account_id(a)), fn(e, a))]


def _account_keys(n: str, e: Estate, a: int, us: list[User]) -> list[Series]:
    acct = e.account_id(a)
    return [step_series(labels(n, account_id=acct, status="Active"),
                        lambda t: float(sum(u.active(t) for u in us)), _changes(us)),
            step_series(labels(n, account_id=acct, status="Inactive"),
                        lambda t: float(sum(u.inactive(t) for u in us)), _changes(us))]


ACCOUNT_FAMILIES: dict[str, AccountFamily] = {
    "iam_account_info": lambda n, e, a, us: [const(labels(
        n, account_id=e.account_id(a), account_name=f"org-account-{a:03d}"), 1)],
    "iam_account_watched_users": _per_account(lambda e, a, us: len(us)),
    "iam_account_users": _per_account(lambda e, a, us: len(us)),
    "iam_account_unread_users": _per_account(lambda e, a, us: sum(u.unread for u in us)),
    "iam_account_never_read_users": _per_account(lambda e, a, us: 0),
    "iam_account_users_with_multiple_active_keys": lambda n, e, a, us: [step_series(
        labels(n, account_id=e.account_id(a)), _multiple(us), _changes(us))],
    "iam_account_access_keys": _account_keys,
    "iam_root_access_keys_present": _per_account(lambda e, a, us: 1 if a % 97 == 5 else 0),
    "iam_credential_report_generated_timestamp_seconds": _ramp_account(
        lambda e, a: lambda t: float(t - (t + 53 * a) % 3600)),
    "iam_exporter_collection_success": _per_account(lambda e, a, us: 0 if failing(a) else 1),
    "iam_exporter_last_success_timestamp_seconds": _ramp_account(
        lambda e, a: _every_cycle(e, a)),
    "iam_exporter_oldest_user_read_timestamp_seconds": _ramp_account(
        lambda e, a: _every_cycle(e, a, lag=INTERVAL - 30)),
    "iam_exporter_collection_duration_seconds": _per_account(lambda e, a, us: 40 + a % 30),
    "iam_exporter_inventory_withdrawn": _per_account(lambda e, a, us: 0),
    "iam_exporter_last_used_complete": _per_account(lambda e, a, us: 1),
    "iam_exporter_iam_request_rate_needed": _per_account(
        lambda e, a, us: round((len(us) + 8) / INTERVAL, 3)),
    "iam_exporter_iam_request_budget": _per_account(lambda e, a, us: 10),
    "iam_exporter_collection_errors_total": lambda n, e, a, us: [ramp(
        labels(n, account_id=e.account_id(a), error="AccessDenied"),
        lambda t: float((t - e.t0) // INTERVAL))] if failing(a) else [],
    "iam_exporter_iam_requests_total": lambda n, e, a, us: [ramp(
        labels(n, account_id=e.account_id(a), operation="ListAccessKeys"),
        lambda t: float((t - e.t0) // INTERVAL * len(us)))],
    "iam_exporter_iam_throttles_total": lambda n, e, a, us: [const(
        labels(n, account_id=e.account_id(a), operation="ListAccessKeys"), 0)],
}


def _global(value: float, **kv: str) -> GlobalFamily:
    return lambda n, e: [const(labels(n, **kv), value)]


GLOBAL_FAMILIES: dict[str, GlobalFamily] = {
    "up": _global(1),
    "iam_exporter_poll_interval_seconds": _global(INTERVAL),
    "iam_exporter_shard_info": _global(1, shard_index="0", shard_total="1"),
    "iam_exporter_cycle_overrun": _global(0),
    "iam_exporter_cycles_total": lambda n, e: [ramp(
        labels(n), lambda t: float((t - e.t0) // INTERVAL))],
    "iam_exporter_events_queue_up": _global(1),
    "iam_exporter_events_dead_letter_messages": _global(0),
    "iam_exporter_events_receive_errors_total": _global(0, code="AccessDenied"),
    "iam_exporter_events_received_total": lambda n, e: [ramp(
        labels(n), lambda t: float((t - e.t0) // 36))],
    "iam_exporter_events_last_applied_timestamp_seconds": lambda n, e: [ramp(
        labels(n), lambda t: float(t - t % 36))],
    "iam_exporter_build_info": _global(1, version="0.0.0", python_version="3.11"),
    "iam_exporter_discovered_accounts": lambda n, e: [const(labels(n), e.accounts)],
    "iam_exporter_discovery_success": _global(1),
    "iam_exporter_config_last_reload_successful": _global(1),
}


def families(e: Estate, names: Iterable[str]) -> tuple[list[tuple[str, list[Series]]],
                                                       list[str]]:
    """[(name, series)] for the names, and notes on names without a model (generated
    per account, per user or per key by their prefix, value 0)."""
    out: list[tuple[str, list[Series]]] = []
    notes: list[str] = []
    accounts = list(e.by_account())
    for n in sorted(names):
        series: list[Series] = []
        if n in USER_FAMILIES or n.startswith(("iam_user_", "iam_access_key_")):
            fam = USER_FAMILIES.get(n)
            if fam is None:
                notes.append(f"{n}: no model, generated per user/key with value 0")
                fam = ((lambda n, u, acct: key_series(n, u, acct, lambda k: 0))
                       if n.startswith("iam_access_key_") else
                       (lambda n, u, acct: [const(labels(n, account_id=acct,
                                                         user_name=u.name), 0)]))
            for a, us in accounts:
                acct = e.account_id(a)
                for u in us:
                    series += fam(n, u, acct)
        elif n in GLOBAL_FAMILIES:
            series = GLOBAL_FAMILIES[n](n, e)
        else:
            afam = ACCOUNT_FAMILIES.get(n)
            if afam is None:
                notes.append(f"{n}: no model, generated per account with value 0")
                afam = _per_account(lambda e, a, us: 0)
            for a, us in accounts:
                series += afam(n, e, a, us)
        out.append((n, series))
    return out, notes


def write_chunk(f: IO[str], fams: list[tuple[str, list[Series]]], lo: int, hi: int,
                step: int) -> int:
    """Every sample at lo, lo+step, ... hi (inclusive) as OpenMetrics; the sample count."""
    grid = list(range(lo, hi + 1, step))
    ts = [str(t) for t in grid]
    count = 0
    for _, series in fams:
        for s in series:
            i_end = bisect.bisect_left(grid, s.end)
            if s.fn is not None:
                i0 = bisect.bisect_left(grid, s.start)
                fn = s.fn
                f.write("".join(f"{s.head} {fmt(fn(t))} {t}\n" for t in grid[i0:i_end]))
                count += max(0, i_end - i0)
                continue
            for k, (since, value) in enumerate(s.steps):
                until = s.steps[k + 1][0] if k + 1 < len(s.steps) else FOREVER
                i0 = bisect.bisect_left(grid, since)
                i1 = min(i_end, bisect.bisect_left(grid, until))
                if i1 <= i0:
                    continue
                head = f"{s.head} {value} "
                f.write(head + ("\n" + head).join(ts[i0:i1]) + "\n")
                count += i1 - i0
    f.write("# EOF\n")
    return count
