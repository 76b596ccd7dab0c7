#!/usr/bin/env python3
"""Generates deploy/grafana/iam-key-exporter.json, the Grafana dashboard, with Grafana's
dashboards-as-code library (grafana-foundation-sdk, in the `test` extras of pyproject.toml).

    python3 deploy/grafana/dashboard.py            # rewrite the JSON next to this script
    python3 deploy/grafana/dashboard.py --check    # exit 1 if the JSON is out of date

Every query selects accounts with account_id=~"$account" (where the family has that label)
and uses the $datasource variable, so the dashboard works with any Prometheus data source
and any set of accounts. The output is deterministic (sorted keys, panel ids in layout
order): running this twice gives the same bytes. The tests run every panel query against a
live Prometheus scraping the exporter.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as prom

OUT = Path(__file__).resolve().parent / "iam-key-exporter.json"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
ACCT = 'account_id=~"$account"'
JOB = 'job="iam-key-exporter"'  # families without an account_id label
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

Steps = Sequence[tuple[str, float | None]]
Size = tuple[int, int]  # (width, height) in grid units; the SDK places panels left to right
Target = Builder[Dataquery]


def with_owner(expr: str) -> str:
    """expr (per user or key) with the team and exempt labels of iam_user_info, where known."""
    return (f"{expr} * on (account_id, user_name) group_left (team, exempt) ("
            f"topk by (account_id, user_name) (1, iam_user_info{{{ACCT}}}) "
            f"or on (account_id, user_name) group by (account_id, user_name) "
            f"(iam_user_access_keys{{{ACCT}}}))")


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
           as_table: bool = False) -> prometheus.Dataquery:
    q = (prometheus.Dataquery().datasource(DS).expr(expr).ref_id(ref)
         .legend_format(legend or "__auto"))
    q = q.instant() if instant else q.range()
    return q.format(prom.PromQueryFormat.TABLE) if as_table else q


def thresholds(steps: Steps | None) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for c, v in (steps or [("green", None)])])


def color(mode: dm.FieldColorModeId) -> db.FieldColor:
    return db.FieldColor().mode(mode)


def last_value() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def stat_panel(title: str, desc: str, targets: list[Target], size: Size, unit: str = "none",
               steps: Steps | None = None,
               mappings: list[dm.ValueMapping] | None = None) -> stat.Panel:
    return (stat.Panel().title(title).description(desc).datasource(DS).targets(targets)
            .span(size[0]).height(size[1])
            .unit(unit).mappings(mappings or []).color_scheme(color(dm.FieldColorModeId.THRESHOLDS))
            .thresholds(thresholds(steps)).overrides([])
            .reduce_options(last_value())
            .color_mode(common.BigValueColorMode.BACKGROUND)
            .graph_mode(common.BigValueGraphMode.NONE)
            .text_mode(common.BigValueTextMode.AUTO)
            .justify_mode(common.BigValueJustifyMode.AUTO)
            .orientation(common.VizOrientation.AUTO))


def ts_panel(title: str, desc: str, targets: list[Target], size: Size, unit: str = "none",
             steps: Steps | None = None) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(desc).datasource(DS).targets(targets)
         .span(size[0]).height(size[1])
         .unit(unit).color_scheme(color(dm.FieldColorModeId.PALETTE_CLASSIC))
         .thresholds(thresholds(steps)).overrides([])
         .draw_style(common.GraphDrawStyle.LINE).line_width(1).fill_opacity(10)
         .show_points(common.VisibilityMode.NEVER).span_nulls(False)
         .legend(cb.VizLegendOptions().show_legend(True)
                 .display_mode(common.LegendDisplayMode.TABLE)
                 .placement(common.LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"]))
         .tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                  .sort(common.SortOrder.DESCENDING)))
    if steps:
        p.thresholds_style(cb.GraphThresholdsStyleConfig()
                           .mode(common.GraphThresholdsStyleMode.LINE))
    return p


def duration_column(name: str, warn_days: int,
                    crit_days: int) -> db.DashboardFieldConfigSourceOverrides:
    return (db.DashboardFieldConfigSourceOverrides()
            .matcher(dm.MatcherConfig(id_val="byName", options=name))
            .properties([
                dm.DynamicConfigValue(id_val="unit", value="s"),
                dm.DynamicConfigValue(
                    id_val="custom.cellOptions",
                    value=common.TableColoredBackgroundCellOptions(
                        mode=common.TableCellBackgroundDisplayMode.BASIC)),
                dm.DynamicConfigValue(id_val="thresholds", value=thresholds(
                    [("green", None), ("orange", warn_days * DAY),
                     ("red", crit_days * DAY)]).build()),
            ]))


RENAME = {"account_id": "Account", "user_name": "User", "access_key_id": "Access key",
          "team": "Team", "exempt": "Exempt",
          "Value #A": "Key age", "Value #B": "Since last use (or creation)",
          "Value #C": "Active keys of user"}
HIDDEN = {"Time": True, "job": True, "instance": True, "__name__": True}


def key_table(title: str, desc: str, targets: list[Target], size: Size) -> table.Panel:
    """A table of keys, one row per key, the age and idle columns coloured by CIS limits."""
    return (table.Panel().title(title).description(desc).datasource(DS).targets(targets)
            .span(size[0]).height(size[1])
            .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
            .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                "excludeByName": HIDDEN, "renameByName": RENAME}))
            .align(common.FieldTextAlignment.AUTO).filterable(True)
            .overrides([duration_column("Key age", 60, 90),
                        duration_column("Since last use (or creation)", 30, 45)])
            .show_header(True)
            .sort_by([cb.TableSortByFieldState().display_name("Key age").desc(True)])
            .footer(cb.TableFooterOptions().show(False)))


def overview() -> list[Builder[dm.Panel]]:
    up_down: list[dm.ValueMapping] = [dm.ValueMap(options={
        "0": dm.ValueMappingResult(text="DOWN", color="red", index=0),
        "1": dm.ValueMappingResult(text="UP", color="green", index=1)})]
    return [
        stat_panel("IAM users", "Users in the selected accounts (GetAccountSummary).",
                   [target(f"sum(max by (account_id) (iam_account_users{{{ACCT}}}))", "users")],
                   (4, 4)),
        stat_panel("Users with >1 active key",
                   "Non-exempt users holding more than one active access key (CIS AWS 1.13). "
                   "Exempt users (iam-key-exporter/exempt=true) are not counted.",
                   [target("sum(max by (account_id) "
                           f"(iam_account_users_with_multiple_active_keys{{{ACCT}}})) "
                           "or vector(0)", "users")],
                   (4, 4), steps=[("green", None), ("orange", 1)]),
        stat_panel("Accounts with root keys", "Accounts whose root user has an access key "
                   "(CIS AWS 1.4).",
                   [target(f"sum(max by (account_id) (iam_root_access_keys_present{{{ACCT}}}))"
                           " or vector(0)", "accounts")],
                   (4, 4), steps=[("green", None), ("red", 1)]),
        stat_panel("Oldest active key", "Age of the oldest active access key (CIS AWS 1.14 "
                   "asks for rotation within 90 days).",
                   [target(f"max({KEY_AGE})", "age")], (4, 4), unit="s",
                   steps=[("green", None), ("orange", 60 * DAY), ("red", 90 * DAY)]),
        stat_panel("Exporter", "Scrape status of the exporter targets (lowest of all).",
                   [target(f"min(up{{{JOB}}})", "up")], (4, 4),
                   steps=[("red", None), ("green", 1)], mappings=up_down),
        stat_panel("Accounts failing", "Accounts whose last pass (listing and reads) failed.",
                   [target(f"count(iam_exporter_collection_success{{{ACCT}}} == 0) "
                           "or vector(0)", "accounts")],
                   (4, 4), steps=[("green", None), ("red", 1)]),
    ]


def access_keys() -> list[Builder[dm.Panel]]:
    buckets = [("< 30 days", None, 30), ("30-90 days", 30, 90), ("90-180 days", 90, 180),
               ("180-365 days", 180, 365), ("> 1 year", 365, None)]
    dist: list[Target] = []
    for i, (label, lo, hi) in enumerate(buckets):
        cond = (f" >= {lo * DAY}" if lo else "") + (f" < {hi * DAY}" if hi else "")
        dist.append(target(f"count({KEY_AGE}{cond}) or vector(0)", label,
                           ref=chr(ord("A") + i), instant=True))
    age_dist = (bargauge.Panel().title("Active key age distribution")
                .description("Active access keys by age.").datasource(DS).targets(dist)
                .span(8).height(8).unit("none").min(0)
                .color_scheme(color(dm.FieldColorModeId.THRESHOLDS))
                .thresholds(thresholds([("blue", None)]))
                .orientation(common.VizOrientation.HORIZONTAL)
                .display_mode(common.BarGaugeDisplayMode.BASIC)
                .reduce_options(last_value()).show_unfilled(True))
    for name, fixed in (("90-180 days", "orange"), ("180-365 days", "red"),
                        ("> 1 year", "dark-red")):
        age_dist.override_by_name(name, [dm.DynamicConfigValue(
            id_val="color", value=dm.FieldColor(mode=dm.FieldColorModeId.FIXED,
                                                fixed_color=fixed))])
    return [
        key_table("Users with more than one active key",
                  "Every active key of every user with more than one active key, with the "
                  "user's team and exemption, the key's age and the time since its last use "
                  "(since creation for a never-used key). Exempt users are listed but do not "
                  "alert.",
                  [target(with_owner(f"({KEY_AGE} and on (account_id, user_name) {OFFENDERS})"),
                          ref="A", instant=True, as_table=True),
                   target(with_owner(f"({KEY_IDLE} and on (account_id, user_name) {OFFENDERS})"),
                          ref="B", instant=True, as_table=True),
                   target(with_owner(f"({OFFENDERS} * on (account_id, user_name) group_right () "
                                     f"{KEY_CREATED} ^ 0)"), ref="C", instant=True,
                          as_table=True)],
                  (12, 9)),
        key_table("Oldest active keys",
                  "The 50 oldest active keys: age (CIS AWS 1.14, 90 days) and time since last "
                  "use, or since creation for a never-used key (CIS AWS 1.12, 45 days).",
                  [target(f"topk(50, {KEY_AGE})", ref="A", instant=True, as_table=True),
                   target(f"{KEY_IDLE} and on (account_id, user_name, access_key_id) "
                          f"topk(50, {KEY_AGE})", ref="B", instant=True, as_table=True)],
                  (12, 9)),
        age_dist,
        ts_panel("Active keys and users with >1 active key",
                 "Active access keys and non-exempt users with more than one, per account.",
                 [target(f"sum by (account_id) ({ACTIVE_PER_USER})",
                         "{{account_id}} active keys", "A"),
                  target("max by (account_id) "
                         f"(iam_account_users_with_multiple_active_keys{{{ACCT}}})",
                         "{{account_id}} users with >1", "B")],
                 (16, 8)),
    ]


def exporter() -> list[Builder[dm.Panel]]:
    return [
        ts_panel("Collection duration", "Wall time of the last collection cycle, per account.",
                 [target(f"max by (account_id) "
                         f"(iam_exporter_collection_duration_seconds{{{ACCT}}})",
                         "{{account_id}}")],
                 (8, 8), unit="s"),
        ts_panel("Data age", "Per account: time since the last successful pass "
                 "(IAMExporterDataStale fires above three intervals) and since the least "
                 "recently read user was read (IAMExporterUsersReadLate fires above two "
                 "intervals, for 15 minutes: the request budget cannot read every user once "
                 "per interval).",
                 [target(f"time() - max by (account_id) "
                         f"(iam_exporter_last_success_timestamp_seconds{{{ACCT}}})",
                         "{{account_id}} last pass", "A"),
                  target(f"3 * max(iam_exporter_poll_interval_seconds{{{JOB}}})",
                         "stale threshold", "B"),
                  target(f"time() - min by (account_id) "
                         f"(iam_exporter_oldest_user_read_timestamp_seconds{{{ACCT}}})",
                         "{{account_id}} oldest user read", "C"),
                  target(f"2 * max(iam_exporter_poll_interval_seconds{{{JOB}}})",
                         "read-late threshold", "D")],
                 (8, 8), unit="s"),
        ts_panel("Collection errors", "Failed passes by account and error class, "
                 "and failed AWS API calls by operation and code.",
                 [target(f"sum by (account_id, error) "
                         f"(increase(iam_exporter_collection_errors_total{{{ACCT}}}"
                         "[$__rate_interval]))", "{{account_id}} {{error}}", "A"),
                  target(f"sum by (account_id, operation, code) "
                         f"(increase(iam_exporter_aws_api_errors_total{{{ACCT}}}"
                         "[$__rate_interval]))",
                         "{{account_id}} {{operation}} {{code}}", "B")],
                 (8, 8)),
        ts_panel("AWS API calls", "AWS API calls per second by operation (after botocore's "
                 "retries), and retries.",
                 [target(f"sum by (operation) (rate(iam_exporter_aws_api_calls_total"
                         f"{{{ACCT}}}[$__rate_interval]))", "{{operation}}", "A"),
                  target(f"sum(rate(iam_exporter_aws_api_retries_total{{{ACCT}}}"
                         "[$__rate_interval])) or vector(0)", "retries", "B")],
                 (12, 8), unit="reqps"),
        ts_panel("Collection success", "1 where the last pass over the account succeeded, 0 "
                 "where it failed.",
                 [target(f"min by (account_id) "
                         f"(iam_exporter_collection_success{{{ACCT}}})", "{{account_id}}")],
                 (12, 8), steps=[("red", None), ("green", 1)]),
    ]


def events_and_budget() -> list[Builder[dm.Panel]]:
    """The event path (SQS) and the per-account IAM request budget."""
    events = ts_panel(
        "Events by result", "IAM events read from the queue per second, by result: applied "
        "(the user was re-read), ignored, invalid (left for the dead-letter queue), failed; "
        "and whether the queue can be read (1) or not (0, right axis).",
        [target(f"sum by (result) (rate(iam_exporter_events_total{{{JOB}}}"
                "[$__rate_interval]))", "{{result}}", "A"),
         target(f"min(iam_exporter_events_queue_up{{{JOB}}})", "queue up", "B")],
        (6, 8), unit="eps")
    events.override_by_query("B", [
        dm.DynamicConfigValue(id_val="unit", value="none"),
        dm.DynamicConfigValue(id_val="min", value=0),
        dm.DynamicConfigValue(id_val="max", value=1),
        dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right")])
    return [
        ts_panel("IAM requests/s vs budget", "IAM requests per second per account (every "
                 "IAM call counted) against the account's request budget "
                 "(aws.max_requests_per_second, lowered by the exporter while IAM throttles) "
                 "and the rate reading every user once per interval needs: needed above "
                 "budget, reads fall behind (IAMExporterUsersReadLate).",
                 [target(f"sum by (account_id) (rate(iam_exporter_iam_requests_total"
                         f"{{{ACCT}}}[$__rate_interval]))", "{{account_id}} requests", "A"),
                  target(f"max by (account_id) (iam_exporter_iam_request_budget{{{ACCT}}})",
                         "{{account_id}} budget", "B"),
                  target(f"max by (account_id) "
                         f"(iam_exporter_iam_request_rate_needed{{{ACCT}}})",
                         "{{account_id}} needed", "C")],
                 (6, 8), unit="reqps"),
        ts_panel("IAM throttles/s", "IAM requests throttled per second, by account and "
                 "operation (IAM's quota is shared with everything else in the account).",
                 [target(f"sum by (account_id, operation) (rate("
                         f"iam_exporter_iam_throttles_total{{{ACCT}}}[$__rate_interval]))",
                         "{{account_id}} {{operation}}", "A")],
                 (6, 8), unit="reqps"),
        events,
        ts_panel("Event delay", "Time from an IAM event to its effect on /metrics, for the "
                 "last event applied (highest of the exporter replicas).",
                 [target(f"max(iam_exporter_events_last_applied_delay_seconds{{{JOB}}})",
                         "delay", "A")],
                 (6, 8), unit="s"),
    ]


def build() -> dm.Dashboard:
    account = (db.QueryVariable("account").label("Account").datasource(DS)
               .query({"query": "label_values(iam_account_info, account_id)",
                       "refId": "PrometheusVariableQueryEditor-VariableQuery"})
               .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
               .sort(dm.VariableSort.ALPHABETICAL_ASC)
               .multi(True).include_all(True).regex("").hide(dm.VariableHide.DONT_HIDE))
    dash = (db.Dashboard("IAM access keys").uid("iam-key-exporter")
            .description("AWS IAM access keys from iam-key-exporter: users with more than one "
                         "active key, root keys, key age and last use, and exporter health.")
            .tags(["aws", "iam", "security", "iam-key-exporter"])
            .editable().tooltip(dm.DashboardCursorSync.CROSSHAIR).version(1)
            .time("now-24h", "now").refresh("5m").timezone("browser")
            .link(db.DashboardLink("Runbooks").type(dm.DashboardLinkType.LINK)
                  .target_blank(True)
                  .url("https://github.com/iam-key-exporter/iam-key-exporter/blob/main/"
                       "docs/runbooks.md"))
            .annotation(db.AnnotationQuery().name("Annotations & Alerts").built_in(1)
                        .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                        .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)")
                        .type("dashboard"))
            .with_variable(db.DatasourceVariable("datasource").label("Data source")
                           .type("prometheus").regex("").hide(dm.VariableHide.DONT_HIDE))
            .with_variable(account))
    # Rows stay expanded: their panels follow them at the top level (Grafana's own layout).
    for title, panels in (("Overview", overview()), ("Access keys", access_keys()),
                          ("Exporter", exporter()),
                          ("Events and IAM request budget", events_and_budget())):
        dash.with_row(db.Row(title).collapsed(False))
        for p in panels:
            dash.with_panel(p)
    model = dash.build()
    for i, built in enumerate(model.panels or [], start=1):  # stable ids, in layout order
        built.id_val = i
    return model


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


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
