"""Scenarios 3 and 4: an Organization (200 accounts x 250 users, each account with IAM's
quota), one pass collected in this process (every account's loop at once, each paced by
its own request budget); then the same estate served by the real daemon and scraped."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.fakedata import Truth, org_account_id, organization
from bench.fakeiam import FakeIam
from bench.harness import config_dict, load_config, percentile
from bench.scenarios.common import (
    MB,
    NO_BUDGET,
    Bench,
    InProcess,
    exact,
    memory,
    pct,
    reset_peak_rss,
    secs,
)

_SAMPLE = re.compile(rb'^iam_user_access_keys\{([^}]*)\} (\S+)$', re.M)
_LABEL = re.compile(rb'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"')
# An older tree's (before the continuous core): its count of collection cycles.
_CYCLES = re.compile(rb"^iam_exporter_cycles_total (\S+)$", re.M)
_LAST_SUCCESS = re.compile(
    rb"^iam_exporter_last_success_timestamp_seconds\{[^}]*\} (\S+)$", re.M)
_SUCCESS = re.compile(rb"^iam_exporter_collection_success\{[^}]*\} 1(?:\.0)?$", re.M)


def org_config_dict(url: str, b: Bench, budget: float, tree: Path | None = None
                    ) -> dict[str, Any]:
    """The Organization as a static list of roles (the fake's AssumeRole names the
    account in the credentials it returns). ``tree``: an older checkout (scenario 7),
    whose cycles are bounded by collection.timeout_seconds and run
    collection.max_parallel_accounts accounts at once; the continuous core ignores both
    (every account has its own loop and budget), so they are left out for it."""
    z = b.sizes
    accounts = [{"role_arn": f"arn:aws:iam::{org_account_id(i)}:role/iam-key-exporter"}
                for i in range(z.org_accounts)]
    collection: dict[str, Any] = {}
    if tree is not None and has_cycles(tree):
        collection = {"max_parallel_accounts": z.org_parallel, "timeout_seconds": z.timeout}
    return config_dict(url, concurrency=z.concurrency, accounts=accounts,
                       aws={"max_requests_per_second": budget, "retry_mode": "standard"},
                       collection=collection)


def has_cycles(tree: Path) -> bool:
    """Whether the exporter in ``tree`` runs collection cycles (``Poller.run_cycle``, before
    the continuous core) rather than passes on demand (``Poller.run_once``)."""
    return "def run_cycle(" in (tree / "exporter" / "poller.py").read_text()


def org_truth(b: Bench) -> dict[str, Truth]:
    z = b.sizes
    return {d.account_id: d.truth() for d in organization(z.org_accounts, z.org_users)}


def org_fake(b: Bench, latency_ms: float, quota: float) -> FakeIam:
    z = b.sizes
    fake = FakeIam(users=z.org_users, accounts=z.org_accounts, latency_ms=latency_ms,
                   quota_rate=quota, quota_burst=quota)
    fake.generate_reports()
    return fake


# -- 3: the Organization, in process ------------------------------------------------------


def scenario_organization(b: Bench) -> None:
    z = b.sizes
    truth = org_truth(b)
    with (org_fake(b, z.latency_ms, z.quota) as fake,
          InProcess(load_config(org_config_dict(fake.url, b, z.org_budget)),
                    z.timeout) as exp):
        fake.reset()
        reset_peak_rss()
        rss0, fake_cpu0 = memory()["VmRSS"], fake.cpu_seconds()
        snap, wall, cpu = exp.run_pass()
        fake_cpu, st = fake.cpu_seconds() - fake_cpu0, fake.stats()
        threads = threading.active_count()
    peak = memory()["VmHWM"]
    ok, note = exact(snap, truth)
    requests = st["iam_total"]
    per_account = requests / max(len(truth), 1)
    floor = per_account / z.org_budget  # every account at once, each at its budget
    r = {"accounts": len(truth), "users_per_account": z.org_users, "budget": z.org_budget,
         "threads": threads, "seconds": wall, "cpu_seconds": cpu,
         "cpu_utilisation": cpu / wall, "fake_cpu_seconds": fake_cpu,
         "rss_before": rss0, "peak_rss": peak, "exact": ok, "note": note,
         "iam_requests": requests, "throttled": st["throttled_total"],
         "budget_floor_seconds": floor, "by_action": st["requests"]}
    print(f"  {note}; {wall:.1f}s wall, {cpu:.1f}s CPU, fake {fake_cpu:.1f}s CPU; "
          f"peak RSS {peak / MB:.0f} MB", file=sys.stderr)
    _org_rows(b, r)
    b.write("organization", r)


def _org_rows(b: Bench, r: dict[str, Any]) -> None:
    z, s = b.sizes, "3 organization"
    b.row(s, f"{r['accounts']} accounts x {z.org_users} users, {z.latency_ms:g} ms, quota "
          f"{z.quota:g}/s each, budget {z.org_budget:g}/s, one pass (run_once): "
          "counts exact", r["note"], "exact", r["exact"])
    b.row(s, "pass time", f"{secs(r['seconds'])} (budget-bound floor "
          f"{secs(r['budget_floor_seconds'])}: {r['iam_requests'] / r['accounts']:.0f} "
          f"requests per account / {z.org_budget:g}/s, every account at once; "
          f"{r['threads']} threads in the process)")
    b.row(s, "CPU seconds (bench process = exporter)", f"{secs(r['cpu_seconds'])} "
          f"(fake IAM: {secs(r['fake_cpu_seconds'])} in its own process)")
    b.row(s, "CPU utilisation (CPU seconds / wall)", f"{r['cpu_utilisation']:.2f}",
          "~1 = CPU-bound (one GIL)")
    b.row(s, "peak RSS of the bench process", f"{r['peak_rss'] / MB:.0f} MB (RSS before "
          f"the pass {r['rss_before'] / MB:.0f} MB)")
    b.row(s, "IAM requests throttled", f"{r['throttled']} of {r['iam_requests']} "
          f"({pct(r['throttled'], r['iam_requests'])})")


# -- 4: the same estate, served by the daemon ---------------------------------------------


def wait_collected(d: harness.Daemon, accounts: int, timeout: float) -> float:
    """Seconds until every account has been collected once: collection_success 1 and a
    last success time, which the continuous core sets when an account's pass ends (its
    collection_success is 1 as soon as a listing works, before its users are read)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if d.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {d.proc.returncode}:\n{d.logs()}")
        try:
            status, body, _ = d.get("/metrics")
        except OSError:
            status, body = 0, b""
        if (status == 200 and len(_SUCCESS.findall(body)) >= accounts
                and len(_LAST_SUCCESS.findall(body)) >= accounts and _first_done(body)):
            return time.monotonic() - started
        time.sleep(2.0)
    raise RuntimeError(f"not every account collected after {timeout:g}s:\n{d.logs()}")


def _first_done(body: bytes) -> bool:
    """An older tree's: whether its first cycle has ended (its last snapshot rendered, not
    only the accounts published as they finished). The continuous core has no cycles: an
    account's collection_success is 1 once its first pass ended."""
    m = _CYCLES.search(body)
    return m is None or float(m.group(1)) >= 1


def exposition_counts(body: bytes) -> dict[str, Truth]:
    """{account: {user: {status: n}}} from the iam_user_access_keys samples."""
    out: dict[str, Truth] = {}
    for labels_text, value in _SAMPLE.findall(body):
        labels = {k.decode(): v.decode() for k, v in _LABEL.findall(labels_text)}
        user = out.setdefault(labels["account_id"], {}).setdefault(labels["user_name"], {})
        user[labels["status"]] = int(float(value))
    return out


class ScrapeDaemon:
    """The Organization served by a daemon (of ``tree``, default this one). It starts
    collecting at once (no latency, no quota, a budget that never binds: only the scrape
    is measured here), so run.py can start it while the budget-bound scenarios, which
    leave the CPU idle, run; measure() waits for every account's first pass, then times
    GET /metrics plain and gzip, and reads the worker's peak RSS."""

    def __init__(self, b: Bench, tree: Path | None = None) -> None:
        self.b = b
        self.fake = org_fake(b, 0.0, 0.0)
        cfg = org_config_dict(self.fake.url, b, NO_BUDGET, tree)
        if tree is not None and not supports_budget(tree):
            del cfg["aws"]["max_requests_per_second"]  # an unknown key there
        self.started = time.time()
        try:
            self.daemon = harness.Daemon(cfg, tree=tree)
        except Exception:
            self.fake.stop()
            raise

    def measure(self) -> dict[str, Any]:
        z, d = self.b.sizes, self.daemon
        waited = wait_collected(d, z.org_accounts, z.timeout)
        plain, plain_size = harness.scrape_times(d.get, z.scrapes, gzip=False)
        gz, gz_size = harness.scrape_times(d.get, z.scrapes, gzip=True)
        body = d.get("/metrics")[1]
        mem = memory(d.worker_pid())
        return {"collect_seconds": last_success(body) - self.started,
                "waited_seconds": waited, "series": series(body),
                "exposition_counts": exposition_counts(body),
                "plain": {"p50": percentile(plain, 50), "p99": percentile(plain, 99),
                          "bytes": plain_size, "n": len(plain)},
                "gzip": {"p50": percentile(gz, 50), "p99": percentile(gz, 99),
                         "bytes": gz_size, "n": len(gz)},
                "worker_peak_rss": mem["VmHWM"], "worker_rss": mem["VmRSS"]}

    def stop(self) -> None:
        try:
            self.daemon.stop()
        finally:
            self.fake.stop()


def scrape_daemon(b: Bench, tree: Path | None = None) -> dict[str, Any]:
    d = ScrapeDaemon(b, tree)
    try:
        return d.measure()
    finally:
        d.stop()


def last_success(body: bytes) -> float:
    """The latest iam_exporter_last_success_timestamp_seconds (unix time)."""
    return max((float(v) for v in _LAST_SUCCESS.findall(body)), default=float("nan"))


def supports_budget(tree: Path) -> bool:
    """Whether the config of the exporter in ``tree`` knows aws.max_requests_per_second."""
    return "max_requests_per_second" in (tree / "exporter" / "config.py").read_text()


def series(body: bytes) -> int:
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


def scenario_scrape(b: Bench) -> None:
    z, s = b.sizes, "4 scrape"
    d = b.background.pop("scrape", None) or ScrapeDaemon(b)
    try:
        r = d.measure()
    finally:
        d.stop()
    got = r.pop("exposition_counts")
    ok = got == org_truth(b)
    users = z.org_accounts * z.org_users
    b.row(s, f"{z.org_accounts} accounts x {z.org_users} users ({users} users) in the "
          f"daemon: iam_user_access_keys exact", f"{ok} ({r['series']} series, collected "
          f"in {secs(r['collect_seconds'])})", "exact", ok)
    for kind, limit in (("gzip", 0.010), ("plain", 0.050)):
        p = r[kind]
        b.row(s, f"GET /metrics p99 {kind}", f"{p['p99'] * 1000:.1f} ms (p50 "
              f"{p['p50'] * 1000:.1f} ms, {p['bytes'] / MB:.1f} MB, n={p['n']})",
              f"<= {limit * 1000:g} ms", p["p99"] <= limit)
    b.row(s, "daemon worker peak RSS", f"{r['worker_peak_rss'] / MB:.0f} MB")
    b.write("scrape", {**r, "exact": ok, "users": users})
