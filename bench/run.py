"""`make bench`: every benchmark scenario against the fake IAM endpoint, with PASS/FAIL rows.

    python -m bench.run                 # the full run (a few minutes on 2 cores)
    python -m bench.run --only 1,5      # some scenarios
    python -m bench.run --smoke         # tiny sizes, seconds (tests/test_bench_smoke.py)
    python -m bench.run --only 3 --scrape-sizes 50000   # one size (add --scale for the options)

Scenarios (each prints a table and writes bench/results/<name>.json; summary.json holds
every row):
  1 collection  list strategy, 2,000 users, 20 ms latency, concurrency 16: the exporter's
                cycle against the sequential boto3 loop, alternated; ideal bound
                ceil(users/concurrency) x latency + pages x latency
  2 requests    IAM requests per cycle, both strategies, last-used and tags on/off, at
                100 / 2,000 / 20,000 users: the formula against the fake's count
  3 scrape      p50/p99 of GET /metrics on the running daemon (plain, gzip) at 10,000 and
                50,000 users, against render-on-scrape (prometheus_client) in the same run
  4 memory      peak RSS of the daemon's worker holding 10,000 and 50,000 users
  5 throttling  2,000 users, 20 % of requests throttled: exact counts, time, retries,
                requests against an unthrottled cycle
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from bench import harness  # noqa: E402
from bench.fakeiam import Dataset, FakeIam  # noqa: E402
from bench.harness import config_dict, load_config, median, percentile, table  # noqa: E402

PAGE = 1000  # the exporter's MaxItems


@dataclass
class Sizes:
    s1_users: int = 2000
    s1_latency_ms: float = 20.0
    s1_concurrency: int = 16
    rounds: int = 2
    s2_sizes: tuple[int, ...] = (100, 2000, 20000)
    s2_full_combos_max: int = 2000  # above this size, one list combo (see combos())
    s3_sizes: tuple[int, ...] = (10000, 50000)
    s3_scrapes: int = 200
    s3_baseline_scrapes: int = 20
    scale_users: int = 0  # --scale: the scale options at 10,000 users (2 more minutes)
    s5_users: int = 2000
    s5_latency_ms: float = 20.0
    s5_throttle: float = 0.2
    s5_rounds: int = 2


SMOKE = Sizes(s1_users=30, s1_latency_ms=2.0, s1_concurrency=4, rounds=1, s2_sizes=(30,),
              s3_sizes=(300,), s3_scrapes=20, s3_baseline_scrapes=3, scale_users=300,
              s5_users=30, s5_latency_ms=2.0, s5_rounds=1)


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
    rows: list[Row] = field(default_factory=list)

    def row(self, scenario: str, check: str, measured: str, target: str,
            ok: bool | None) -> bool | None:
        status = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append(Row(scenario, check, measured, target, status))
        return ok

    def write(self, name: str, data: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))


# -- the exporter, in process (its CPU is the bench process's; the fake has its own) -------


class Exporter:
    """The daemon's collection path: config → targets → Poller.run_cycle, clients reused."""

    def __init__(self, cfg: Any) -> None:
        from exporter.aws.session import ApiStats
        from exporter.poller import Poller

        self.cfg = cfg
        self.stats = ApiStats()
        from exporter.aws.accounts import AccountSet

        self.poller = Poller(cfg, AccountSet(cfg, self.stats))  # as the daemon builds it

    def cycle(self) -> tuple[Any, float]:
        t = time.perf_counter()
        snap = self.poller.run_cycle()
        return snap, time.perf_counter() - t

    def iam_calls(self) -> tuple[int, int]:
        """(IAM calls, retries) counted by the exporter itself so far."""
        c = self.stats.counts()
        calls = sum(n for (_, svc, _), n in c.calls.items() if svc == "iam")
        retries = sum(n for (_, svc, _), n in c.retries.items() if svc == "iam")
        return calls, retries


def counts_of(snap: Any) -> tuple[dict[str, dict[str, int]] | None, str | None]:
    st = snap.accounts[0]
    if not st.success or st.inventory is None:
        return None, st.error or "failed"
    return {u.name: {s: u.count(s) for s in ("Active", "Inactive")}
            for u in st.inventory.users}, None


def iam_requests(stats: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in stats["requests"].items() if k != "GetCallerIdentity"}


# -- scenario 1 ---------------------------------------------------------------------------


def baseline_loop(iam: Any) -> dict[str, dict[str, int]]:
    """The straightforward sequential loop: paginate ListUsers, ListAccessKeys per user."""
    out = {}
    for page in iam.get_paginator("list_users").paginate():
        for user in page["Users"]:
            keys = iam.list_access_keys(UserName=user["UserName"])["AccessKeyMetadata"]
            out[user["UserName"]] = {s: sum(1 for k in keys if k["Status"] == s)
                                     for s in ("Active", "Inactive")}
    return out


def scenario_collection(b: Bench) -> None:
    z = b.sizes
    users, lat, conc = z.s1_users, z.s1_latency_ms, z.s1_concurrency
    truth = Dataset.generate(users).truth()
    with FakeIam(users=users, latency_ms=lat) as fake:
        cfg = load_config(config_dict(fake.url, concurrency=conc))
        exp = Exporter(cfg)
        exp.cycle()  # warm-up: account id, clients, connections, credential report
        base = boto3.client("iam", endpoint_url=fake.url)
        base.list_users(MaxItems=1)
        times: dict[str, list[float]] = {"exporter": [], "baseline": []}
        reqs: dict[str, dict[str, int]] = {}
        exact = {"exporter": True, "baseline": True}
        for _ in range(z.rounds):
            for side in ("exporter", "baseline"):
                fake.reset()
                if side == "exporter":
                    snap, secs = exp.cycle()
                    got, err = counts_of(snap)
                else:
                    t = time.perf_counter()
                    got, err = baseline_loop(base), None
                    secs = time.perf_counter() - t
                times[side].append(secs)
                reqs[side] = iam_requests(fake.stats())
                exact[side] &= got == truth
                if err:
                    print(f"  {side} cycle failed: {err}", file=sys.stderr)
    med = {k: median(v) for k, v in times.items()}
    pages = math.ceil(users / PAGE)
    ideal = math.ceil(users / conc) * lat / 1000 + pages * lat / 1000
    speedup = med["baseline"] / med["exporter"]
    of_ideal = med["exporter"] / ideal
    print(table(["side", "median s", "rounds s", "IAM requests", "exact"], [
        [k, med[k], " ".join(f"{x:.2f}" for x in times[k]), sum(reqs[k].values()), exact[k]]
        for k in ("exporter", "baseline")]))
    print(f"ideal bound {ideal:.2f}s = ceil({users}/{conc}) x {lat:g} ms + {pages} page(s) x "
          f"{lat:g} ms; exporter requests {json.dumps(reqs['exporter'], sort_keys=True)}")
    s = "1 collection"
    b.row(s, "exporter counts exact", str(exact["exporter"]), "True", exact["exporter"])
    b.row(s, "speed-up vs sequential boto3", f"{speedup:.1f}x ({med['baseline']:.2f}s / "
          f"{med['exporter']:.2f}s)", ">= 10x", speedup >= 10)
    b.row(s, "exporter / ideal bound", f"{of_ideal:.2f}x ({med['exporter']:.2f}s / "
          f"{ideal:.2f}s)", "<= 1.5x", of_ideal <= 1.5)
    b.write("collection", {"users": users, "latency_ms": lat, "concurrency": conc,
                           "rounds": z.rounds, "seconds": times, "median_seconds": med,
                           "speedup_vs_baseline": speedup, "ideal_seconds": ideal,
                           "exporter_over_ideal": of_ideal, "requests": reqs,
                           "exact": exact})


# -- scenario 2 ---------------------------------------------------------------------------


@dataclass
class Combo:
    strategy: str
    last_used: str | None  # list strategy only
    tags: bool

    @property
    def label(self) -> str:
        lu = f" last_used={self.last_used}" if self.strategy == "list" else ""
        return f"{self.strategy}{lu} tags={'on' if self.tags else 'off'}"

    def config(self, endpoint: str) -> dict[str, Any]:
        coll: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == "list" and self.last_used is not None:
            coll["last_used"] = self.last_used
        extra: dict[str, Any] = {"collection": coll}
        if self.tags:
            extra["metrics"] = {"user_tags": {"Team": "team"}}
        return config_dict(endpoint, **extra)

    def formula(self, users: int, keys: int) -> tuple[int, str]:
        pages = max(1, math.ceil(users / PAGE))
        if self.strategy == "credential-report":
            n, text = 3, "Generate + Get + Summary"
            if self.tags:
                n, text = n + pages, text + f" + {pages} GAAD page(s) for tags"
            return n, text
        # Users come from GetAccountAuthorizationDetails (GAAD) pages whether or not tag
        # labels are wanted: the exemption tag is read on every user.
        n, text = pages + users + 1, f"{pages} GAAD + {users} ListAccessKeys + Summary"
        if self.last_used == "credential-report":
            n, text = n + 2, text + " + Generate + Get"
        elif self.last_used == "api":
            n, text = n + keys, text + f" + {keys} GetAccessKeyLastUsed"
        return n, text


def combos(users: int, full_max: int) -> list[Combo]:
    lst = [Combo("list", lu, tags) for lu in ("off", "credential-report", "api")
           for tags in (False, True)]
    if users > full_max:  # 20,000-user list cycles are CPU-bound here: the fullest only
        lst = [Combo("list", "credential-report", True)]
    return [*lst, Combo("credential-report", None, False),
            Combo("credential-report", None, True)]


def scenario_requests(b: Bench) -> None:
    z = b.sizes
    s = "2 requests"
    results: list[dict[str, Any]] = []
    rows = []
    for users in z.s2_sizes:
        data = Dataset.generate(users)
        truth, keys = data.truth(), data.key_count()
        with FakeIam(users=users, latency_ms=0) as fake:
            # A report exists, as it does from the exporter's previous cycle (AWS keeps
            # one for 4 hours); the cold start is measured separately below.
            boto3.client("iam", endpoint_url=fake.url).generate_credential_report()
            for c in combos(users, z.s2_full_combos_max):
                cfg = load_config(c.config(fake.url))
                exp = Exporter(cfg)
                fake.reset()
                calls0 = exp.iam_calls()[0]
                snap, secs = exp.cycle()
                got, err = counts_of(snap)
                measured = iam_requests(fake.stats())
                total = sum(measured.values())
                expect, text = c.formula(users, keys)
                own = exp.iam_calls()[0] - calls0
                exact = got == truth
                per_user = {op: n for op, n in measured.items()
                            if op in ("ListAccessKeys", "GetAccessKeyLastUsed", "ListUserTags")}
                rows.append([users, c.label, total, expect, own, exact, f"{secs:.2f}",
                             " ".join(f"{k}={v}" for k, v in sorted(measured.items()))])
                results.append({"users": users, "combo": asdict(c), "measured": measured,
                                "total": total, "formula": expect, "formula_text": text,
                                "exporter_counted": own, "exact": exact, "error": err,
                                "seconds": secs})
                b.row(s, f"{users} users {c.label}: requests = formula",
                      f"{total} ({text} = {expect})", "measured == formula",
                      total == expect and exact)
                if c.strategy == "credential-report" and not c.tags:
                    b.row(s, f"{users} users credential-report: requests per cycle",
                          str(total), "<= 5", total <= 5)
                if c.strategy == "list" and c.last_used != "api":
                    b.row(s, f"{users} users {c.label}: calls per user",
                          f"{sum(per_user.values()) / users:.3f}", "1 (ListAccessKeys only)",
                          per_user == {"ListAccessKeys": users})
            if users == z.s2_sizes[0]:
                cold_requests(b, fake, users)
    print(table(["users", "config", "IAM requests", "formula", "exporter counted",
                 "exact", "s", "by action"], rows))
    b.write("requests", {"results": results})


def cold_requests(b: Bench, fake: FakeIam, users: int) -> None:
    """The credential-report strategy's first cycle: the report has to be generated."""
    cfg = load_config(Combo("credential-report", None, False).config(fake.url))
    exp = Exporter(cfg)
    fake.forget_report()
    fake.reset()
    snap, secs = exp.cycle()
    measured = iam_requests(fake.stats())
    total = sum(measured.values())
    print(f"credential-report cold start ({users} users): {total} IAM requests in "
          f"{secs:.2f}s {json.dumps(measured, sort_keys=True)}")
    b.row("2 requests", f"{users} users credential-report, no report yet: requests",
          f"{total} (Generate x2 + Get + Summary = 4)", "<= 5",
          total <= 5 and snap.accounts[0].success)


# -- scenarios 3 and 4 --------------------------------------------------------------------


def run_daemon(fake: FakeIam, extra: dict[str, Any], timeout: float = 600) -> harness.Daemon:
    d = harness.Daemon(config_dict(fake.url, **extra))
    try:
        d.ready_seconds = d.wait_ready(timeout)
    except Exception:
        d.stop()
        raise
    return d


def second_cycle(d: harness.Daemon, timeout: float = 600) -> None:
    os.kill(d.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body, _ = d.get("/metrics")
        for line in body.split(b"\n"):
            if line.startswith(b"iam_exporter_cycles_total ") and float(line.split()[1]) >= 2:
                return
        time.sleep(0.5)
    raise TimeoutError("no second collection cycle")


def series(body: bytes) -> int:
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


def memory(d: harness.Daemon) -> dict[str, int]:
    worker = harness.proc_status(d.worker_pid())
    arbiter = harness.proc_status(d.proc.pid)
    return {"worker_hwm": worker["VmHWM"], "worker_rss": worker["VmRSS"],
            "arbiter_rss": arbiter["VmRSS"], "arbiter_hwm": arbiter["VmHWM"]}


def scenario_scrape(b: Bench) -> None:
    z = b.sizes
    mb = 1024 * 1024
    results = []
    rows = []
    big = max(z.s3_sizes)
    for users in z.s3_sizes:
        with FakeIam(users=users, latency_ms=0) as fake:
            d = run_daemon(fake, {})
            try:
                # A second cycle, as a daemon runs: the memory peak of the steady state
                # (the last cycle's data held while the next is collected and rendered).
                # SIGHUP reloads the config, which starts the next cycle at once.
                second_cycle(d)
                plain, plain_size = harness.scrape_times(d.get, z.s3_scrapes, gzip=False)
                gz, gz_size = harness.scrape_times(d.get, z.s3_scrapes, gzip=True)
                _, body, _ = d.get("/metrics")
                mem = memory(d)
                ready = d.ready_seconds
            finally:
                d.stop()
        n_series = series(body)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "metrics.txt"
            path.write_bytes(body)
            naive = harness.NaiveExporter(path)
            try:
                # Each render-on-scrape costs seconds at 50,000 users: fewer samples.
                n = max(3, z.s3_baseline_scrapes * min(users, 10000) // users)
                base, base_size = harness.scrape_times(naive.get, n, False, warmups=1)
                base_gz, _ = harness.scrape_times(naive.get, max(2, n // 3), True, warmups=0)
            finally:
                naive.stop()
        r = {"users": users, "series": n_series, "ready_seconds": ready,
             "plain": {"p50": percentile(plain, 50), "p99": percentile(plain, 99),
                       "bytes": plain_size, "n": len(plain)},
             "gzip": {"p50": percentile(gz, 50), "p99": percentile(gz, 99),
                      "bytes": gz_size, "n": len(gz)},
             "render_on_scrape": {"p50": percentile(base, 50), "p99": percentile(base, 99),
                                  "bytes": base_size, "n": len(base), "samples": naive.samples},
             "render_on_scrape_gzip": {"p50": percentile(base_gz, 50),
                                       "p99": percentile(base_gz, 99), "n": len(base_gz)},
             "memory": mem}
        results.append(r)
        ms = 1000.0
        rows.append([users, n_series, f"{plain_size / mb:.1f}", f"{gz_size / mb:.2f}",
                     r["plain"]["p50"] * ms, r["plain"]["p99"] * ms, r["gzip"]["p50"] * ms,
                     r["gzip"]["p99"] * ms, r["render_on_scrape"]["p50"] * ms,
                     r["render_on_scrape"]["p99"] * ms,
                     r["render_on_scrape"]["p50"] / r["plain"]["p50"],
                     f"{mem['worker_hwm'] / mb:.0f}", f"{mem['arbiter_rss'] / mb:.0f}",
                     f"{ready:.1f}"])
        limit = 0.010 if users <= 10000 else 0.050
        if b.smoke:
            limit = 0.010
        s3 = "3 scrape"
        for kind in ("plain", "gzip"):
            p99 = r[kind]["p99"]
            b.row(s3, f"{users} users p99 {kind}", f"{p99 * ms:.1f} ms",
                  f"<= {limit * ms:g} ms", p99 <= limit)
        ratio = r["render_on_scrape"]["p50"] / r["plain"]["p50"]
        b.row(s3, f"{users} users render-on-scrape / served (p50)", f"{ratio:.0f}x",
              ">= 20x" if users == big else "-", ratio >= 20 if users == big else None)
        s4 = "4 memory"
        hwm = mem["worker_hwm"]
        b.row(s4, f"{users} users worker peak RSS (VmHWM)", f"{hwm / mb:.0f} MB",
              "<= 150 MB" if users == big else "-", hwm <= 150 * mb if users == big else None)
        b.row(s4, f"{users} users gunicorn arbiter RSS", f"{mem['arbiter_rss'] / mb:.0f} MB",
              "-", None)
    print(table(["users", "series", "plain MB", "gzip MB", "p50 ms", "p99 ms", "gz p50",
                 "gz p99", "render p50", "render p99", "render/served", "worker peak MB",
                 "arbiter MB", "collect s"], rows))
    b.write("scrape", {"results": results})
    if z.scale_users:
        scale_options(b, next((r for r in results if r["users"] == z.scale_users), None))


def scale_options(b: Bench, defaults: dict[str, Any] | None) -> None:
    """metrics.per_key / per_user off and a path filter: series, bytes, p99, peak RSS."""
    users = b.sizes.scale_users
    mb = 1024 * 1024
    variants: list[tuple[str, dict[str, Any]]] = [
        *([] if defaults else [("defaults", {})]),
        ("metrics.per_key: false", {"metrics": {"per_key": False}}),
        ("metrics.per_user: false", {"metrics": {"per_user": False}}),
        ("collection.users.include_paths: [/engineering/]",
         {"collection": {"users": {"include_paths": ["/engineering/"]}}}),
    ]
    rows, results = [], []
    if defaults:  # measured by scenario 3 at this size
        r = {"variant": "defaults", "users": users, "series": defaults["series"],
             "bytes": defaults["plain"]["bytes"], "p99": defaults["plain"]["p99"],
             "worker_hwm": defaults["memory"]["worker_hwm"]}
        results.append(r)
        rows.append(["defaults", r["series"], f"{r['bytes'] / mb:.2f}", r["p99"] * 1000,
                     f"{r['worker_hwm'] / mb:.0f}"])
        b.row("scale", f"{users} users defaults", f"{r['series']} series, "
              f"{r['bytes'] / mb:.2f} MB, peak {r['worker_hwm'] / mb:.0f} MB", "-", None)
    with FakeIam(users=users, latency_ms=0) as fake:
        for label, extra in variants:
            d = run_daemon(fake, extra)
            try:
                times, size = harness.scrape_times(d.get, 50, gzip=False)
                _, body, _ = d.get("/metrics")
                mem = memory(d)
            finally:
                d.stop()
            r = {"variant": label, "users": users, "series": series(body), "bytes": size,
                 "p99": percentile(times, 99), "worker_hwm": mem["worker_hwm"]}
            results.append(r)
            rows.append([label, r["series"], f"{size / mb:.2f}", r["p99"] * 1000,
                         f"{mem['worker_hwm'] / mb:.0f}"])
            b.row("scale", f"{users} users {label}",
                  f"{r['series']} series, {size / mb:.2f} MB, peak {mem['worker_hwm'] / mb:.0f}"
                  " MB", "-", None)
    print(table(["variant", "series", "MB", "p99 ms", "worker peak MB"], rows))
    b.write("scale", {"results": results})


# -- scenario 5 ---------------------------------------------------------------------------


def scenario_throttling(b: Bench) -> None:
    z = b.sizes
    users = z.s5_users
    truth = Dataset.generate(users).truth()
    s = "5 throttling"
    rows, results = [], []
    with FakeIam(users=users, latency_ms=z.s5_latency_ms) as fake:
        cfg = load_config(config_dict(fake.url, concurrency=z.s1_concurrency))
        exp = Exporter(cfg)
        exp.cycle()  # warm-up (account id, report)
        fake.reset()
        snap, clean_secs = exp.cycle()
        clean = fake.stats()["total"]
        rows.append(["0 %", clean_secs, clean, 0, 0, counts_of(snap)[0] == truth, "-"])
        fake.configure(throttle=z.s5_throttle, seed=11)
        for _ in range(z.s5_rounds):
            fake.reset()
            retries0 = exp.iam_calls()[1]
            snap, secs = exp.cycle()
            st = fake.stats()
            got, err = counts_of(snap)
            retries = exp.iam_calls()[1] - retries0
            r = {"seconds": secs, "requests": st["total"], "throttled": st["throttled_total"],
                 "exporter_retries": retries, "exact": got == truth, "error": err,
                 "by_action": st["requests"]}
            results.append(r)
            rows.append([f"{z.s5_throttle:.0%}", secs, st["total"], st["throttled_total"],
                         retries, got == truth, err or "-"])
    print(table(["throttled", "cycle s", "requests", "throttled", "exporter retries",
                 "exact", "error"], rows))
    exact_all = all(r["exact"] for r in results)
    b.row(s, f"{users} users, {z.s5_throttle:.0%} throttled: counts exact",
          f"{sum(r['exact'] for r in results)}/{len(results)} cycles exact", "all", exact_all)
    worst = max(r["requests"] for r in results)
    b.row(s, "requests vs unthrottled cycle", f"{worst / clean:.2f}x ({worst} / {clean})",
          "< 2x", worst < 2 * clean)
    b.row(s, "throttled cycle time", f"{median([r['seconds'] for r in results]):.2f}s "
          f"(unthrottled {clean_secs:.2f}s)", "-", None)
    b.write("throttling", {"users": users, "latency_ms": z.s5_latency_ms,
                           "throttle": z.s5_throttle, "unthrottled": {
                               "seconds": clean_secs, "requests": clean},
                           "throttled": results})


# -- main ---------------------------------------------------------------------------------

SCENARIOS = {"1": ("collection", scenario_collection), "2": ("requests", scenario_requests),
             "3": ("scrape + memory + scale options", scenario_scrape),
             "5": ("throttling", scenario_throttling)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--only", default="1,2,3,5",
                    help="comma-separated scenarios: 1,2,3,5 (3 includes 4 and scale)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--rounds", type=int, help="rounds of scenario 1 (default 2)")
    ap.add_argument("--scrape-sizes", help="users for scenarios 3/4, e.g. 50000")
    ap.add_argument("--scale", action="store_true",
                    help="also measure the scale options at 10,000 users")
    args = ap.parse_args(argv)
    harness.isolate_env()
    sizes = SMOKE if args.smoke else Sizes()
    if args.rounds:
        sizes.rounds = args.rounds
    if args.scrape_sizes:
        sizes.s3_sizes = tuple(int(x) for x in args.scrape_sizes.split(","))
    if args.scale and not args.smoke:
        sizes.scale_users = 10000
    b = Bench(sizes, Path(args.out), args.smoke)
    started = time.monotonic()
    info = harness.machine()
    print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}, Python {info['python']}, "
          f"load average {' '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}")
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    for key in wanted:
        if key == "4":
            key = "3"
        name, fn = SCENARIOS[key]
        print(f"\n== scenario {key}: {name}")
        t = time.monotonic()
        try:
            fn(b)
        except Exception as e:  # one broken scenario must not hide the others' rows
            import traceback

            traceback.print_exc()
            b.row(key, f"scenario {name} ran", f"{type(e).__name__}: {e}"[:120], "no error",
                  False)
        print(f"({time.monotonic() - t:.0f}s)")
    info["loadavg_at_end"] = os.getloadavg()
    info["seconds"] = time.monotonic() - started
    print("\n== summary")
    print(table(["scenario", "check", "measured", "target", "result"],
                [[r.scenario, r.check, r.measured, r.target, r.status] for r in b.rows]))
    failed = [r for r in b.rows if r.status == "FAIL"]
    print(f"\n{len(failed)} FAIL, {sum(r.status == 'PASS' for r in b.rows)} PASS, "
          f"{sum(r.status == 'SKIP' for r in b.rows)} SKIP in {info['seconds']:.0f}s "
          f"(load average at end {' '.join(f'{x:.2f}' for x in info['loadavg_at_end'])})")
    b.write("summary", {"machine": info, "smoke": args.smoke, "sizes": asdict(sizes),
                        "rows": [asdict(r) for r in b.rows]})
    return 1 if failed and not args.smoke else 0


if __name__ == "__main__":
    raise SystemExit(main())
