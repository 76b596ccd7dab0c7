"""`make bench`: the benchmark scenarios at the shapes real users have, with PASS/FAIL rows.

    python -m bench.run                  # the full run (about 30 minutes on 2 cores)
    python -m bench.run --quick          # smaller sizes, for development (a few minutes)
    python -m bench.run --smoke          # tiny sizes, seconds (tests/test_bench_smoke.py)
    python -m bench.run --only 1,scrape  # some scenarios, by number or name
    python -m bench.run --only before-after --before-tree /tmp/before
    python -m bench.run --only rules --before-rules /tmp/alerts_before.yaml

An account holds at most 5,000 IAM users; an Organization holds many accounts. The fake
IAM (bench/fakeiam.py, its own process) throttles as IAM does: a token bucket per account.

A pass is a listing, then each user read once: Poller.run_once() asks for one on demand
(the account loops keep running until stop()).

  1 full account        5,000 users, 50 ms, quota 20/s, budget 15/s: exact, <= 1 %
                        throttled, pass <= 1.15 x requests / budget
  2 shared quota        the same with budget 40/s: exact, <= 5 % throttled,
                        pass <= 1.5 x requests / quota
  3 organization        200 accounts x 250 users, 50 ms, quota 20/s each, every account's
                        loop at once, in this process: exact; time, CPU, peak RSS
  4 scrape              the same estate in the daemon: GET /metrics p99 gzip <= 10 ms,
                        plain <= 50 ms
  5 requests per pass   the formula against the fake's count at 500 and 5,000 users
  6 throttling storm    800 users, quota 14/s, budget 20/s, 3 passes on one Poller: all exact
  7 before-after        issue 14's numbers on another checkout and this one (only with
                        --before-tree)
  8 events              40 accounts x 250 users, 100 key changes an hour: polling every
                        5 min vs events (moto SQS) + hourly reconcile, in one daemon: IAM
                        requests per hour >= 10x fewer, p99 staleness >= 50x lower,
                        change-to-/metrics p99 <= 5 s
  9 continuous          one account of 5,000 users in the daemon at the default budget
                        (10/s), interval 300 s, 50 ms, quota 20/s: every user read within
                        2 x interval, exact; the oldest read's age sampled every 30 s stays
                        <= 2 x interval after the first pass (about 10 minutes)
 10 event-during-pass   in the same run, 30 key changes as events (moto SQS) spread over
                        that first pass: change-to-/metrics p99 <= 5 s, none undone by the
                        pass, /metrics == IAM at the end
 11 rules               one evaluation of deploy/prometheus/alerts.yaml on 5 h of history
                        of 10,000 and 50,000 users backfilled into Prometheus (promtool),
                        per rule (query API) and per group (live): <= 2 s at 50,000 users
                        (only with --only rules, about 10 minutes; --before-rules, or
                        --before-tree's rules file, is measured too, for a ratio)

Each scenario writes bench/results/<name>.json; summary.json and summary.md hold every row
and the machine (summary-<names>.* for a subset given with --only). The scrape daemon (4)
collects its Organization in the background while 1 and 2 run (they are paced by the
request budget and leave the CPU idle) and is measured right after them (--no-overlap:
in its turn).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.scenarios import (  # noqa: E402
    account,
    before_after,
    continuous,
    events,
    org,
    requests,
    rules,
    storm,
)
from bench.scenarios.common import FULL, QUICK, SMOKE, Bench, Row, has_budget  # noqa: E402

Scenario = Callable[[Bench], None]
SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "1": ("full-account", account.scenario_full_account),
    "2": ("shared-quota", account.scenario_shared_quota),
    "3": ("organization", org.scenario_organization),
    "4": ("scrape", org.scenario_scrape),
    "5": ("requests", requests.scenario_requests),
    "6": ("storm", storm.scenario_storm),
    "7": ("before-after", before_after.scenario_before_after),
    "8": ("events", events.scenario_events),
    "9": ("continuous", continuous.scenario_continuous),
    "10": ("event-during-pass", continuous.scenario_event_during_pass),
    "11": ("rules", rules.scenario_rules),
}
DEFAULT = "1,2,3,4,5,6,8,9,10"


def wanted(only: str, before_tree: Path | None) -> list[str]:
    by_name = {name: key for key, (name, _) in SCENARIOS.items()}
    keys = [by_name.get(k.strip(), k.strip()) for k in only.split(",") if k.strip()]
    if only == DEFAULT and before_tree is not None:
        keys.append("7")
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: "
                         + ", ".join(f"{k} ({n})" for k, (n, _) in SCENARIOS.items()))
    return keys


def row_order(r: Row) -> tuple[int, str]:
    """Rows by scenario number (10 after 9), then as added."""
    key = r.scenario.split()[0]
    return (int(key) if key.isdigit() else 1000, key)


def plan(b: Bench, keys: list[str], overlap: bool) -> list[str]:
    """The order to run keys in. With overlap, the scrape daemon (4) starts collecting the
    Organization now, while 1 and 2 run (paced by the request budget, they leave the CPU
    nearly idle), and is measured right after them, before anything CPU-bound."""
    if not (overlap and "4" in keys and {"1", "2"} & set(keys)):
        return keys
    b.background["scrape"] = org.ScrapeDaemon(b)
    rest = [k for k in keys if k != "4"]
    last = max(rest.index(k) for k in ("1", "2") if k in rest)
    return [*rest[:last + 1], "4", *rest[last + 1:]]


def run_one(b: Bench, key: str) -> None:
    name, fn = SCENARIOS[key]
    print(f"\n== scenario {key}: {name}", flush=True)
    t = time.monotonic()
    try:
        fn(b)
    except Exception as e:  # one broken scenario must not hide the others' rows
        traceback.print_exc()
        b.row(f"{key} {name}", f"scenario {name} ran", f"{type(e).__name__}: {e}"[:160],
              "no error", False)
    print(f"({time.monotonic() - t:.0f}s)", flush=True)


def _load(avg: object) -> str:
    return " ".join(f"{x:.1f}" for x in avg) if isinstance(avg, tuple | list) else "?"


def summary_md(b: Bench, info: dict[str, object]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        f"Machine: {info['cpus']} CPUs (nproc), {info['cpu_model']}, Python "
        f"{info['python']}; {info['mode']} run of {info['seconds']:.0f} s on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, load average "
        f"{_load(info['loadavg_at_start'])} at the start, {_load(info['loadavg_at_end'])} "
        f"at the end; exporter/aws/budget.py "
        f"{'present' if info['budget_module'] else 'absent'}.", "",
        "| scenario | check | measured | target | status |",
        "| --- | --- | --- | --- | --- |"]
    lines += [f"| {cell(r.scenario)} | {cell(r.check)} | {cell(r.measured)} | "
              f"{cell(r.target)} | {r.status} |" for r in b.rows]
    return "\n".join(lines) + "\n"


def finish(b: Bench, info: dict[str, object], smoke: bool, name: str) -> int:
    print("\n== summary")
    print(harness.table(["scenario", "check", "measured", "target", "result"],
                        [[r.scenario, r.check, r.measured, r.target, r.status]
                         for r in b.rows]))
    counts = {s: sum(r.status == s for r in b.rows) for s in ("FAIL", "PASS", "INFO", "SKIP")}
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f" in {info['seconds']:.0f}s")
    b.write(name, {"machine": info, "smoke": smoke, "sizes": dataclasses.asdict(b.sizes),
                   "rows": [dataclasses.asdict(r) for r in b.rows]})
    (b.out / f"{name}.md").write_text(summary_md(b, info))
    print(f"wrote {b.out / name}.md")
    return 1 if counts["FAIL"] and not smoke else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    mode.add_argument("--quick", action="store_true", help="smaller sizes (development)")
    ap.add_argument("--only", default=DEFAULT,
                    help="scenarios by number or name, comma-separated (default: 1-6, 8-10)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-overlap", action="store_true",
                    help="start the scrape daemon (4) only when its turn comes")
    ap.add_argument("--before-tree", type=Path,
                    help="another checkout, for scenario 7 (before-after) and 11 (rules)")
    ap.add_argument("--before-rules", type=Path,
                    help="another rules file, for scenario 11 (rules): a ratio column")
    args = ap.parse_args(argv)
    harness.isolate_env()
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    b = Bench(dataclasses.replace(sizes), Path(args.out), args.smoke, args.before_tree,
              args.before_rules)
    keys = wanted(args.only, args.before_tree)
    started = time.monotonic()
    info: dict[str, object] = {**harness.machine(), "budget_module": has_budget(),
                               "mode": "smoke" if args.smoke else
                               "quick" if args.quick else "full"}
    print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}, Python {info['python']}; "
          f"exporter/aws/budget.py {'present' if has_budget() else 'ABSENT'}", flush=True)
    try:
        for key in plan(b, keys, not args.no_overlap):
            run_one(b, key)
    finally:
        for leftover in b.background.values():
            leftover.stop()
    b.rows.sort(key=row_order)  # stable: each scenario's own order
    info["loadavg_at_end"] = os.getloadavg()
    info["seconds"] = time.monotonic() - started
    # A subset does not overwrite the summary of the full set.
    default = keys == wanted(DEFAULT, None) or keys == wanted(DEFAULT, args.before_tree)
    name = "summary" if default else "summary-" + "-".join(SCENARIOS[k][0] for k in keys)
    return finish(b, info, args.smoke, name)


if __name__ == "__main__":
    raise SystemExit(main())
