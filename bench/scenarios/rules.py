"""Scenario 11 (rules): the cost of one evaluation of the alert and recording rules at Organization
scale (bench/rules_cost.py): 5 h of the exporter's series for 10,000 and 50,000 users
backfilled into a real Prometheus, every rule queried (/api/v1/query?stats=all) and the
rules file loaded and evaluated live (prometheus_rule_group_last_duration_seconds).
With --before-rules (or --before-tree: its deploy/prometheus/alerts.yaml), that file too,
on the same data, for a ratio."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.harness import table
from bench.rules_cost import DEFAULT_RULES, Options, measure
from bench.rules_report import HEADERS, report_rows
from bench.scenarios.common import Bench, secs

S = "11 rule cost"
TARGET_USERS = 50000
TARGET_SECONDS = 2.0


def before_rules(b: Bench) -> Path | None:
    if b.before_rules is not None:
        return b.before_rules
    if b.before_tree is not None:
        path = b.before_tree / "deploy" / "prometheus" / "alerts.yaml"
        return path if path.exists() else None
    return None


def _vs(after: float, before: dict[str, Any] | None, key: str) -> str:
    if before is None or not before[key] or math.isnan(after):
        return ""
    return f" (before {secs(before[key])}, {before[key] / after:.1f}x less)"


def scenario_rules(b: Bench) -> None:
    z = b.sizes
    opts = Options(users=list(z.rules_users), hours=z.rules_hours,
                   eval_interval=z.rules_eval_interval, live_evals=z.rules_live_evals,
                   lookback=z.rules_lookback)
    result = measure(DEFAULT_RULES, before_rules(b), opts)
    for size in result["sizes"]:
        users, after = size["users"], size["files"]["after"]
        before = size["files"].get("before")
        target = (f"<= {TARGET_SECONDS:g} s" if users >= TARGET_USERS and not b.smoke
                  else "-")

        def ok(x: float, target: str = target) -> bool | None:
            return None if target == "-" else (not math.isnan(x) and x <= TARGET_SECONDS)

        slow = max(after["rules"], key=lambda r: r["query"].get("eval_seconds", 0.0))
        b.row(S, f"{users} users: all rules, one evaluation (query API)",
              f"{secs(after['query_total'])}{_vs(after['query_total'], before, 'query_total')}"
              f"; slowest {slow['name']} {secs(slow['query'].get('eval_seconds', 0.0))}",
              target, ok(after["query_total"]))
        b.row(S, f"{users} users: all rule groups, one evaluation (live)",
              f"{secs(after['live_steady'])}{_vs(after['live_steady'], before, 'live_steady')}"
              f"; first after a restart {secs(after['live_first'])}",
              target, ok(after["live_steady"]))
        failed = [f"{label}: {name}" for label, f in size["files"].items()
                  for name in f["errors"]]
        b.row(S, f"{users} users: every rule's query answered", ", ".join(failed) or
              f"{len(after['rules'])} rules", "no error", not failed)
    print(table(HEADERS, report_rows(result)))
    b.write("rules", result)
