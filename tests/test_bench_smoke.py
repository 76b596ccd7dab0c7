"""A tiny run of every benchmark scenario, so that `make bench` never rots.

Sizes are tiny and the machine is shared, so the time and throttling targets are not
asserted here: only that every scenario ran, printed its rows with the expected names and
status fields, wrote well-formed results, and collected exact counts (exactness does not
depend on the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, subprocess_env

STATUSES = {"PASS", "FAIL", "SKIP", "INFO"}
# Scenario 7 (before/after) needs another checkout: tested below through its probe.
# scenario → what its checks must include
EXPECTED = {
    "1 full account": ["counts exact", "IAM requests throttled",
                       "cycle time / (requests / budget)"],
    "2 shared quota": ["counts exact", "IAM requests throttled",
                       "cycle time / (requests / quota)"],
    "3 organization": ["counts exact", "cycle time", "CPU seconds", "CPU utilisation",
                       "peak RSS"],
    "4 scrape": ["iam_user_access_keys exact", "GET /metrics p99 gzip",
                 "GET /metrics p99 plain"],
    "5 requests per cycle": ["30 users list last_used=off tags=off: requests = formula",
                             "30 users credential-report, no report yet"],
    "6 throttling storm": ["every cycle exact", "cycle 1:", "cycle 3:"],
    "8 events": ["no poll in between, counts exact", "a full reconcile cycle",
                 "IAM calls per event", "IAM requests per hour", "p99 staleness",
                 "change-to-/metrics latency p99", "a lost event"],
}
# The rows whose target is exactness: PASS even at smoke size, on any machine.
EXACT = ("counts exact", "requests = formula", "iam_user_access_keys exact",
         "every cycle exact", "both trees exact")


def run_smoke(out: Path) -> tuple[list[dict[str, Any]], str]:
    r = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
                       cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== summary" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["smoke"] is True and summary["machine"]["cpus"] >= 1
    return summary["rows"], (out / "summary.md").read_text()


@pytest.mark.e2e
def test_bench_smoke_runs_every_scenario(tmp_path: Path) -> None:
    rows, md = run_smoke(tmp_path)
    assert rows and all(set(row) == {"scenario", "check", "measured", "target", "status"}
                        for row in rows)
    assert {row["status"] for row in rows} <= STATUSES
    # No scenario crashed, and each one reported what it should.
    assert not [row for row in rows if row["check"].startswith("scenario ")], rows
    assert {row["scenario"] for row in rows} == set(EXPECTED)
    for scenario, checks in EXPECTED.items():
        have = [row["check"] for row in rows if row["scenario"] == scenario]
        for check in checks:
            assert any(check in h for h in have), (scenario, check, have)
    wrong = [row for row in rows if row["check"].endswith(EXACT) and row["status"] != "PASS"]
    assert not wrong, wrong
    # Targets are stated where there are any; INFO rows have none to fail.
    assert all(row["target"] != "-" for row in rows if row["status"] in ("PASS", "FAIL"))

    # summary.md: the machine, then one table line per row.
    assert md.startswith("Machine: ") and "(nproc)" in md
    assert md.count("\n| ") == len(rows) + 2  # + the header and the separator

    for name in ("full-account", "shared-quota", "organization", "scrape", "requests",
                 "storm", "events"):
        assert json.loads((tmp_path / f"{name}.json").read_text()), name
    requests = json.loads((tmp_path / "requests.json").read_text())["results"]
    assert all(r["exact"] and r["total"] > 0 for r in requests)
    assert all(r["total"] == r["formula"] for r in requests if "formula" in r)
    org = json.loads((tmp_path / "organization.json").read_text())
    assert org["accounts"] == 4 and org["cpu_seconds"] > 0 and org["peak_rss"] > 0
    scrape = json.loads((tmp_path / "scrape.json").read_text())
    assert scrape["series"] > 2 * scrape["users"]
    assert 0 < scrape["gzip"]["bytes"] < scrape["plain"]["bytes"]
    storm = json.loads((tmp_path / "storm.json").read_text())
    assert len(storm["cycles"]) == 3 and all(c["exact"] for c in storm["cycles"])
    events = json.loads((tmp_path / "events.json").read_text())
    # Every change's event reached /metrics, at most 3 IAM calls each (the fake's count and
    # the daemon's agree), with no poll in between.
    n = len(events["changes"])
    assert len(events["latencies"]) == n > 0
    assert 0 < events["event_requests"] == events["event_requests_daemon"] <= 3 * n
    assert events["reconcile_requests"] == events["reconcile_requests_daemon"] > 0
    assert events["cycles_total"] == 1 and events["exact"]


@pytest.mark.e2e
def test_cycle_probe_times_the_exporter_of_the_given_tree() -> None:
    """The before/after scenario's probe (scenario 7, `--before-tree`), on this tree: it
    imports that tree's exporter, not the installed one, and collects exactly."""
    from bench.fakeiam import Dataset, FakeIam
    from bench.scenarios.before_after import probe
    from bench.scenarios.common import SMOKE, Bench

    b = Bench(SMOKE, Path("/nonexistent"), smoke=True)
    data = Dataset.generate(20)
    with FakeIam(users=20, latency_ms=0) as fake:
        fake.generate_reports()
        result = probe(ROOT, fake.url, b, cycles=2)
    assert result["exporter"].startswith(str(ROOT / "exporter"))
    assert result["counts"] == {data.account_id: data.truth()}
    assert len(result["cycles"]) == 2 and all(c["seconds"] > 0 for c in result["cycles"])
    assert result["peak_rss"] > 10 * 1024 * 1024
