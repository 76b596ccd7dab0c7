"""A tiny run of the benchmark, so that `make bench` never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_cycle_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "cycle.json"
    r = subprocess.run([sys.executable, "bench/cycle.py", "--users", "12", "--rounds", "1",
                        "--latency-ms", "5", "--concurrency", "4", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "speed-up:" in r.stdout
    data = json.loads(out.read_text())
    assert data["users"] == 12 and data["keys"] == 14  # users 0 and 10 hold two keys
    # One ListAccessKeys per user, nothing else per user.
    assert data["requests"]["exporter"]["ListAccessKeys"] == 12
    assert data["requests"]["exporter"]["ListUsers"] == 1
    assert data["requests_per_user_exporter"] == 1.0
    assert data["median_seconds"]["exporter"] > 0 and data["speedup_vs_baseline"] > 0
