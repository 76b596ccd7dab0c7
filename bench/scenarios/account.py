"""Scenarios 1 and 2: one full account (5,000 users, the most IAM allows) under IAM's
per-account quota, with the exporter's request budget under it, then above it (the quota
is shared with everything else in the account, so the budget may not be what is free)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from bench.fakedata import Dataset
from bench.fakeiam import FakeIam
from bench.harness import config_dict, load_config
from bench.scenarios.common import Bench, InProcess, exact, has_budget, pct, secs


@dataclass(frozen=True)
class Case:
    scenario: str
    budget: float  # aws.max_requests_per_second
    max_throttled: float  # share of IAM requests
    bound: str  # "budget" | "quota": what the pass time is held against
    factor: float  # pass time <= factor x requests / bound rate


def account_config(url: str, b: Bench, budget: float) -> Any:
    z = b.sizes
    return load_config(config_dict(
        url, concurrency=z.concurrency,
        aws={"max_requests_per_second": budget, "retry_mode": "standard"}))


def run_case(b: Bench, case: Case) -> dict[str, Any]:
    z = b.sizes
    data = Dataset.generate(z.account_users)
    with FakeIam(users=z.account_users, latency_ms=z.latency_ms, quota_rate=z.quota,
                 quota_burst=z.quota) as fake:
        fake.generate_reports()
        with InProcess(account_config(fake.url, b, case.budget), z.timeout) as exp:
            fake.reset()
            snap, wall, cpu = exp.run_pass()
            st = fake.stats()
    ok, note = exact(snap, {data.account_id: data.truth()})
    requests, throttled = st["iam_total"], st["throttled_total"]
    rate = case.budget if case.bound == "budget" else z.quota
    ideal = requests / rate
    result = {"users": z.account_users, "latency_ms": z.latency_ms, "quota": z.quota,
              "budget": case.budget, "seconds": wall, "cpu_seconds": cpu, "exact": ok,
              "note": note, "iam_requests": requests, "throttled": throttled,
              "ideal_seconds": ideal, "by_action": st["requests"],
              "peak_per_second": st["accounts"][data.account_id]["peak_per_second"],
              "budget_module": has_budget()}
    print(f"  {note}; {wall:.1f}s wall, {cpu:.1f}s CPU; {requests} IAM requests, "
          f"{throttled} throttled; peak {result['peak_per_second']}/s", file=sys.stderr)
    _rows(b, case, result)
    return result


def _rows(b: Bench, case: Case, r: dict[str, Any]) -> None:
    z, s = b.sizes, case.scenario
    head = (f"{r['users']} users, {z.latency_ms:g} ms, quota {z.quota:g}/s, "
            f"budget {case.budget:g}/s")
    b.row(s, f"{head}: counts exact", r["note"], "exact", r["exact"])
    share = r["throttled"] / r["iam_requests"] if r["iam_requests"] else 1.0
    b.row(s, "IAM requests throttled", f"{r['throttled']} of {r['iam_requests']} "
          f"({pct(r['throttled'], r['iam_requests'])})",
          f"<= {case.max_throttled * 100:g} %", share <= case.max_throttled)
    ratio = r["seconds"] / r["ideal_seconds"] if r["ideal_seconds"] else float("inf")
    b.row(s, f"pass time / (requests / {case.bound})",
          f"{ratio:.2f}x ({secs(r['seconds'])}; {r['iam_requests']} requests / "
          f"{case.budget if case.bound == 'budget' else z.quota:g}/s = "
          f"{secs(r['ideal_seconds'])})", f"<= {case.factor:g}x", ratio <= case.factor)
    b.row(s, "most IAM requests in one clock second (fake)",
          f"{r['peak_per_second']} (budget {case.budget:g}/s; quota {z.quota:g}/s, "
          f"burst {z.quota:g})")
    b.row(s, "exporter CPU for the pass", secs(r["cpu_seconds"]))
    if not r["budget_module"]:
        b.row(s, "exporter/aws/budget.py", "absent: aws.max_requests_per_second is not "
              "enforced yet")


def scenario_full_account(b: Bench) -> None:
    r = run_case(b, Case("1 full account", b.sizes.budget_under, 0.01, "budget", 1.15))
    b.write("full-account", r)


def scenario_shared_quota(b: Bench) -> None:
    r = run_case(b, Case("2 shared quota", b.sizes.budget_over, 0.05, "quota", 1.5))
    b.write("shared-quota", r)
