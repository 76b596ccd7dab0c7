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

from tests.helpers import ROOT, require_binary, subprocess_env

STATUSES = {"PASS", "FAIL", "SKIP", "INFO"}
# Scenario 7 (before/after) needs another checkout: tested below through its probe.
# scenario → what its checks must include
EXPECTED = {
    "1 full account": ["counts exact", "IAM requests throttled",
                       "pass time / (requests / budget)"],
    "2 shared quota": ["counts exact", "IAM requests throttled",
                       "pass time / (requests / quota)"],
    "3 organization": ["counts exact", "pass time", "CPU seconds", "CPU utilisation",
                       "peak RSS"],
    "4 scrape": ["iam_user_access_keys exact", "GET /metrics p99 gzip",
                 "GET /metrics p99 plain"],
    "5 requests per pass": ["30 users list last_used=off tags=off: requests = formula",
                            "30 users credential-report, no report yet"],
    "6 throttling storm": ["every pass exact", "pass 1:", "pass 3:"],
    "8 events": ["no poll in between, counts exact", "a full reconcile pass",
                 "IAM calls per event", "IAM requests per hour", "p99 staleness",
                 "change-to-/metrics latency p99", "a lost event"],
    "9 continuous": ["every user read once (never_read 0): counts exact",
                     "every user read within 2 x interval",
                     "age of the oldest read", "request rate needed"],
    "10 event during pass": ["change-to-/metrics latency p99",
                             "no change undone, counts exact"],
}
# The rows whose target is exactness: PASS even at smoke size, on any machine.
EXACT = ("counts exact", "requests = formula", "iam_user_access_keys exact",
         "every pass exact", "both trees exact")


def run_smoke(out: Path) -> tuple[list[dict[str, Any]], str]:
    r = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
                       cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                       timeout=420)
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
                 "storm", "events", "continuous"):
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
    assert len(storm["passes"]) == 3 and all(c["exact"] for c in storm["passes"])
    events = json.loads((tmp_path / "events.json").read_text())
    # Every change's event reached /metrics, at most 3 IAM calls each (the fake's count and
    # the daemon's agree), with no poll in between.
    n = len(events["changes"])
    assert len(events["latencies"]) == n > 0
    assert 0 < events["event_requests"] == events["event_requests_daemon"] <= 3 * n
    assert events["reconcile_requests"] == events["reconcile_requests_daemon"] > 0
    assert events["listing_requests_during_changes"] == 0 and events["exact"]
    # 9 and 10: every user read, freshness sampled after the first pass, every change
    # shown and none undone, /metrics == IAM at the end, at the default budget.
    cont = json.loads((tmp_path / "continuous.json").read_text())
    assert cont["budget"] == 10 and cont["users"] == 30
    assert cont["first_pass_seconds"] is not None and cont["exact_first_pass"]
    assert cont["max_age_after_first_pass"] is not None
    assert cont["never_read_after_first_pass"] == 0
    assert len(cont["latencies"]) == len(cont["changes"]) > 0
    assert all(lat < 60 for lat in cont["latencies"])
    assert not cont["undone"] and cont["exact_end"]


@pytest.mark.e2e
def test_cycle_probe_times_the_exporter_of_the_given_tree() -> None:
    """The before/after scenario's probe (scenario 7, `--before-tree`), on this tree: it
    imports that tree's exporter, not the installed one, and collects exactly (passes on
    demand, run_once: this tree has no run_cycle)."""
    from bench.fakeiam import Dataset, FakeIam
    from bench.scenarios.before_after import probe
    from bench.scenarios.common import SMOKE, Bench

    b = Bench(SMOKE, Path("/nonexistent"), smoke=True)
    data = Dataset.generate(20)
    with FakeIam(users=20, latency_ms=0) as fake:
        fake.generate_reports()
        result = probe(ROOT, fake.url, b, passes=2)
    assert result["exporter"].startswith(str(ROOT / "exporter"))
    assert result["api"] == "run_once"
    assert result["counts"] == {data.account_id: data.truth()}
    assert len(result["passes"]) == 2 and all(c["seconds"] > 0 for c in result["passes"])
    assert result["peak_rss"] > 10 * 1024 * 1024


RULES_FILE = ROOT / "deploy" / "prometheus" / "alerts.yaml"


@pytest.mark.e2e
def test_rules_cost_measures_every_rule_of_the_rules_file(tmp_path: Path) -> None:
    """bench/rules_cost.py at a tiny size (50 users, 1 h of history, evaluations every
    second) on the current rules file: one row per rule, each answered, both methods."""
    import yaml

    require_binary("promtool")
    require_binary("prometheus")
    out, md = tmp_path / "rules.json", tmp_path / "rules.md"
    r = subprocess.run([sys.executable, "-m", "bench.rules_cost", "--rules", str(RULES_FILE),
                        "--users", "50", "--hours", "1", "--eval-interval", "1s",
                        "--live-evals", "2", "--scrape-every", "5", "--lookback", "30",
                        "--out", str(out), "--markdown", str(md)],
                       cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    [size] = result["sizes"]
    assert size["users"] == 50 and size["series"] > 100 and size["samples"] > 0
    measured = size["files"]["after"]
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    names = [rule.get("alert") or rule.get("record") for g in groups for rule in g["rules"]]
    assert [row["name"].split("#")[0] for row in measured["rules"]] == names
    for row in measured["rules"]:
        assert "error" not in row["query"], row
        assert row["query"]["eval_seconds"] >= 0 and row["query"]["samples"] >= 0, row
    assert measured["errors"] == [] and measured["query_total"] > 0
    # The backfilled series are all in Prometheus (a rotated key's ended series aside).
    assert 0.9 * size["series"] <= measured["series_in_tsdb"] <= size["series"]
    # Every group was evaluated live, at least once, on fresh data.
    assert set(measured["groups"]) == {g["name"] for g in groups if g["rules"]}
    for group in measured["groups"].values():
        assert group["evaluations"] and group["evaluations"][0]["data_age"] < 300, group
    assert measured["live_steady"] > 0
    # The current state was scraped on top of the history: every line taken, none rejected.
    assert measured["scrape"]["samples"] == measured["scrape"]["served"] > 0
    # The Markdown table: a line per rule and three totals, under a header and separator.
    assert md.read_text().count("\n| ") == len(names) + 3 + 1
    for name in names:
        assert f" {name} " in md.read_text()


def test_rules_cost_bare_strips_only_the_alert_templates(tmp_path: Path) -> None:
    """--bare measures the rules file with no labels or annotations on its alerts: the same
    groups, rules and expressions, nothing templated; its live total gets a row."""
    import yaml

    from bench.rules_file import load_rules, without_templates
    from bench.rules_report import report_rows

    rules = load_rules(RULES_FILE)
    bare = without_templates(rules, tmp_path / "bare.yaml")
    assert [(g, [(r.kind, r.name, r.expr) for r in rs]) for g, rs in bare.groups] == \
        [(g, [(r.kind, r.name, r.expr) for r in rs]) for g, rs in rules.groups]
    raw = [r for g in yaml.safe_load(bare.text)["groups"] for r in g["rules"]]
    assert raw and not [r for r in raw if "labels" in r or "annotations" in r]
    kept = [r for g in yaml.safe_load(rules.text)["groups"] for r in g["rules"]]
    assert [r for r in kept if "record" in r] == [r for r in raw if "record" in r]
    # The report: the bare live total after the three totals of the measured file.
    measured = {"rules": [{"group": "g", "kind": "alert", "name": "A", "query": {},
                           "live_last": 1.0, "alerts": 7}],
                "query_total": 0.5, "live_first": 2.0, "live_steady": 1.5}
    result = {"sizes": [{"users": 10, "files": {"after": measured, "bare": {
        **measured, "live_steady": 0.25}}}]}
    last = report_rows(result)[-1]
    assert "7 active alerts not templated" in last[3] and last[7] == "0.250"


@pytest.mark.e2e
def test_bench_run_only_rules_reports_the_rule_cost(tmp_path: Path) -> None:
    """`make bench BENCH_ARGS="--only rules"` reaches the same measurement (smoke sizes)."""
    require_binary("promtool")
    require_binary("prometheus")
    r = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--only", "rules",
                        "--out", str(tmp_path)], cwd=ROOT, env=subprocess_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((tmp_path / "summary-rules.json").read_text())["rows"]
    checks = [row["check"] for row in rows if row["scenario"] == "11 rule cost"]
    assert len(checks) == len(rows) == 3, rows
    assert {row["status"] for row in rows} <= {"INFO", "PASS"}, rows
    assert json.loads((tmp_path / "rules.json").read_text())["sizes"][0]["users"] == 50
