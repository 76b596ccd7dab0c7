"""Scenario 6: a throttling storm. The budget is above what the quota allows (20/s against
14/s), botocore's standard retry mode, and several passes on demand on one Poller
(``run_once``: its clients, connections and rate state reused, its loops running in
between): every pass must still succeed and be exact. The daemon must never wedge because
IAM pushed back."""

from __future__ import annotations

import sys
from typing import Any

from bench.fakedata import Dataset
from bench.fakeiam import FakeIam
from bench.harness import config_dict, load_config, table
from bench.scenarios.common import Bench, InProcess, exact, pct, secs

S = "6 throttling storm"


def scenario_storm(b: Bench) -> None:
    z = b.sizes
    data = Dataset.generate(z.storm_users)
    truth = {data.account_id: data.truth()}
    passes: list[dict[str, Any]] = []
    with FakeIam(users=z.storm_users, latency_ms=z.latency_ms, quota_rate=z.storm_quota,
                 quota_burst=z.storm_quota) as fake:
        fake.generate_reports()
        with InProcess(load_config(config_dict(
                fake.url, concurrency=z.concurrency,
                aws={"max_requests_per_second": z.storm_budget, "retry_mode": "standard"})),
                z.timeout) as exp:
            for n in range(1, z.storm_passes + 1):
                fake.reset()
                snap, wall, cpu = exp.run_pass()
                st = fake.stats()
                ok, note = exact(snap, truth)
                passes.append({"pass": n, "exact": ok, "note": note, "seconds": wall,
                               "cpu_seconds": cpu, "iam_requests": st["iam_total"],
                               "throttled": st["throttled_total"]})
                print(f"  pass {n}: {note}, {wall:.1f}s, {st['throttled_total']} of "
                      f"{st['iam_total']} throttled", file=sys.stderr)
    print(table(["pass", "exact", "s", "IAM requests", "throttled", "note"], [
        [c["pass"], c["exact"], c["seconds"], c["iam_requests"],
         pct(c["throttled"], c["iam_requests"]), c["note"]] for c in passes]))
    good = sum(c["exact"] for c in passes)
    b.row(S, f"{z.storm_users} users, quota {z.storm_quota:g}/s, budget "
          f"{z.storm_budget:g}/s, standard retries, {z.storm_passes} passes (run_once) on "
          "one Poller: every pass exact", f"{good}/{len(passes)} exact", "all",
          good == len(passes))
    for c in passes:
        floor = c["iam_requests"] / z.storm_quota
        b.row(S, f"pass {c['pass']}: time, throttled",
              f"{secs(c['seconds'])} (quota floor {secs(floor)}), "
              f"{pct(c['throttled'], c['iam_requests'])} of {c['iam_requests']} throttled")
    b.write("storm", {"users": z.storm_users, "quota": z.storm_quota,
                      "budget": z.storm_budget, "passes": passes})
