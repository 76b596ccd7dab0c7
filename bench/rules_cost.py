"""The cost of one evaluation of the alert and recording rules at Organization scale.

    python -m bench.rules_cost                                # deploy/prometheus/alerts.yaml
    python -m bench.rules_cost --before /tmp/alerts_before.yaml --users 10000,50000
    python -m bench.rules_cost --users 50 --hours 1 --eval-interval 1s --live-evals 2  # smoke

For each size (--users; 250 users an account, so 50,000 users are 200 accounts) it
generates the exporter's series as Prometheus would have scraped them every 60 s for the
last --hours (5 h: the headline alert reads 4 h of history and an hour before that), as
OpenMetrics text, and backfills it with `promtool tsdb create-blocks-from openmetrics`,
one 2 h-aligned window at a time, caught up to the present. The families are the ones the
rules files name (every `iam_...` name in their expressions and annotations, plus `up`),
with the exporter's label sets (docs/metrics.md): the same script measures today's rules
and a rewrite that reads other families. Then, for each rules file (--before first, if
given, then --rules), on that data:

  live   a stock `prometheus` (no scrape targets) with the rules file loaded, evaluation
         every --eval-interval: each group's `prometheus_rule_group_last_duration_seconds`
         for its first evaluations after the start (the first one is the "Prometheus
         restart" case: alert state restored, recording rules without their own history)
         and the following ones (up to --live-evals, each starting while the newest
         sample is under FRESH s old), and each rule's evaluationTime in the last
         evaluation (/api/v1/rules), alert annotation templates included;
  query  then Prometheus restarted without rules (it replays the rule results from its
         WAL) and every rule's expression queried through /api/v1/query?stats=all at the
         start of its group's last live evaluation (so recorded series exist there, as
         when Prometheus evaluates the group in order): server evaluation time, wall
         time, samples, series returned.

At 50,000 users the backfill writes about 15 GB of OpenMetrics (up to 3 files of 5.7 GB
in the temporary directory at once) and takes 3-4 minutes on 2 idle cores; the whole run
(10,000 and 50,000 users, one rules file) about 8 minutes.

The data (deterministic): per user 1 or 2 keys: 5 % of users with two active keys for
days, 20 % an active and an inactive one, 0.4 % rotating during the history (a second
key, then the first deactivated 45 min later), the rest one active key; 2 % exempt,
20 teams; 10 % of active keys created more than 90 days ago; last used: 93 % within the
last week, 5 % 46-300 days ago (not before their creation), 2 % never; 3 accounts in 200
failing (stale), 2 with a root key, 0.1 % of users unread. Every series has the labels
job="iam-key-exporter", instance="a:9877". The rows are printed, and written as JSON
(--out) and as a Markdown table (--markdown); "series" is what the expression returns
(for an alert: its active alerts).
"""

from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import free_port, machine, proc_status, stop_process, table  # noqa: E402

DEFAULT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
JOB, INSTANCE = "iam-key-exporter", "a:9877"
# promtool reads about 300,000 samples a second on one core: two at once, on two windows.
PROMTOOLS = 2
BLOCK = 7200  # promtool's and Prometheus' block range (s): one backfill file per window
START, FOREVER = -(2**62), 2**62
DAY = 86400
INTERVAL = 300  # the exporter's interval_seconds in the data
# A live evaluation counts when the newest sample is at most this old at its start
# (Prometheus' 5 min lookback: after that, instant selectors see a gap).
FRESH = 285.0
NAME = re.compile(r"(?<![\w:])(iam_[a-z0-9_]*[a-z0-9]|up)(?![\w:])")


# -- the rules files -----------------------------------------------------------------------


@dataclass
class Rule:
    group: str
    kind: str  # alert | record
    name: str
    expr: str
    key: str = ""  # unique in the file: the name, with #2, #3 for repeated record names


@dataclass
class RulesFile:
    path: Path
    text: str
    groups: list[tuple[str, list[Rule]]]

    @property
    def rules(self) -> list[Rule]:
        return [r for _, rules in self.groups for r in rules]

    def recorded(self) -> set[str]:
        return {r.name for r in self.rules if r.kind == "record"}

    def names(self) -> set[str]:
        """The metric names the rules read: in expressions, labels and annotation
        templates (whose queries run for each active alert), without recorded names."""
        found: set[str] = {"up"}
        for _, rules in self.groups:
            for r in rules:
                found |= set(NAME.findall(r.expr))
        for group in yaml.safe_load(self.text)["groups"]:
            for raw in group.get("rules", []):
                for part in ("labels", "annotations"):
                    for value in (raw.get(part) or {}).values():
                        found |= set(NAME.findall(str(value)))
        return found - self.recorded()


def load_rules(path: Path) -> RulesFile:
    text = path.read_text()
    doc = yaml.safe_load(text)
    groups: list[tuple[str, list[Rule]]] = []
    seen: dict[str, int] = {}
    for group in doc.get("groups", []):
        rules = []
        for raw in group.get("rules", []):
            kind = "alert" if "alert" in raw else "record"
            name = str(raw[kind])
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name}#{seen[name]}"
            rules.append(Rule(group["name"], kind, name, str(raw["expr"]), key))
        groups.append((group["name"], rules))
    return RulesFile(path, text, groups)


# -- the estate: every series of the families the rules read -------------------------------


@dataclass(slots=True)
class Series:
    head: str  # name{labels}
    steps: list[tuple[int, str]]  # (from, value) in time order, each until the next
    end: int = FOREVER  # the first time without the series
    fn: Callable[[int], float] | None = None  # a value that changes with every sample

    @property
    def start(self) -> int:
        return self.steps[0][0]


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


# -- backfill ------------------------------------------------------------------------------


class Backfill:
    """The history in a Prometheus data directory, from t0 up to the present: one
    OpenMetrics file per 2 h-aligned window, `promtool tsdb create-blocks-from openmetrics`
    on each (in a second thread, while the next file is written)."""

    def __init__(self, work: Path, fams: list[tuple[str, list[Series]]], t0: int,
                 step: int, log: Callable[[str], None]) -> None:
        self.work, self.fams, self.step, self.log = work, fams, step, log
        self.data = work / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.next = t0  # the first sample not backfilled yet
        self.samples = 0
        self.bytes = 0
        self.chunks = 0
        self.seconds = {"write": 0.0, "promtool": 0.0}
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        return self.next - self.step

    def _promtool(self, path: Path) -> None:
        out = path.with_suffix(".blocks")
        t = time.perf_counter()
        r = subprocess.run([tool("promtool"), "tsdb", "create-blocks-from", "openmetrics",
                            "-q", str(path), str(out)], capture_output=True, text=True)
        with self._lock:  # summed over the threads
            self.seconds["promtool"] += time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"promtool failed on {path.name}: {r.stderr[-2000:]}")
        for block in out.iterdir():
            if block.is_dir():
                block.rename(self.data / block.name)
        shutil.rmtree(out)
        path.unlink()

    def to_now(self) -> None:
        """Backfills every sample up to the present (the newest at most one step old)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=PROMTOOLS) as pool:
            while True:
                pending: list[concurrent.futures.Future[None]] = []
                now = int(time.time()) // self.step * self.step
                while self.next <= now:
                    # At most PROMTOOLS files on disk besides the one being written.
                    while len(pending) >= PROMTOOLS:
                        pending.pop(0).result()
                    lo = self.next
                    window_end = (lo // BLOCK + 1) * BLOCK - 1
                    hi = min(now, lo + (window_end - lo) // self.step * self.step)
                    path = self.work / f"chunk-{self.chunks:03d}.om"
                    t = time.perf_counter()
                    with open(path, "w", buffering=8 << 20) as f:
                        self.samples += write_chunk(f, self.fams, lo, hi, self.step)
                    self.seconds["write"] += time.perf_counter() - t
                    self.bytes += path.stat().st_size
                    self.chunks += 1
                    self.next = hi + self.step
                    pending.append(pool.submit(self._promtool, path))
                for p in pending:
                    p.result()
                if int(time.time()) // self.step * self.step < self.next:
                    return

    def reset_head(self) -> None:
        """Drops what a stopped Prometheus wrote (rule results, alert state): the next
        one starts from the backfilled blocks alone."""
        for name in ("wal", "chunks_head"):
            shutil.rmtree(self.data / name, ignore_errors=True)
        for name in ("lock", "queries.active"):
            (self.data / name).unlink(missing_ok=True)


# -- Prometheus ----------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} is not installed (run: bash .ci/install-tools)")
    return path


class Prometheus:
    """A stock prometheus on 127.0.0.1 over a data directory, no scrape targets."""

    def __init__(self, work: Path, data: Path, rules: Path | None, eval_interval: str
                 ) -> None:
        self.work, self.eval_interval = work, eval_interval
        self.config = work / "prometheus.yml"
        self.configure(rules)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "prometheus.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([
            tool("prometheus"), f"--config.file={self.config}",
            f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=30d",
            # One block range: no compaction runs while the rules are measured.
            "--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
        ], cwd=work, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.time()

    def configure(self, rules: Path | None) -> None:
        cfg: dict[str, Any] = {"global": {"scrape_interval": "60s",
                                          "evaluation_interval": self.eval_interval}}
        if rules is not None:
            cfg["rule_files"] = [str(rules)]
        self.config.write_text(yaml.safe_dump(cfg))

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def http(self, path: str, data: dict[str, str] | None = None, timeout: float = 300
             ) -> bytes:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body,
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as e:
            return bytes(e.read())

    def wait_ready(self, timeout: float = 300) -> float:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n"
                                   f"{self.logs()}")
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=2).close()
                return time.monotonic() - t
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.logs()}")

    def reload(self, rules: Path | None) -> None:
        self.configure(rules)
        urllib.request.urlopen(urllib.request.Request(
            self.url + "/-/reload", method="POST"), timeout=600).close()

    def query(self, expr: str, at: float) -> dict[str, Any]:
        t = time.perf_counter()
        raw = self.http("/api/v1/query", {"query": expr, "time": f"{at:.3f}",
                                          "stats": "all"})
        wall = time.perf_counter() - t
        body = json.loads(raw)
        if body.get("status") != "success":
            return {"wall_seconds": wall, "error": str(body.get("error", body))[:300]}
        stats = body["data"].get("stats", {})
        timings, samples = stats.get("timings", {}), stats.get("samples", {})
        result = body["data"]["result"]
        return {"wall_seconds": wall,
                "eval_seconds": float(timings.get("evalTotalTime", wall)),
                "samples": int(samples.get("totalQueryableSamples", 0)),
                "peak_samples": int(samples.get("peakSamples", 0)),
                "series": len(result) if isinstance(result, list) else 1}

    def scalar(self, expr: str, at: float) -> float:
        body = json.loads(self.http("/api/v1/query", {"query": expr, "time": f"{at:.3f}"}))
        result = body["data"]["result"] if body.get("status") == "success" else []
        return float(result[0]["value"][1]) if result else math.nan

    def group_metrics(self) -> dict[str, tuple[float, float]]:
        """{group name: (last evaluation timestamp, last duration)} from /metrics."""
        text = self.http("/metrics", timeout=30).decode()
        found: dict[str, dict[str, float]] = {}
        for m in re.finditer(r'^prometheus_rule_group_last_(evaluation_timestamp|duration)'
                             r'_seconds\{rule_group="[^"]*;([^"]*)"\} (\S+)$', text, re.M):
            found.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
        return {g: (v.get("evaluation_timestamp", 0.0), v.get("duration", 0.0))
                for g, v in found.items()}

    def rss(self) -> int:
        try:
            return proc_status(self.proc.pid).get("VmHWM", 0)
        except OSError:
            return 0

    def stop(self, kill: bool = False) -> None:
        if kill:
            stop_process(self.proc, signal.SIGKILL)
        else:
            stop_process(self.proc, grace=60)
        self._log.close()


def seconds(duration: str) -> float:
    """A Prometheus duration of one unit (15s, 1m, 500ms) in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration.strip())
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_time(text: str) -> float:
    """RFC 3339 with nanoseconds (as Prometheus writes it) to unix seconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        return 0.0
    from datetime import datetime

    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float(m.group(2)) if m.group(2) else 0.0)


# -- one rules file on the data ------------------------------------------------------------


@dataclass
class Options:
    users: list[int]
    per_account: int = 250
    hours: float = 5.0
    step: int = 60
    eval_interval: str = "15s"
    live_evals: int = 4
    live_seconds: float = 600.0
    repeats: int = 1
    keep: bool = False


def watch_live(prom: Prometheus, rules: RulesFile, last_sample: int, opts: Options,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Each group's evaluations while the data is fresh: (start, duration) from
    prometheus_rule_group_last_*; then each rule's time in the last one."""
    groups = [g for g, rules_ in rules.groups if rules_]
    evals: dict[str, list[dict[str, float]]] = {g: [] for g in groups}
    seen: dict[str, float] = {}
    interval = seconds(opts.eval_interval)
    deadline = time.monotonic() + opts.live_seconds

    def waiting(g: str) -> bool:
        """Whether g may still start (or is running) an evaluation on fresh data."""
        if len(evals[g]) >= opts.live_evals:
            return False
        if g not in seen:
            return True
        ts, dur = seen[g], evals[g][-1]["seconds"] if evals[g] else 0.0
        return max(ts + interval, ts + dur) - last_sample <= FRESH

    while time.monotonic() < deadline:
        if prom.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{prom.logs()}")
        for g, (ts, dur) in prom.group_metrics().items():
            if g in evals and ts > 0 and seen.get(g) != ts:
                seen[g] = ts
                if ts - last_sample <= FRESH and len(evals[g]) < opts.live_evals:
                    evals[g].append({"timestamp": ts, "seconds": dur,
                                     "data_age": ts - last_sample})
                    log(f"    {g}: evaluation {len(evals[g])} took {dur:.3f} s "
                        f"(newest sample {ts - last_sample:.0f} s old)")
        if not any(waiting(g) for g in groups):
            break
        time.sleep(0.25)
    # Each rule's time in its group's last evaluation (alert templates included).
    body = json.loads(prom.http("/api/v1/rules", timeout=600))
    per_rule: dict[tuple[str, str], dict[str, Any]] = {}
    group_start: dict[str, float] = {}
    for grp in body["data"]["groups"]:
        group_start[grp["name"]] = parse_time(grp.get("lastEvaluation", ""))
        count: dict[str, int] = {}
        for r in grp["rules"]:
            count[r["name"]] = count.get(r["name"], 0) + 1
            key = r["name"] if count[r["name"]] == 1 else f"{r['name']}#{count[r['name']]}"
            per_rule[(grp["name"], key)] = {
                "seconds": float(r.get("evaluationTime", 0.0)),
                "health": r.get("health"), "error": r.get("lastError") or None,
                "alerts": len(r.get("alerts", [])) if r.get("type") == "alerting" else None}
    return {"groups": {g: {"evaluations": evals[g]} for g in groups},
            "rules": per_rule, "group_start": group_start}


def summarize_groups(live: dict[str, Any]) -> dict[str, Any]:
    first = steady = 0.0
    for info in live["groups"].values():
        durations = [e["seconds"] for e in info["evaluations"]]
        info["first"] = durations[0] if durations else math.nan
        info["steady"] = statistics.median(durations[1:]) if len(durations) > 1 else math.nan
        first += info["first"]
        steady += info["steady"]
    return {"first": first, "steady": steady}


def measure_file(back: Backfill, rules: RulesFile, opts: Options, label: str,
                 log: Callable[[str], None]) -> dict[str, Any]:
    copy = back.work / f"rules-{label}.yaml"
    copy.write_text(rules.text)
    back.reset_head()
    t = time.perf_counter()
    back.to_now()
    log(f"  caught up to the present in {time.perf_counter() - t:.1f} s; starting prometheus")
    prom = Prometheus(back.work, back.data, copy, opts.eval_interval)
    try:
        ready = prom.wait_ready()
        log(f"  prometheus ready in {ready:.1f} s (newest sample "
            f"{time.time() - back.last:.0f} s old); live evaluations of {label}")
        live = watch_live(prom, rules, back.last, opts, log)
        totals = summarize_groups(live)
        peak_rss = prom.rss()
        # Then the same data without rules, so that nothing is evaluated beside the
        # queries: a reload would wait for a running evaluation (minutes for a slow
        # file); SIGKILL loses nothing committed (rule results are in the WAL), and the
        # next Prometheus replays it.
        prom.stop(kill=True)
        prom = Prometheus(back.work, back.data, None, opts.eval_interval)
        prom.wait_ready()
        rows: list[dict[str, Any]] = []
        for group, group_rules in rules.groups:
            counted = live["groups"].get(group, {}).get("evaluations", [])
            # At the start of the group's last evaluation on fresh data: its recording
            # rules' results are there, as for Prometheus evaluating the group in order.
            at = (counted[-1]["timestamp"] if counted else
                  live["group_start"].get(group) or float(back.last))
            for r in group_rules:
                runs = [prom.query(r.expr, at) for _ in range(max(1, opts.repeats))]
                q = sorted(runs, key=lambda x: x.get("eval_seconds", math.inf))[len(runs) // 2]
                lr = live["rules"].get((group, r.key), {})
                rows.append({"group": group, "kind": r.kind, "name": r.key, "query": q,
                             "live_last": lr.get("seconds", math.nan),
                             "alerts": lr.get("alerts"), "live_error": lr.get("error")})
                log(f"    {r.key}: {q.get('eval_seconds', math.nan):.3f} s, "
                    f"{q.get('samples', 0)} samples, {q.get('series', 0)} series"
                    + (f" ERROR {q['error']}" if "error" in q else ""))
        series = prom.scalar(f'count({{job="{JOB}"}})', back.last)
        total = sum(r["query"].get("eval_seconds", 0.0) for r in rows)
        return {"rules_file": str(rules.path), "rules": rows,
                "groups": live["groups"], "live_first": totals["first"],
                "live_steady": totals["steady"], "query_total": total,
                "query_wall_total": sum(r["query"]["wall_seconds"] for r in rows),
                "errors": [r["name"] for r in rows if "error" in r["query"]],
                "series_in_tsdb": series,
                "prometheus_peak_rss": max(peak_rss, prom.rss()),
                "eval_interval": opts.eval_interval}
    finally:
        prom.stop()


def measure_size(users: int, files: list[tuple[str, RulesFile]], opts: Options,
                 log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    t0 = int(time.time()) // opts.step * opts.step - int(opts.hours * 3600)
    estate = Estate(users, opts.per_account, opts.hours, t0)
    names: set[str] = set().union(*(f.names() for _, f in files))
    fams, notes = families(estate, names)
    for n in notes:
        log(f"  note: {n}")
    n_series = sum(len(s) for _, s in fams)
    log(f"{users} users in {estate.accounts} accounts: {len(fams)} families, "
        f"{n_series} series, {opts.hours:g} h at {opts.step} s")
    work = Path(tempfile.mkdtemp(prefix="iamx-rules-"))
    try:
        back = Backfill(work, fams, t0, opts.step, log)
        t = time.perf_counter()
        back.to_now()
        prep = time.perf_counter() - t
        log(f"  backfilled {back.samples} samples ({back.bytes / 1e9:.2f} GB of OpenMetrics, "
            f"{back.chunks} files) in {prep:.0f} s (writing {back.seconds['write']:.0f} s, "
            f"promtool {back.seconds['promtool']:.0f} s)")
        results = {label: measure_file(back, f, opts, label, log) for label, f in files}
        return {"users": users, "accounts": estate.accounts, "families": [n for n, _ in fams],
                "notes": notes, "series": n_series, "samples": back.samples,
                "history_seconds": back.last - t0 + opts.step,
                "openmetrics_bytes": back.bytes, "backfill_seconds": prep,
                "seconds": time.perf_counter() - started, "files": results}
    finally:
        if opts.keep:
            log(f"  kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def measure(rules: Path, before: Path | None, opts: Options,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    tool("promtool")
    tool("prometheus")
    files = ([("before", load_rules(before))] if before is not None else []) + \
        [("after", load_rules(rules))]
    started = time.perf_counter()
    info = machine()
    sizes = [measure_size(n, files, opts, log) for n in opts.users]
    info["loadavg_at_end"] = os.getloadavg()
    return {"machine": info, "options": dataclasses.asdict(opts),
            "rules": {label: str(f.path) for label, f in files}, "sizes": sizes,
            "seconds": time.perf_counter() - started}


# -- reporting -----------------------------------------------------------------------------


def _s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.3g}x"


def report_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per size and rule of the measured (after) file, then the totals."""
    rows: list[list[str]] = []
    for size in result["sizes"]:
        after, before = size["files"]["after"], size["files"].get("before")
        old = {r["name"]: r for r in before["rules"]} if before else {}
        for r in after["rules"]:
            b = old.get(r["name"])
            bq = b["query"].get("eval_seconds") if b else None
            rows.append([str(size["users"]), r["group"].split(".")[-1], r["kind"], r["name"],
                         str(r["query"].get("series", "-")), _s(r["query"].get("eval_seconds")),
                         str(r["query"].get("samples", "-")), _s(r["live_last"]), _s(bq),
                         _ratio(r["query"].get("eval_seconds"), bq)])
        totals = [("query_total", "all rules, one evaluation (query API, sum)"),
                  ("live_first", "all groups, first evaluation after start (live, sum)"),
                  ("live_steady", "all groups, one evaluation (live, sum, median)")]
        for what, text in totals:
            b = before[what] if before else None
            rows.append([str(size["users"]), "", "", text, "", _s(after[what]) if what ==
                         "query_total" else "", "", "" if what == "query_total" else
                         _s(after[what]), _s(b), _ratio(after[what], b)])
    return rows


HEADERS = ["users", "group", "kind", "rule", "series", "query s", "samples", "live s",
           "before s", "after/before"]


def markdown(result: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
              for row in report_rows(result)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rules", type=Path, default=DEFAULT_RULES,
                    help="the rules file to measure (default deploy/prometheus/alerts.yaml)")
    ap.add_argument("--before", type=Path, help="another rules file, for a ratio column")
    ap.add_argument("--users", default="10000,50000", help="sizes, comma-separated")
    ap.add_argument("--users-per-account", type=int, default=250)
    ap.add_argument("--hours", type=float, default=5.0, help="history (default 5)")
    ap.add_argument("--scrape-interval", type=int, default=60, help="seconds (default 60)")
    ap.add_argument("--eval-interval", default="15s", help="Prometheus evaluation_interval")
    ap.add_argument("--live-evals", type=int, default=4,
                    help="evaluations per group to watch (fewer where they would start "
                         f"more than {FRESH:.0f} s after the newest sample)")
    ap.add_argument("--live-seconds", type=float, default=600.0,
                    help="at most this long per rules file and size")
    ap.add_argument("--repeats", type=int, default=1, help="queries per rule (median)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rules.json")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args(argv)
    opts = Options(users=[int(x) for x in args.users.split(",") if x.strip()],
                   per_account=args.users_per_account, hours=args.hours,
                   step=args.scrape_interval, eval_interval=args.eval_interval,
                   live_evals=args.live_evals, live_seconds=args.live_seconds,
                   repeats=args.repeats, keep=args.keep)

    def log(msg: str) -> None:
        print(msg, flush=True)

    result = measure(args.rules, args.before, opts, log)
    print()
    print(table(HEADERS, report_rows(result)))
    print(f"\n{result['seconds']:.0f} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    if args.markdown:
        args.markdown.write_text(markdown(result))
        print(f"wrote {args.markdown}")
    errors = [(s["users"], label, name) for s in result["sizes"]
              for label, f in s["files"].items() for name in f["errors"]]
    if errors:
        print(f"queries that failed: {errors}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
