"""A tiny run of every benchmark scenario, so that `make bench` never rots.

Sizes are tiny and the machine is shared, so the targets are not asserted here: only that
every scenario ran, printed its rows and wrote well-formed results.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, subprocess_env

STATUSES = {"PASS", "FAIL", "SKIP", "INFO"}


@pytest.mark.e2e
def test_bench_smoke_runs_every_scenario(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
                       cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== summary" in r.stdout

    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = summary["rows"]
    assert summary["smoke"] is True and summary["machine"]["cpus"] >= 1
    assert rows and all(set(row) == {"scenario", "check", "measured", "target", "status"}
                        for row in rows)
    assert {row["status"] for row in rows} <= STATUSES
    # No scenario crashed, and each one reported.
    assert not [row for row in rows if row["check"].startswith("scenario ")], rows
    assert {row["scenario"].split()[0] for row in rows} >= {"1", "2", "3", "4", "5"}

    collection = json.loads((tmp_path / "collection.json").read_text())
    assert collection["exact"] == {"exporter": True, "baseline": True}
    assert collection["median_seconds"]["exporter"] > 0
    assert collection["requests"]["exporter"]["ListAccessKeys"] == collection["users"]

    requests = json.loads((tmp_path / "requests.json").read_text())["results"]
    assert requests and all(r["exact"] and r["total"] > 0 for r in requests)
    # The counts are exact even at smoke size: the formula is the contract.
    assert all(r["total"] == r["formula"] == r["exporter_counted"] for r in requests), [
        (r["combo"], r["total"], r["formula"], r["exporter_counted"]) for r in requests]

    scrape = json.loads((tmp_path / "scrape.json").read_text())["results"]
    for res in scrape:
        assert res["series"] > 2 * res["users"]
        for kind in ("plain", "gzip", "render_on_scrape"):
            assert 0 < res[kind]["p50"] <= res[kind]["p99"]
        assert res["gzip"]["bytes"] < res["plain"]["bytes"]
        assert res["memory"]["worker_hwm"] > 10 * 1024 * 1024

    throttling = json.loads((tmp_path / "throttling.json").read_text())
    assert throttling["unthrottled"]["requests"] > 0
    assert throttling["throttled"] and all(
        {"seconds", "requests", "throttled", "exporter_retries", "exact"} <= set(t)
        for t in throttling["throttled"])
