"""What every scenario shares: sizes, result rows, the exporter run in process, and the
process's own CPU and memory."""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fakedata import Truth
from bench.harness import ROOT, proc_status

BUDGET_MODULE = ROOT / "exporter" / "aws" / "budget.py"
# The config's upper bound: a budget that never binds (requests scenario, before/after).
NO_BUDGET = 1000.0


@dataclass
class Sizes:
    """Every size and rate of a run; FULL, QUICK and SMOKE below."""

    account_users: int = 5000
    latency_ms: float = 50.0
    concurrency: int = 8
    quota: float = 20.0  # IAM's per-account quota (the fake's token bucket), requests/s
    budget_under: float = 15.0  # aws.max_requests_per_second below the quota
    budget_over: float = 40.0  # ... and above it
    org_accounts: int = 200
    org_users: int = 250
    org_budget: float = 15.0
    org_parallel: int = 32
    scrapes: int = 200
    requests_sizes: tuple[int, ...] = (500, 5000)
    requests_full_combos_max: int = 500  # above this size, the fullest list combo only
    storm_users: int = 800
    storm_quota: float = 14.0
    storm_budget: float = 20.0
    storm_passes: int = 3
    events_accounts: int = 40  # scenario 8: accounts x users watched by the daemon ...
    events_users: int = 250
    events_changes: int = 100  # ... key changes timed through the events queue
    events_budget: float = 100.0  # per account: a short pass (polling at its best)
    # Scenarios 9 and 10: one account at the default request budget, in the daemon, with
    # events sent while its first pass runs.
    continuous_users: int = 5000
    continuous_interval: float = 300.0  # interval_seconds
    continuous_events: int = 30  # key changes sent (fake IAM + SQS) during the first pass
    continuous_sample: float = 30.0  # seconds between freshness samples
    continuous_after: float = 120.0  # watched this long after the first pass
    rules_users: tuple[int, ...] = (10000, 50000)  # scenario 11 (rules): 250 an account,
    rules_hours: float = 5.0  # ... history backfilled at a 60 s scrape,
    rules_eval_interval: str = "15s"  # ... Prometheus' evaluation_interval,
    rules_live_evals: int = 4  # ... evaluations watched per group
    rules_lookback: int = 300  # ... Prometheus' lookback delta (s)
    timeout: float = 900.0  # the longest wait for a pass (run_once, the daemon)


FULL = Sizes()
QUICK = Sizes(account_users=1000, org_accounts=40, scrapes=100, requests_sizes=(500,),
              storm_users=200, events_accounts=8, events_changes=30,
              continuous_users=1000, continuous_interval=60.0, continuous_events=12,
              continuous_sample=6.0, continuous_after=30.0, rules_users=(10000,))
# Tiny, and the rates scaled up with them, so that each row takes about a second.
SMOKE = Sizes(account_users=30, latency_ms=2.0, quota=100.0, budget_under=75.0,
              budget_over=200.0, org_accounts=4, org_users=20, org_budget=200.0,
              org_parallel=4, scrapes=20, requests_sizes=(30,), storm_users=30,
              storm_quota=70.0, storm_budget=100.0, events_accounts=2, events_users=20,
              events_changes=6, continuous_users=30, continuous_interval=5.0,
              continuous_events=3, continuous_sample=1.0, continuous_after=4.0,
              rules_users=(50,), rules_hours=1.0, rules_eval_interval="1s",
              rules_live_evals=2, rules_lookback=30, timeout=120.0)


@dataclass
class Row:
    scenario: str
    check: str
    measured: str
    target: str
    status: str  # PASS | FAIL | SKIP | INFO


@dataclass
class Bench:
    sizes: Sizes
    out: Path
    smoke: bool
    before_tree: Path | None = None
    before_rules: Path | None = None  # scenario 11 (rules): another rules file
    rows: list[Row] = field(default_factory=list)
    # Started early by run.py, taken by the scenario that measures it (e.g. "scrape").
    background: dict[str, Any] = field(default_factory=dict)
    # One measurement that several scenarios report on (e.g. 9 and 10), by name.
    shared: dict[str, Any] = field(default_factory=dict)

    def row(self, scenario: str, check: str, measured: str, target: str = "-",
            ok: bool | None = None) -> bool | None:
        status = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append(Row(scenario, check, measured, target, status))
        return ok

    def skip(self, scenario: str, check: str, why: str) -> None:
        self.rows.append(Row(scenario, check, why, "-", "SKIP"))

    def write(self, name: str, data: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))


def has_budget() -> bool:
    """Whether the exporter enforces aws.max_requests_per_second yet."""
    return BUDGET_MODULE.exists()


# -- the exporter, in process (its CPU is the bench process's; the fake has its own) -------


class InProcess:
    """The daemon's collection path, as the CLI builds it: config → accounts → Poller.
    ``run_pass()`` asks for a pass on demand (``Poller.run_once``: every account listed
    and each user read once since the call); again and again on one Poller it reuses its
    sessions, clients and request budget. The account loops keep running between passes
    (with the bench's day-long interval nothing more is due): ``stop()`` when done."""

    def __init__(self, cfg: Any, timeout: float = 900.0) -> None:
        from exporter.aws.accounts import AccountSet
        from exporter.aws.session import ApiStats
        from exporter.poller import Poller

        self.poller = Poller(cfg, AccountSet(cfg, ApiStats()))
        self.timeout = timeout

    def run_pass(self) -> tuple[Any, float, float]:
        """(snapshot, wall seconds, CPU seconds of this process) of one pass."""
        cpu, t = cpu_seconds(), time.perf_counter()
        snap = self.poller.run_once(timeout=self.timeout)
        wall = time.perf_counter() - t
        if wall >= self.timeout:
            raise TimeoutError(f"the pass did not end within {self.timeout:g} s")
        return snap, wall, cpu_seconds() - cpu

    def stop(self) -> None:
        self.poller.stop()

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _count(user: Any, status: str) -> int:
    return sum(1 for k in user.keys if k.status == status)


def counts_of(snap: Any) -> tuple[dict[str, Truth], dict[str, str]]:
    """({account id: {user: {Active, Inactive}}}, {account id: error}) of a snapshot."""
    counts: dict[str, Truth] = {}
    errors: dict[str, str] = {}
    for st in snap.accounts:
        if not st.success or st.inventory is None:
            errors[st.account_id] = st.error or "failed"
            continue
        counts[st.account_id] = {u.name: {s: _count(u, s) for s in ("Active", "Inactive")}
                                 for u in st.inventory.users}
    return counts, errors


def exact(snap: Any, truth: dict[str, Truth]) -> tuple[bool, str]:
    """Whether every account was collected and every user's counts match; a note."""
    counts, errors = counts_of(snap)
    if errors:
        first = next(iter(errors.items()))
        return False, f"{len(errors)} account(s) failed, e.g. {first[0]}: {first[1]}"
    wrong = [a for a in truth if counts.get(a) != truth[a]]
    if wrong or set(counts) != set(truth):
        return False, f"{len(wrong)} account(s) differ, e.g. {(wrong or ['?'])[0]}"
    return True, f"{sum(len(t) for t in truth.values())} users in {len(truth)} account(s)"


# -- this process's CPU and memory ---------------------------------------------------------


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def memory(pid: int | None = None) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process (this one by default), in bytes."""
    return proc_status(pid or os.getpid())


def reset_peak_rss() -> bool:
    """Resets this process's VmHWM to its current RSS (Linux clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def secs(x: float) -> str:
    return f"{x:.0f} s" if x >= 100 else f"{x:.1f} s"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f} %" if whole else "-"


MB = 1024 * 1024
