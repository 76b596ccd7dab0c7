"""Scenario 7 (issue 14): the same measurements on an older checkout ("before", e.g. the
commit with the hand-made fast path: ``git worktree add /tmp/before <commit>``) and on
this one ("after"): cycle wall time and CPU at 5,000 users (50 ms latency, concurrency 8,
no throttling, a budget that never binds), scrape p99 at 200 accounts x 250 users, and
peak RSS of the cycle process and of the daemon's worker.

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


def probe(tree: Path, endpoint: str, b: Bench, cycles: int = 2) -> dict[str, Any]:
    """bench/cycle_probe.py on the exporter of ``tree``, in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        r = subprocess.run(
            [sys.executable, "-P", str(PROBE), "--endpoint", endpoint, "--concurrency",
             str(b.sizes.concurrency), "--budget", str(NO_BUDGET), "--cycles", str(cycles),
             "--out", str(out)], cwd=tree, env=subprocess_env({"PYTHONPATH": str(tree)}),
            capture_output=True, text=True, timeout=b.sizes.timeout * cycles)
        if r.returncode != 0:
            raise RuntimeError(f"cycle probe in {tree} failed:\n{r.stderr[-3000:]}")
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
            out[name]["cycle"] = p
            print(f"  {name}: cycles {p['cycles']}", file=sys.stderr)
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
    last = -1  # the steady-state cycle (clients and sessions warm)
    checks = [
        (f"cycle wall, {z.account_users} users, {z.latency_ms:g} ms, concurrency "
         f"{z.concurrency}", lambda x: x["cycle"]["cycles"][last]["seconds"], "{:.1f} s"),
        ("cycle CPU", lambda x: x["cycle"]["cycles"][last]["cpu_seconds"], "{:.1f} s"),
        ("cycle process peak RSS", lambda x: x["cycle"]["peak_rss"] / MB, "{:.0f} MB"),
        (f"scrape p99 plain, {z.org_accounts} x {z.org_users} users",
         lambda x: x["scrape"]["plain"]["p99"] * 1000, "{:.1f} ms"),
        ("scrape p99 gzip", lambda x: x["scrape"]["gzip"]["p99"] * 1000, "{:.1f} ms"),
        ("daemon worker peak RSS", lambda x: x["scrape"]["worker_peak_rss"] / MB,
         "{:.0f} MB"),
    ]
    for check, pick, fmt in checks:
        b.row(S, check, _pair(r, pick, fmt))
    ok = all(r[n][k]["exact"] for n in r for k in ("cycle", "scrape"))
    b.row(S, "cycle counts and daemon exposition: both trees exact", str(ok), "True", ok)
    print(table(["measure", "before", "after"], [
        [c, fmt.format(pick(r["before"])), fmt.format(pick(r["after"]))]
        for c, pick, fmt in checks]))
    b.write("before-after", {"before_tree": str(tree), "after_tree": str(ROOT), **r})
