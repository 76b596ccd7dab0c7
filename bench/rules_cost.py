"""The cost of one evaluation of the alert and recording rules at Organization scale.

    python -m bench.rules_cost                                # deploy/prometheus/alerts.yaml
    python -m bench.rules_cost --before /tmp/alerts_before.yaml --users 10000,50000
    python -m bench.rules_cost --users 50 --hours 1 --eval-interval 1s --live-evals 2  # smoke

For each size (--users; 250 users an account, so 50,000 users are 200 accounts) it
generates the exporter's series as Prometheus would have scraped them every 60 s
(--scrape-interval) for the last --hours (5 h: the headline alert reads 4 h of history and
an hour before that), as OpenMetrics text, and backfills it with `promtool tsdb
create-blocks-from openmetrics`, one 2 h-aligned window at a time, caught up to the
present. The families are the ones the rules files name (every `iam_...` name in their
expressions and annotations, plus `up`), with the exporter's label sets (docs/metrics.md):
the same script measures today's rules and a rewrite that reads other families. An HTTP
server in this process serves the same series at their current value (the Prometheus text
format, no timestamps, `up` left to Prometheus), and Prometheus scrapes it every
--scrape-every s (default: the history's step) with honor_labels, the target relabelled
to instance="a:9877": the scraped samples continue the backfilled series, so that, as in
production, the newest samples are in Prometheus' in-memory head and the history in
blocks. No scraped sample may be rejected (out of bounds, out of order, duplicate) and
the first scrape must take every line served, or the run fails. Then, for each rules
file (--before first, if given, then --rules), on that data:

  live   a stock `prometheus` scraping the exporter's stand-in, with the rules file
         loaded, evaluation every --eval-interval: each group's
         `prometheus_rule_group_last_duration_seconds` for its first evaluation after the
         start (the "Prometheus restart" case: alert state restored, recording rules
         without their own history, newest samples possibly still in blocks) and for up
         to --live-evals that start after the first scrape is in the head ("steady": their
         median), and each rule's evaluationTime in the last evaluation (/api/v1/rules),
         alert annotation templates included;
  query  then Prometheus restarted without rules and without the scrape (it replays the
         scraped samples and the rule results from its WAL into its head), and every
         rule's expression queried --repeats times through /api/v1/query?stats=all at the
         start of its group's last counted live evaluation (so recorded series exist
         there, as when Prometheus evaluates the group in order): the median server
         evaluation time, wall time, samples, series returned.

With --bare, --rules is measured once more with no labels or annotations on its alerts:
Prometheus expands every label and annotation of every active alert as a Go template at
each evaluation (even a constant one), so the difference is what templating costs.

At 50,000 users the backfill writes about 15 GB of OpenMetrics (up to 3 files of 5.7 GB
in the temporary directory at once) and takes 3-4 minutes on 2 idle cores; the whole run
(10,000 and 50,000 users, one rules file) about 10 minutes (18 with --before, 24 with
--before and --bare).

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
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import machine, table  # noqa: E402
from bench.rules_estate import JOB, Estate, families  # noqa: E402
from bench.rules_file import RulesFile, load_rules, without_templates  # noqa: E402
from bench.rules_prometheus import Prometheus, parse_time, tool  # noqa: E402
from bench.rules_report import HEADERS, markdown, report_rows  # noqa: E402
from bench.rules_tsdb import Backfill, Exposition  # noqa: E402

DEFAULT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"


# -- one rules file on the data ------------------------------------------------------------


@dataclass
class Options:
    users: list[int]
    per_account: int = 250
    hours: float = 5.0
    step: int = 60
    eval_interval: str = "15s"
    live_evals: int = 4
    scrape_every: int = 0  # the exposition's scrape interval (s); 0: the step
    lookback: int = 300  # Prometheus' --query.lookback-delta (s; its default)
    live_seconds: float = 600.0
    repeats: int = 3
    keep: bool = False
    bare: bool = False

    @property
    def scrape_seconds(self) -> int:
        """How often Prometheus scrapes the current state."""
        return self.scrape_every or self.step


def behind(opts: Options) -> int:
    """How long before the present the backfill stops: the first evaluation still sees it
    (within the lookback), and the evaluations a lookback after it read the head alone."""
    return max(0, opts.lookback - 2 * opts.step)


def watch_live(prom: Prometheus, server: Exposition, rules: RulesFile, last_sample: int,
               opts: Options, log: Callable[[str], None]) -> dict[str, Any]:
    """Each group's first evaluation after the start, then up to opts.live_evals of those
    that start after the target's first scrape is in the head: (start, duration) from
    prometheus_rule_group_last_* (an evaluation longer than the interval counts when it
    ends); then each rule's time in the last one."""
    groups = [g for g, rules_ in rules.groups if rules_]
    evals: dict[str, list[dict[str, Any]]] = {g: [] for g in groups}
    seen: dict[str, float] = {}
    scrape: dict[str, Any] | None = None
    every = opts.scrape_seconds
    deadline = time.monotonic() + opts.live_seconds

    while time.monotonic() < deadline:
        if prom.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{prom.logs()}")
        if scrape is None and (scrape := prom.first_scrape(server.lines_served)) is not None:
            log(f"    first scrape at {scrape['timestamp'] - prom.started:.1f} s after the "
                f"start: {scrape['samples']} samples ({scrape['added']:.0f} new series) in "
                f"{scrape['seconds']:.2f} s, in the head {scrape['seen'] - scrape['timestamp']:.1f}"
                f" s after it began; none rejected")
        for g, (ts, dur) in prom.group_metrics().items():
            if g not in evals or ts <= 0 or seen.get(g) == ts:
                continue
            seen[g] = ts
            first = not evals[g]
            # Steady: the target scraped, and the backfill older than the lookback (as
            # in production, instant selectors read the head alone, not the head merged
            # with a block).
            steady = (not first and scrape is not None and ts > scrape["seen"]
                      and ts > last_sample + opts.lookback
                      and len(evals[g]) <= opts.live_evals)
            if first or steady:
                # The newest sample at the start: a scrape's, or the backfill's.
                newest = (scrape["timestamp"] + (ts - scrape["timestamp"]) // every * every
                          if scrape is not None and ts >= scrape["timestamp"] else last_sample)
                evals[g].append({"timestamp": ts, "seconds": dur, "data_age": ts - newest,
                                 "first": first})
                n = "first evaluation" if first else f"evaluation {len(evals[g]) - 1}"
                log(f"    {g}: {n} took {dur:.3f} s (newest sample {ts - newest:.0f} s old"
                    f"{', in the head' if steady else ''})")
        if scrape is not None and all(len(evals[g]) > opts.live_evals for g in groups):
            break
        time.sleep(0.25)
    if scrape is None:
        raise RuntimeError(f"no scrape in {opts.live_seconds:g} s:\n"
                           f"{prom.http('/api/v1/targets').decode()[:2000]}\n{prom.logs()}")
    scrape["rejected_live"] = prom.check_rejected("live")
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
            "rules": per_rule, "group_start": group_start, "scrape": scrape}


def summarize_groups(live: dict[str, Any]) -> dict[str, Any]:
    first = steady = 0.0
    for info in live["groups"].values():
        durations = [e["seconds"] for e in info["evaluations"] if not e["first"]]
        info["first"] = next((e["seconds"] for e in info["evaluations"] if e["first"]),
                             math.nan)
        info["steady"] = statistics.median(durations) if durations else math.nan
        first += info["first"]
        steady += info["steady"]
    return {"first": first, "steady": steady}


def measure_file(back: Backfill, server: Exposition, rules: RulesFile, opts: Options,
                 label: str, log: Callable[[str], None]) -> dict[str, Any]:
    copy = back.work / f"rules-{label}.yaml"
    copy.write_text(rules.text)
    back.reset_head()
    t = time.perf_counter()
    back.to_now(behind(opts))
    log(f"  caught up to the present in {time.perf_counter() - t:.1f} s; starting prometheus")
    every = opts.scrape_seconds
    prom = Prometheus(back.work, back.data, copy, opts.eval_interval, server.target, every,
                      opts.lookback)
    try:
        ready = prom.wait_ready()
        log(f"  prometheus ready in {ready:.1f} s (newest sample "
            f"{time.time() - back.last:.0f} s old), scraping every {every} s; "
            f"live evaluations of {label}")
        live = watch_live(prom, server, rules, back.last, opts, log)
        totals = summarize_groups(live)
        peak_rss = prom.rss()
        # Then the same data without rules and without the scrape, so that nothing runs
        # beside the queries (they read the instant of the last live evaluation; the WAL
        # replays it into the head). A reload would wait for a running evaluation
        # (minutes for a slow file); SIGKILL loses nothing committed.
        prom.stop(kill=True)
        prom = Prometheus(back.work, back.data, None, opts.eval_interval, None, every,
                          opts.lookback)
        prom.wait_ready()
        rows: list[dict[str, Any]] = []
        for group, group_rules in rules.groups:
            counted = live["groups"].get(group, {}).get("evaluations", [])
            # At the start of the group's last counted evaluation: its recording
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
        return {"rules_file": str(rules.path), "rules": rows, "scrape": live["scrape"],
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
        back.to_now(behind(opts))
        prep = time.perf_counter() - t
        log(f"  backfilled {back.samples} samples ({back.bytes / 1e9:.2f} GB of OpenMetrics, "
            f"{back.chunks} files) in {prep:.0f} s (writing {back.seconds['write']:.0f} s, "
            f"promtool {back.seconds['promtool']:.0f} s)")
        t = time.perf_counter()
        server = Exposition(fams, opts.step)
        log(f"  serving {server.body()[1]} series at {server.target} (rendered in "
            f"{time.perf_counter() - t:.1f} s, {len(server.body()[0]) / 1e6:.1f} MB)")
        try:
            results = {label: measure_file(back, server, f, opts, label, log)
                       for label, f in files}
        finally:
            server.stop()
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
    with tempfile.TemporaryDirectory(prefix="iamx-rules-bare-") as tmp:
        if opts.bare:
            files.append(("bare", without_templates(files[-1][1], Path(tmp) / "bare.yaml")))
        started = time.perf_counter()
        info = machine()
        sizes = [measure_size(n, files, opts, log) for n in opts.users]
    info["loadavg_at_end"] = os.getloadavg()
    return {"machine": info, "options": dataclasses.asdict(opts),
            "rules": {label: str(f.path) for label, f in files}, "sizes": sizes,
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rules", type=Path, default=DEFAULT_RULES,
                    help="the rules file to measure (default deploy/prometheus/alerts.yaml)")
    ap.add_argument("--before", type=Path, help="another rules file, for a ratio column")
    ap.add_argument("--users", default="10000,50000", help="sizes, comma-separated")
    ap.add_argument("--users-per-account", type=int, default=250)
    ap.add_argument("--hours", type=float, default=5.0, help="history (default 5)")
    ap.add_argument("--scrape-interval", type=int, default=60,
                    help="the history's step, seconds (default 60)")
    ap.add_argument("--scrape-every", type=int, default=0,
                    help="Prometheus' scrape interval of the current state, seconds "
                         "(default: --scrape-interval; shorter for a quick run)")
    ap.add_argument("--lookback", type=int, default=300,
                    help="Prometheus' --query.lookback-delta, seconds (default 300, its "
                         "default): the backfill stops that long, less two steps, before "
                         "the start, and evaluations count from a lookback after it")
    ap.add_argument("--eval-interval", default="15s", help="Prometheus evaluation_interval")
    ap.add_argument("--live-evals", type=int, default=4,
                    help="evaluations per group to count, after the first one, among "
                         "those starting after the first scrape is in the head (default 4)")
    ap.add_argument("--live-seconds", type=float, default=600.0,
                    help="at most this long per rules file and size (live phase)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="queries per rule, the median counts (default 3)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rules.json")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument("--bare", action="store_true",
                    help="also measure --rules with no labels or annotations on its alerts "
                         "(the live cost without alert templating)")
    args = ap.parse_args(argv)
    opts = Options(users=[int(x) for x in args.users.split(",") if x.strip()],
                   per_account=args.users_per_account, hours=args.hours,
                   step=args.scrape_interval, scrape_every=args.scrape_every,
                   eval_interval=args.eval_interval,
                   live_evals=args.live_evals, live_seconds=args.live_seconds,
                   repeats=args.repeats, keep=args.keep, lookback=args.lookback,
                   bare=args.bare)

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
