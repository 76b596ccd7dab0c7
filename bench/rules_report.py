"""The table of a bench/rules_cost.py result: a row per size and rule, then the totals,
printed or as Markdown."""

from __future__ import annotations

import math
from typing import Any


def _s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.3g}x"


def report_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per size and rule of the measured (after) file, then the totals."""
    rows: list[list[str]] = []
    for size in result["sizes"]:
        after, before = size["files"]["after"], size["files"].get("before")
        old = {r["name"]: r for r in before["rules"]} if before else {}
        for r in after["rules"]:
            b = old.get(r["name"])
            bq = b["query"].get("eval_seconds") if b else None
            rows.append([str(size["users"]), r["group"].split(".")[-1], r["kind"], r["name"],
                         str(r["query"].get("series", "-")), _s(r["query"].get("eval_seconds")),
                         str(r["query"].get("samples", "-")), _s(r["live_last"]), _s(bq),
                         _ratio(r["query"].get("eval_seconds"), bq)])
        totals = [("query_total", "all rules, one evaluation (query API, sum)"),
                  ("live_first", "all groups, first evaluation after start (live, sum)"),
                  ("live_steady", "all groups, one evaluation (live, sum, median)")]
        for what, text in totals:
            b = before[what] if before else None
            rows.append([str(size["users"]), "", "", text, "", _s(after[what]) if what ==
                         "query_total" else "", "", "" if what == "query_total" else
                         _s(after[what]), _s(b), _ratio(after[what], b)])
        bare = size["files"].get("bare")
        if bare:
            alerts = sum(r["alerts"] or 0 for r in bare["rules"] if r["kind"] == "alert")
            rows.append([str(size["users"]), "", "", "the same without alert labels and "
                         f"annotations ({alerts} active alerts not templated; live, sum, "
                         "median)", "", "", "", _s(bare["live_steady"]), "", ""])
    return rows


HEADERS = ["users", "group", "kind", "rule", "series", "query s", "samples", "live s",
           "before s", "after/before"]


def markdown(result: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
              for row in report_rows(result)]
    return "\n".join(lines) + "\n"
