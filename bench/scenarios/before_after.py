"""Scenario 7 (issue 14): the same measurements on an older checkout ("before", e.g. the
commit with the hand-made fast path: ``git worktree add /tmp/before <commit>``) and on
this one ("after"): pass wall time and CPU at 5,000 users (50 ms latency, concurrency 8,
no throttling, a budget that never binds), scrape p99 at 200 accounts x 250 users, and
peak RSS of the pass process and of the daemon's worker. A pass is ``run_once`` on the
continuous core and ``run_cycle`` (a collection cycle) on an older tree: bench/cycle_probe.py
uses whichever the tree has.

    python -m bench.run --only before-after --before-tree /tmp/before
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.fakedata import Dataset
from bench.fakeiam import FakeIam
from bench.harness import ROOT, subprocess_env, table
from bench.scenarios.common import MB, NO_BUDGET, Bench
from bench.scenarios.org import org_truth, scrape_daemon

S = "7 before/after"
PROBE = Path(__file__).resolve().parent.parent / "cycle_probe.py"


def probe(tree: Path, endpoint: str, b: Bench, passes: int = 2) -> dict[str, Any]:
    """bench/cycle_probe.py on the exporter of ``tree``, in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        r = subprocess.run(
            [sys.executable, "-P", str(PROBE), "--endpoint", endpoint, "--concurrency",
             str(b.sizes.concurrency), "--budget", str(NO_BUDGET), "--passes", str(passes),
             "--timeout", str(b.sizes.timeout), "--out", str(out)], cwd=tree,
            env=subprocess_env({"PYTHONPATH": str(tree)}), capture_output=True, text=True,
            timeout=b.sizes.timeout * passes + 60)
        if r.returncode != 0:
            raise RuntimeError(f"pass probe in {tree} failed:\n{r.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
    if not result["exporter"].startswith(str(tree.resolve())):
        raise RuntimeError(f"probe imported {result['exporter']}, not the one in {tree}")
    return result


def measure(b: Bench, trees: dict[str, Path]) -> dict[str, dict[str, Any]]:
    z = b.sizes
    data = Dataset.generate(z.account_users)
    truth = {data.account_id: data.truth()}
    out: dict[str, dict[str, Any]] = {name: {} for name in trees}
    with FakeIam(users=z.account_users, latency_ms=z.latency_ms) as fake:
        fake.generate_reports()
        for name, tree in trees.items():
            p = probe(tree, fake.url, b)
            p["exact"] = p.pop("counts") == truth
            out[name]["pass"] = p
            print(f"  {name} ({p['api']}): passes {p['passes']}", file=sys.stderr)
    org = org_truth(b)
    for name, tree in trees.items():
        s = scrape_daemon(b, tree)
        s["exact"] = s.pop("exposition_counts") == org
        out[name]["scrape"] = s
        print(f"  {name}: scrape p99 plain {s['plain']['p99'] * 1000:.1f} ms", file=sys.stderr)
    return out


def _pair(r: dict[str, dict[str, Any]], pick: Any, fmt: str) -> str:
    before, after = pick(r["before"]), pick(r["after"])
    ratio = f" ({after / before:.2f}x)" if before else ""
    return f"before {fmt.format(before)}, after {fmt.format(after)}{ratio}"


def scenario_before_after(b: Bench) -> None:
    tree = b.before_tree
    if tree is None or not (tree / "exporter").is_dir():
        b.skip(S, "before/after", "no --before-tree (e.g. git worktree add /tmp/before HEAD)")
        return
    z = b.sizes
    r = measure(b, {"before": tree.resolve(), "after": ROOT})
    last = -1  # the steady-state pass (clients and sessions warm)
    checks = [
        (f"pass wall (before: {r['before']['pass']['api']}), {z.account_users} users, "
         f"{z.latency_ms:g} ms, concurrency {z.concurrency}",
         lambda x: x["pass"]["passes"][last]["seconds"], "{:.1f} s"),
        ("pass CPU", lambda x: x["pass"]["passes"][last]["cpu_seconds"], "{:.1f} s"),
        ("pass process peak RSS", lambda x: x["pass"]["peak_rss"] / MB, "{:.0f} MB"),
        (f"scrape p99 plain, {z.org_accounts} x {z.org_users} users",
         lambda x: x["scrape"]["plain"]["p99"] * 1000, "{:.1f} ms"),
        ("scrape p99 gzip", lambda x: x["scrape"]["gzip"]["p99"] * 1000, "{:.1f} ms"),
        ("daemon worker peak RSS", lambda x: x["scrape"]["worker_peak_rss"] / MB,
         "{:.0f} MB"),
    ]
    for check, pick, fmt in checks:
        b.row(S, check, _pair(r, pick, fmt))
    ok = all(r[n][k]["exact"] for n in r for k in ("pass", "scrape"))
    b.row(S, "pass counts and daemon exposition: both trees exact", str(ok), "True", ok)
    print(table(["measure", "before", "after"], [
        [c, fmt.format(pick(r["before"])), fmt.format(pick(r["after"]))]
        for c, pick, fmt in checks]))
    b.write("before-after", {"before_tree": str(tree), "after_tree": str(ROOT), **r})
