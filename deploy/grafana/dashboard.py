#!/usr/bin/env python3
"""Generates deploy/grafana/iam-key-exporter.json, the Grafana dashboard (stdlib only).

    python3 deploy/grafana/dashboard.py            # rewrite the JSON next to this script
    python3 deploy/grafana/dashboard.py --check    # exit 1 if the JSON is out of date

Every query selects accounts with account_id=~"$account" and uses the $datasource
variable, so the dashboard works with any Prometheus data source and any set of accounts.
The tests run every panel query against a live Prometheus scraping the exporter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "iam-key-exporter.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
ACCT = 'account_id=~"$account"'
DAY = 86400

# Building blocks (PromQL). max by (...) collapses exporter replicas into one series.
ACTIVE_PER_USER = ("max by (account_id, user_name) "
                   f'(iam_user_access_keys{{status="Active", {ACCT}}})')
KEY_CREATED = (f"max by (account_id, user_name, access_key_id) "
               f'(iam_access_key_created_timestamp_seconds{{status="Active", {ACCT}}})')
KEY_LAST_USED = (f"max by (account_id, user_name, access_key_id) "
                 f'(iam_access_key_last_used_timestamp_seconds{{status="Active", {ACCT}}})')
KEY_AGE = f"(time() - {KEY_CREATED})"
KEY_IDLE = f"(time() - ({KEY_LAST_USED} or {KEY_CREATED}))"
OFFENDERS = f"({ACTIVE_PER_USER} > 1)"


def with_owner(expr: str) -> str:
    """expr (per user or key) with the team and exempt labels of iam_user_info, where known."""
    return (f"{expr} * on (account_id, user_name) group_left (team, exempt) ("
            f"topk by (account_id, user_name) (1, iam_user_info{{{ACCT}}}) "
            f"or on (account_id, user_name) group by (account_id, user_name) "
            f"(iam_user_access_keys{{{ACCT}}}))")


class Ids:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


ids = Ids()


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
           table: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "refId": ref,
                         "legendFormat": legend or "__auto", "range": not instant,
                         "instant": instant}
    if table:
        t["format"] = "table"
    return t


def stat(title: str, desc: str, targets: list[dict[str, Any]], pos: tuple[int, int, int, int],
         unit: str = "none", steps: list[tuple[str, float | None]] | None = None,
         mappings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    x, y, w, h = pos
    return {
        "id": ids.next(), "type": "stat", "title": title, "description": desc,
        "datasource": DS, "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
        "fieldConfig": {"defaults": {
            "unit": unit, "mappings": mappings or [],
            "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute", "steps": [
                {"color": c, "value": v} for c, v in (steps or [("green", None)])]},
        }, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "auto",
                    "justifyMode": "auto", "orientation": "auto"},
    }


def timeseries(title: str, desc: str, targets: list[dict[str, Any]],
               pos: tuple[int, int, int, int], unit: str = "none",
               steps: list[tuple[str, float | None]] | None = None) -> dict[str, Any]:
    x, y, w, h = pos
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False}
    if steps:
        custom["thresholdsStyle"] = {"mode": "line"}
    return {
        "id": ids.next(), "type": "timeseries", "title": title, "description": desc,
        "datasource": DS, "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
        "fieldConfig": {"defaults": {
            "unit": unit, "custom": custom, "color": {"mode": "palette-classic"},
            "thresholds": {"mode": "absolute", "steps": [
                {"color": c, "value": v} for c, v in (steps or [("green", None)])]},
        }, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def table(title: str, desc: str, targets: list[dict[str, Any]], pos: tuple[int, int, int, int],
          rename: dict[str, str], overrides: list[dict[str, Any]],
          sort: str) -> dict[str, Any]:
    x, y, w, h = pos
    return {
        "id": ids.next(), "type": "table", "title": title, "description": desc,
        "datasource": DS, "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "job": True, "instance": True,
                                  "__name__": True},
                "renameByName": rename}},
        ],
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "filterable": True}},
                        "overrides": overrides},
        "options": {"showHeader": True, "sortBy": [{"displayName": sort, "desc": True}],
                    "footer": {"show": False}},
    }


def duration_column(name: str, warn_days: int, crit_days: int) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name}, "properties": [
        {"id": "unit", "value": "s"},
        {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}},
        {"id": "thresholds", "value": {"mode": "absolute", "steps": [
            {"color": "green", "value": None},
            {"color": "orange", "value": warn_days * DAY},
            {"color": "red", "value": crit_days * DAY}]}},
    ]}


def row(title: str, y: int) -> dict[str, Any]:
    return {"id": ids.next(), "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def panels() -> list[dict[str, Any]]:
    health_map = [{"type": "value", "options": {
        "0": {"text": "DOWN", "color": "red", "index": 0},
        "1": {"text": "UP", "color": "green", "index": 1}}}]
    ps: list[dict[str, Any]] = [row("Overview", 0)]
    ps += [
        stat("IAM users", "Users in the selected accounts (GetAccountSummary).",
             [target(f"sum(max by (account_id) (iam_account_users{{{ACCT}}}))", "users")],
             (0, 1, 4, 4)),
        stat("Users with >1 active key",
             "Non-exempt users holding more than one active access key (CIS AWS 1.13). "
             "Exempt users (iam-key-exporter/exempt=true) are not counted.",
             [target("sum(max by (account_id) "
                     f"(iam_account_users_with_multiple_active_keys{{{ACCT}}})) or vector(0)",
                     "users")],
             (4, 1, 4, 4), steps=[("green", None), ("orange", 1)]),
        stat("Accounts with root keys", "Accounts whose root user has an access key "
             "(CIS AWS 1.4).",
             [target(f"sum(max by (account_id) (iam_root_access_keys_present{{{ACCT}}})) "
                     "or vector(0)", "accounts")],
             (8, 1, 4, 4), steps=[("green", None), ("red", 1)]),
        stat("Oldest active key", "Age of the oldest active access key (CIS AWS 1.14 asks "
             "for rotation within 90 days).",
             [target(f"max({KEY_AGE})", "age")], (12, 1, 4, 4), unit="s",
             steps=[("green", None), ("orange", 60 * DAY), ("red", 90 * DAY)]),
        stat("Exporter", "Scrape status of the exporter targets (lowest of all).",
             [target('min(up{job="iam-key-exporter"})', "up")], (16, 1, 4, 4),
             steps=[("red", None), ("green", 1)], mappings=health_map),
        stat("Accounts failing", "Accounts whose last collection cycle failed.",
             [target(f"count(iam_exporter_collection_success{{{ACCT}}} == 0) or vector(0)",
                     "accounts")],
             (20, 1, 4, 4), steps=[("green", None), ("red", 1)]),
    ]
    ps.append(row("Access keys", 5))
    rename = {"account_id": "Account", "user_name": "User", "access_key_id": "Access key",
              "team": "Team", "exempt": "Exempt",
              "Value #A": "Key age", "Value #B": "Since last use (or creation)",
              "Value #C": "Active keys of user"}
    ps += [
        table("Users with more than one active key",
              "Every active key of every user with more than one active key, with the "
              "user's team and exemption, the key's age and the time since its last use "
              "(since creation for a never-used key). Exempt users are listed but do not "
              "alert.",
              [target(with_owner(f"({KEY_AGE} and on (account_id, user_name) {OFFENDERS})"),
                      ref="A", instant=True, table=True),
               target(with_owner(f"({KEY_IDLE} and on (account_id, user_name) {OFFENDERS})"),
                      ref="B", instant=True, table=True),
               target(with_owner(f"({OFFENDERS} * on (account_id, user_name) group_right () "
                                 f"{KEY_CREATED} ^ 0)"), ref="C", instant=True, table=True)],
              (0, 6, 12, 9), rename,
              [duration_column("Key age", 60, 90),
               duration_column("Since last use (or creation)", 30, 45)], "Key age"),
        table("Oldest active keys",
              "The 50 oldest active keys: age (CIS AWS 1.14, 90 days) and time since last "
              "use, or since creation for a never-used key (CIS AWS 1.12, 45 days).",
              [target(f"topk(50, {KEY_AGE})", ref="A", instant=True, table=True),
               target(f"{KEY_IDLE} and on (account_id, user_name, access_key_id) "
                      f"topk(50, {KEY_AGE})", ref="B", instant=True, table=True)],
              (12, 6, 12, 9), rename,
              [duration_column("Key age", 60, 90),
               duration_column("Since last use (or creation)", 30, 45)], "Key age"),
    ]
    buckets = [("< 30 days", None, 30), ("30-90 days", 30, 90), ("90-180 days", 90, 180),
               ("180-365 days", 180, 365), ("> 1 year", 365, None)]
    dist = []
    for i, (label, lo, hi) in enumerate(buckets):
        cond = (f" >= {lo * DAY}" if lo else "") + (f" < {hi * DAY}" if hi else "")
        expr = f"count({KEY_AGE}{cond}) or vector(0)"
        dist.append(target(expr, label, ref=chr(ord("A") + i), instant=True))
    ps += [
        {"id": ids.next(), "type": "bargauge", "title": "Active key age distribution",
         "description": "Active access keys by age.", "datasource": DS,
         "gridPos": {"x": 0, "y": 15, "w": 8, "h": 8}, "targets": dist,
         "fieldConfig": {"defaults": {"unit": "none", "min": 0, "color": {"mode": "thresholds"},
                                      "thresholds": {"mode": "absolute", "steps": [
                                          {"color": "blue", "value": None}]}},
                         "overrides": [
                             {"matcher": {"id": "byName", "options": n}, "properties": [
                                 {"id": "color", "value": {"mode": "fixed", "fixedColor": c}}]}
                             for n, c in (("90-180 days", "orange"), ("180-365 days", "red"),
                                          ("> 1 year", "dark-red"))]},
         "options": {"orientation": "horizontal", "displayMode": "basic",
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                       "values": False}, "showUnfilled": True}},
        timeseries("Active keys and users with >1 active key",
                   "Active access keys and non-exempt users with more than one, per account.",
                   [target(f"sum by (account_id) ({ACTIVE_PER_USER})",
                           "{{account_id}} active keys", "A"),
                    target("max by (account_id) "
                           f"(iam_account_users_with_multiple_active_keys{{{ACCT}}})",
                           "{{account_id}} users with >1", "B")],
                   (8, 15, 16, 8)),
    ]
    ps.append(row("Exporter", 23))
    ps += [
        timeseries("Collection duration", "Wall time of the last collection cycle, per "
                   "account.",
                   [target(f"max by (account_id) "
                           f"(iam_exporter_collection_duration_seconds{{{ACCT}}})",
                           "{{account_id}}")],
                   (0, 24, 8, 8), unit="s"),
        timeseries("Data age", "Time since the last successful collection, per account; "
                   "IAMExporterDataStale fires above three poll intervals.",
                   [target(f"time() - max by (account_id) "
                           f"(iam_exporter_last_success_timestamp_seconds{{{ACCT}}})",
                           "{{account_id}}", "A"),
                    target('3 * max(iam_exporter_poll_interval_seconds{job="iam-key-exporter"})',
                           "stale threshold", "B")],
                   (8, 24, 8, 8), unit="s"),
        timeseries("Collection errors", "Failed collection cycles by account and error "
                   "class, and failed AWS API calls by operation and code.",
                   [target(f"sum by (account_id, error) "
                           f"(increase(iam_exporter_collection_errors_total{{{ACCT}}}"
                           "[$__rate_interval]))", "{{account_id}} {{error}}", "A"),
                    target(f"sum by (account_id, operation, code) "
                           f"(increase(iam_exporter_aws_api_errors_total{{{ACCT}}}"
                           "[$__rate_interval]))",
                           "{{account_id}} {{operation}} {{code}}", "B")],
                   (16, 24, 8, 8)),
        timeseries("AWS API calls", "AWS API calls per second by operation (after "
                   "botocore's retries), and retries.",
                   [target(f"sum by (operation) (rate(iam_exporter_aws_api_calls_total"
                           f"{{{ACCT}}}[$__rate_interval]))", "{{operation}}", "A"),
                    target(f"sum(rate(iam_exporter_aws_api_retries_total{{{ACCT}}}"
                           "[$__rate_interval])) or vector(0)", "retries", "B")],
                   (0, 32, 12, 8), unit="reqps"),
        timeseries("Collection success", "1 where the last cycle for the account "
                   "succeeded, 0 where it failed.",
                   [target(f"min by (account_id) "
                           f"(iam_exporter_collection_success{{{ACCT}}})", "{{account_id}}")],
                   (12, 32, 12, 8), steps=[("red", None), ("green", 1)]),
    ]
    return ps


def dashboard() -> dict[str, Any]:
    return {
        "uid": "iam-key-exporter",
        "title": "IAM access keys",
        "description": "AWS IAM access keys from iam-key-exporter: users with more than one "
                       "active key, root keys, key age and last use, and exporter health.",
        "tags": ["aws", "iam", "security", "iam-key-exporter"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "5m",
        "timezone": "browser",
        "links": [{"title": "Runbooks", "type": "link", "targetBlank": True,
                   "url": "https://github.com/iam-key-exporter/iam-key-exporter/blob/main/"
                          "docs/runbooks.md"}],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
             "includeAll": False, "multi": False, "options": [], "regex": ""},
            {"name": "account", "label": "Account", "type": "query", "datasource": DS,
             "definition": "label_values(iam_account_info, account_id)",
             "query": {"query": "label_values(iam_account_info, account_id)",
                       "refId": "PrometheusVariableQueryEditor-VariableQuery"},
             "refresh": 2, "multi": True, "includeAll": True, "current": {},
             "options": [], "regex": "", "sort": 1, "hide": 0},
        ]},
        "panels": panels(),
    }


def render() -> str:
    global ids
    ids = Ids()
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
