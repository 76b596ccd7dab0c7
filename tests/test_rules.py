"""The alert rules, their promtool unit tests, the runbooks and the Alertmanager example.

promtool and amtool are the real binaries (Debian packages prometheus and
prometheus-alertmanager). The rules' unit tests live in tests/rules/*.yaml; this module runs
them, checks that they cover every alert both firing and not firing, and checks that they
have teeth: each of a few plausible bugs in the rules makes them fail. The rules file holds
recording rules (level:metric:operations) and alerts over the recorded series; the checks
below keep the alerts short and the rules cheap at 50,000 users: each per-user or per-key
family is read a fixed number of times, only by the rules that filter it down to the users
and keys that can alert, and never over a range (the gap bridge of those sets reads their
own value of the previous evaluation); no subqueries, no range longer than the 20-minute
bridge.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, require_binary

RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
SCRAPE_EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.yaml"))
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = ("https://github.com/iam-key-exporter/iam-key-exporter/blob/main/"
                "docs/runbooks.md#")
ALERT_NAMES = {
    "IAMUserMultipleActiveAccessKeys", "IAMRootAccessKeyPresent", "IAMAccessKeyNotRotated",
    "IAMAccessKeyUnused", "IAMExporterCollectionFailing", "IAMExporterDataStale",
    "IAMExporterDown", "IAMExporterAbsent", "IAMExporterEventsQueueFailing",
    "IAMExporterEventsDeadLettered", "IAMExporterInventoryWithdrawn", "IAMExporterUsersUnread",
    "IAMExporterUsersReadLate",
}
COMPLIANCE = {
    "IAMUserMultipleActiveAccessKeys": "CIS AWS 1.13",
    "IAMRootAccessKeyPresent": "CIS AWS 1.4",
    "IAMAccessKeyNotRotated": "CIS AWS 1.14",
    "IAMAccessKeyUnused": "CIS AWS 1.12",
}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def records() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"]: r for g in doc["groups"] for r in g["rules"] if "record" in r}


def all_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def rule_files() -> list[Path]:
    """Every Prometheus rules file under deploy/prometheus (files with `groups:`)."""
    files = [p for p in sorted((ROOT / "deploy" / "prometheus").glob("*.y*ml"))
             if "groups" in (yaml.safe_load(p.read_text()) or {})]
    assert RULES in files
    return files


def github_anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).lower())
            out.add(text.replace(" ", "-"))
    return out


# --- promtool ------------------------------------------------------------------------


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_rules_file_passes_promtool_check(path: Path) -> None:
    r = run(require_binary("promtool"), "check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in r.stdout


def test_scrape_example_is_valid_and_loads_the_rules() -> None:
    r = run(require_binary("promtool"), "check", "config", str(SCRAPE_EXAMPLE))
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load(SCRAPE_EXAMPLE.read_text())
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["iam-key-exporter"]
    assert cfg["rule_files"] == ["alerts.yaml"]


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    r = run(require_binary("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULE_TESTS), r.stdout


def test_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../../deploy/prometheus/alerts.yaml"], path
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
                for exp in case.get("exp_alerts") or []:
                    # Expectations name the labels and annotations in full.
                    assert exp.get("exp_annotations"), (path, case)
                    assert {"severity", "compliance"} <= set(exp["exp_labels"]), (path, case)
    assert firing == ALERT_NAMES, ALERT_NAMES - firing
    assert silent == ALERT_NAMES, ALERT_NAMES - silent


# The unit tests must catch a broken rule. Each mutation is a plausible bug (every
# occurrence of the text is replaced; `count` says how many there are); the named
# unit-test file must fail against the mutated rules.
MULTI = "account_user:iam_user_access_keys_active:multiple"
USER_SEEN = "account_user:iam_user_access_keys_active:last_seen"
NOT_ROTATED = "account_user_key:iam_access_key_created_timestamp_seconds_active:not_rotated"
UNUSED = "account_user_key:iam_access_key_last_used_timestamp_seconds_active:unused"
KEY_SEEN = "account_user_key:iam_access_key_created_timestamp_seconds_active:last_seen"
MULTI_KEYS = "account_user_key:iam_access_key_created_timestamp_seconds_active:multiple"
USER_INFO = "account_user:iam_user_info:offenders"
ACCOUNT_INFO = "account:iam_account_info:bridged"
ACCOUNT_SEEN = "account:iam_user_access_keys_active:seen"
OVERLAP = "account_user:iam_user_access_keys_active:overlap_start"
ACCOUNT_COUNT = "account:iam_account_users_with_multiple_active_keys:max_bridged"
ACCOUNT_OVERLAP = "account:iam_account_users_with_multiple_active_keys:overlap_start"
COMPLETE = "account:iam_exporter_last_used_complete:max_over_time20m"


def block(*rows: tuple[int, str]) -> str:
    """Lines of the rules file: (indentation, text) each, every line ending in a newline."""
    return "".join(" " * n + text + "\n" for n, text in rows)


MUTATIONS: list[tuple[str, str, str, str] | tuple[str, str, str, str, int]] = [
    # The headline alert.
    ("exempt users alert", f'{USER_INFO}{{exempt="true"}}', f'{USER_INFO}{{exempt="yes"}}',
     "multiple_keys.yaml"),
    ("status filter dropped (inactive keys count)", 'iam_user_access_keys{status="Active"}',
     "iam_user_access_keys", "multiple_keys.yaml"),
    ("per-account alert duplicates per-user ones",
     f"\n                unless on (account_id) {MULTI}\n", "\n", "multiple_keys.yaml"),
    ("grace period too short", "> 4 * 3600", "> 3 * 3600", "multiple_keys.yaml"),
    ("headline resolves late again (keep_firing_for)", "        for: 2m\n",
     "        for: 2m\n        keep_firing_for: 15m\n", "multiple_keys_bridge.yaml"),
    ("grace period in for: again", "for: 2m\n", "for: 4h\n", "multiple_keys.yaml"),
    # The carried start of an overlap.
    ("overlap start not carried (a replaced key restarts the grace period)",
     block((14, OVERLAP), (12, "or on (account_id, user_name)")), "",
     "multiple_keys_gaps.yaml"),
    ("a new overlap in a watched account dated from the keys' creation (a reactivated key "
     "counts from its creation)",
     block((14, f"({MULTI} * 0 + time() and on (account_id) {ACCOUNT_SEEN})"),
           (12, "or on (account_id, user_name)")), "", "multiple_keys_gaps.yaml"),
    ("creation times ignored at first sight (old keys wait for the grace period)",
     block((12, "or on (account_id, user_name)"),
           (14, f"clamp_max(max by (account_id, user_name) ({MULTI_KEYS}), time() - 1)")), "",
     "multiple_keys_gaps.yaml"),
    ("blind without metrics.per_key (no first sight from the count)",
     block((12, "or on (account_id, user_name)"), (14, f"{MULTI} * 0 + time() - 1")), "",
     "multiple_keys.yaml"),
    ("first sight dated at the evaluation, not before it", "time() - 1", "time()",
     "multiple_keys.yaml", 4),
    ("per-account overlap start not carried",
     block((14, f"clamp_max({ACCOUNT_OVERLAP}, time())"),
           (12, "or on (account_id)")), "", "multiple_keys_gaps.yaml"),
    ("per-account: no +Inf while no user has two keys (the overlap dated too early)",
     block((12, "or on (account_id)"), (10, f"{ACCOUNT_COUNT} * 0 + Inf")), "",
     "multiple_keys_gaps.yaml"),
    # The carried per-user count.
    ("a user gone from a served account stays firing for 20 minutes",
     f"{MULTI} unless on (account_id) iam_account_watched_users", MULTI,
     "multiple_keys_bridge.yaml"),
    ("an unread user resolves at once",
     block((20, "or on (account_id, user_name)"),
           (22, f"{MULTI} and on (account_id, user_name) iam_user_unread")), "",
     "multiple_keys_bridge.yaml"),
    ("a carried count refreshes its own last sight (carried for ever)",
     f'time() + 0 * {MULTI}{{carried=""}}', f"time() + 0 * {MULTI}",
     "multiple_keys_bridge.yaml"),
    # The joins.
    ("exemption and team forgotten in a gap",
     block((14, "or on (account_id, user_name)"), (16, USER_INFO)), "",
     "multiple_keys_gaps.yaml"),
    ("team label lost in a gap (a new alert)",
     block((14, "or on (account_id, user_name)"), (16, USER_INFO)), "",
     "multiple_keys_bridge.yaml"),
    ("unguarded team join",
     block((12, "or on (account_id, user_name)"),
           (10, f"group by (account_id, user_name) ({MULTI})")), "", "multiple_keys.yaml"),
    ("account name lost in a gap (a new alert)",
     block((12, "or on (account_id)"),
           (10, "topk by (account_id) (1, max without (instance, pod) "
                "(last_over_time(iam_account_info[20m])))")), "",
     "multiple_keys_bridge.yaml"),
    ("unguarded account join",
     f"\n            or on (account_id) group by (account_id) ({MULTI})", "",
     "multiple_keys.yaml"),
    # Key age and last use.
    ("inactive keys age", 'iam_access_key_created_timestamp_seconds{status="Active"}',
     "iam_access_key_created_timestamp_seconds", "key_age.yaml", 3),
    ("never-used keys ignored", f"{COMPLETE} == 1", f"{COMPLETE} == 2", "key_age.yaml"),
    ("unknown last use taken as never used", f"{COMPLETE} == 1", f"{COMPLETE} >= 0",
     "key_age.yaml"),
    ("one pass of incomplete last-used data resolves a never-used key",
     "max_over_time(iam_exporter_last_used_complete[20m])",
     "last_over_time(iam_exporter_last_used_complete[20m])", "key_age.yaml"),
    ("a never-used key carried after its account's data turned incomplete",
     block((24, "unless on (account_id)"), (26, f"{COMPLETE} == 0,")),
     block((24, ",")), "key_age.yaml"),
    ("wrong unused threshold", ") < time() - 45 * 86400", ") < time() - 50 * 86400",
     "key_age.yaml"),
    ("wrong rotation threshold", "} < time() - 90 * 86400", "} < time() - 120 * 86400",
     "key_age.yaml"),
    # The exporter's health.
    ("stale threshold", "3 * job:iam_exporter_poll_interval_seconds:max_bridged",
     "30 * job:iam_exporter_poll_interval_seconds:max_bridged", "exporter_health.yaml"),
    ("read-late threshold", "2 * job:iam_exporter_poll_interval_seconds:max_bridged",
     "4 * job:iam_exporter_poll_interval_seconds:max_bridged", "degraded.yaml"),
    ("down targets of other jobs counted", 'up{job="iam-key-exporter"} == 0)',
     "up == 0)", "exporter_health.yaml"),
    ("withdrawn inventory held after the account recovers",
     block((12, "unless on (account_id)"), (14, "iam_exporter_collection_success")), "",
     "degraded.yaml"),
    ("a user read again held for 20 minutes",
     block((14, "max by (account_id, user_name, reason) (last_over_time(iam_user_unread[20m]))"),
           (12, "unless on (account_id)"), (14, "iam_account_watched_users")),
     block((14, "max by (account_id, user_name, reason) (last_over_time(iam_user_unread[20m]))")),
     "degraded.yaml"),
    ("shards merged (one shard's queue hides another's)",
     "(iam_exporter_events_queue_up * on (job, instance) group_left (shard_index) "
     "iam_exporter_shard_info)", "(iam_exporter_events_queue_up)", "events.yaml"),
]
# The same, within one rule's expression (an alert or a recording rule), every occurrence
# there; "for" changes the alert's for: to the given duration instead.
RULE_MUTATIONS: list[tuple[str, str, str, str, str]] = [
    ("root key ignored", "IAMRootAccessKeyPresent", "max_bridged > 0)", "max_bridged > 1)",
     "key_age.yaml"),
    ("failing account missed", "IAMExporterCollectionFailing", "== 0)", "< 0)",
     "exporter_health.yaml"),
    ("withdrawn inventory missed", "IAMExporterInventoryWithdrawn", "== 1)", "== 2)",
     "degraded.yaml"),
    ("unread users missed", "IAMExporterUsersUnread", "== 1)", "== 2)", "degraded.yaml"),
    ("users read late alert too soon", "IAMExporterUsersReadLate", "for", "5m",
     "degraded.yaml"),
    ("a late replica hidden by a fresh one",
     "job_account:iam_exporter_oldest_user_read_timestamp_seconds:min_bridged", "min without",
     "max without", "degraded.yaml"),
    ("events queue failure missed", "IAMExporterEventsQueueFailing", "== 0", "< 0",
     "events.yaml"),
    ("one dead-lettered message ignored", "IAMExporterEventsDeadLettered", "> 0", "> 1",
     "events.yaml"),
    # The carried sets: a key's last sight refreshed by its carried value, the key list of
    # a user carried while the user is served (a replaced key listed), or never (the list
    # lost in a gap).
    ("a carried key refreshes its own last sight (carried for ever)", KEY_SEEN,
     '{carried=""}', "", "key_age.yaml"),
    ("a replaced key stays in the key list", MULTI_KEYS, '{carried="true"}', "",
     "multiple_keys_gaps.yaml"),
    ("the key list lost in a gap", MULTI_KEYS, '{carried="true"}', '{carried="never"}',
     "multiple_keys_gaps.yaml"),
]
# keep_firing_for only where the data itself flaps while the problem persists (a target
# answering for a moment, one good pass or receive between failures); every other alert
# bridges gaps from the data and resolves as soon as the data says so.
KEEP_FIRING_FOR = {"IAMExporterCollectionFailing": "15m", "IAMExporterDown": "15m",
                   "IAMExporterAbsent": "15m", "IAMExporterEventsQueueFailing": "15m"}
# Every recording rule that reads the last 20 minutes of an input per account, job or
# shard (or of iam_user_unread, a few users), and the unit tests that fail without it.
BRIDGED = {
    "account_user:iam_user_unread:max_bridged": "degraded.yaml",
    "account:iam_root_access_keys_present:max_bridged": "key_age.yaml",
    ACCOUNT_COUNT: "multiple_keys_restart.yaml",
    COMPLETE: "key_age.yaml",
    "job_account:iam_exporter_collection_success:min_bridged": "exporter_health.yaml",
    "job_account:iam_exporter_last_success_timestamp_seconds:max_bridged":
        "exporter_health.yaml",
    "job_account:iam_exporter_oldest_user_read_timestamp_seconds:min_bridged": "degraded.yaml",
    "job_account:iam_exporter_inventory_withdrawn:max_bridged": "degraded.yaml",
    "job:iam_exporter_poll_interval_seconds:max_bridged": "exporter_health.yaml",
    "job_shard:iam_exporter_events_queue_up:min_bridged": "events.yaml",
    "job_shard:iam_exporter_events_dead_letter_messages:max_bridged": "events.yaml",
    ACCOUNT_INFO: "multiple_keys_bridge.yaml",
}
# Every filtered set carried across a gap by reading its own value of the previous
# evaluation (for `20 * 60` after its last sight), and the unit tests that fail when it is
# not carried.
CARRIED = {MULTI: "multiple_keys_bridge.yaml", NOT_ROTATED: "key_age.yaml",
           UNUSED: "key_age.yaml"}
# The families with a series per user or per key, and how often the rules may read each
# (every read of one costs about as much at 50,000 users as all the rest together):
# iam_user_access_keys for :multiple; the creation times for :not_rotated, :unused (keys
# never used) and the key list of :multiple; the last use for :unused; iam_user_info for
# the team of the users in those sets (its exempt="true" rows are a few).
PER_USER_READS = {"iam_user_access_keys": 1, "iam_access_key_created_timestamp_seconds": 3,
                  "iam_access_key_last_used_timestamp_seconds": 1, "iam_user_info": 1}
# The rules that read them, and the recorded series they may join them with (small sets).
FILTERS = {MULTI, NOT_ROTATED, UNUSED, MULTI_KEYS, USER_INFO}
# A comparison with a threshold: the filter of a per-user or per-key family.
FILTER = r"[<>] (1|time\(\) - \d+ \* 86400)"
# The carried state a rule reads from the previous evaluation, recorded after it.
PREVIOUS = {MULTI: {USER_SEEN}, NOT_ROTATED: {KEY_SEEN}, UNUSED: {KEY_SEEN},
            OVERLAP: {ACCOUNT_SEEN}}


def fails_the_unit_tests(tmp_path: Path, rules: str, test_files: list[str]) -> None:
    """`rules` is still a valid rules file, and promtool fails the named unit tests on it."""
    (tmp_path / "deploy" / "prometheus").mkdir(parents=True)
    (tmp_path / "deploy" / "prometheus" / "alerts.yaml").write_text(rules)
    (tmp_path / "tests" / "rules").mkdir(parents=True)
    for name in test_files:
        shutil.copy(ROOT / "tests" / "rules" / name, tmp_path / "tests" / "rules")
    promtool = require_binary("promtool")
    check = run(promtool, "check", "rules", "deploy/prometheus/alerts.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr  # still a valid rule
    r = run(promtool, "test", "rules", *(f"tests/rules/{n}" for n in test_files), cwd=tmp_path)
    assert r.returncode != 0, f"unit tests still pass with the bug:\n{r.stdout}"
    assert "FAILED" in r.stdout + r.stderr


def with_rule_changed(name: str, change: Any) -> str:
    """The rules file (re-dumped) with change(rule) applied to the alert or record `name`."""
    doc = yaml.safe_load(RULES.read_text())
    [rule] = [r for g in doc["groups"] for r in g["rules"]
              if name in (r.get("alert"), r.get("record"))]
    change(rule)
    return yaml.safe_dump(doc, sort_keys=False)


def unit_tests_of(name: str) -> list[str]:
    return [p.name for p in RULE_TESTS if f"alertname: {name}\n" in p.read_text()]


@pytest.mark.parametrize("mutation", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path, mutation: tuple[Any, ...]) -> None:
    old, new, test_file, count = (*mutation, 1)[:4]
    text = RULES.read_text()
    assert text.count(old) == count, f"mutation target not found {count} times: {old!r}"
    fails_the_unit_tests(tmp_path, text.replace(old, new), [test_file])


@pytest.mark.parametrize("mutation", [m[1:] for m in RULE_MUTATIONS],
                         ids=[m[0] for m in RULE_MUTATIONS])
def test_a_broken_alert_fails_the_unit_tests(tmp_path: Path,
                                             mutation: tuple[str, str, str, str]) -> None:
    name, old, new, test_file = mutation

    def change(rule: dict[str, Any]) -> None:
        if old == "for":  # the for: period itself
            rule["for"] = new
            return
        # Compare without indentation: the rule's expr as PromQL tokens on one line each.
        expr = re.sub(r"\n\s+", "\n    ", rule["expr"])
        assert old in expr, (name, old)
        rule["expr"] = expr.replace(old, new)

    fails_the_unit_tests(tmp_path, with_rule_changed(name, change), [test_file])


@pytest.mark.parametrize("name", sorted(KEEP_FIRING_FOR))
def test_every_keep_firing_for_is_needed(tmp_path: Path, name: str) -> None:
    """Without keep_firing_for, each alert that has one resolves and notifies again when
    its data flaps (a target answering for a moment, one good pass) in its unit tests."""
    rules = with_rule_changed(name, lambda rule: rule.pop("keep_firing_for"))
    fails_the_unit_tests(tmp_path, rules, unit_tests_of(name))


def test_every_20_minute_window_has_a_story() -> None:
    windowed = {name for name, r in records().items() if "[20m]" in r["expr"]}
    assert windowed == set(BRIDGED)
    carried = {name for name, r in records().items() if "20 * 60" in r["expr"]}
    assert carried == set(CARRIED)


@pytest.mark.parametrize("name", sorted(CARRIED))
def test_every_carried_set_is_needed(tmp_path: Path, name: str) -> None:
    """Carried for 0 minutes instead of 20, each filtered set makes a unit test fail: an
    alert resolves (or restarts its `for:`, or its grace period) in a scrape gap."""
    def change(rule: dict[str, Any]) -> None:
        assert rule["expr"].count("20 * 60") == 1
        rule["expr"] = rule["expr"].replace("20 * 60", "0 * 60")

    fails_the_unit_tests(tmp_path, with_rule_changed(name, change), [CARRIED[name]])


@pytest.mark.parametrize("name", sorted(BRIDGED))
def test_every_bridge_is_needed(tmp_path: Path, name: str) -> None:
    """Without its 20-minute window (cut to 1 minute), each recording rule makes a unit
    test fail: an alert resolves (or restarts its `for:`, or its grace period) in a scrape
    gap, keep_firing_for or not."""
    def change(rule: dict[str, Any]) -> None:
        rule["expr"] = rule["expr"].replace("[20m]", "[1m]")

    fails_the_unit_tests(tmp_path, with_rule_changed(name, change), [BRIDGED[name]])


def test_an_invalid_rule_fails_promtool_check(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yaml"
    broken.write_text(RULES.read_text().replace("== 0", "=== 0", 1))
    r = run(require_binary("promtool"), "check", "rules", str(broken))
    assert r.returncode != 0
    assert "FAILED" in r.stdout + r.stderr


# --- rule content --------------------------------------------------------------------


def test_alert_names_are_the_contract() -> None:
    assert set(alerts()) == ALERT_NAMES


@pytest.mark.parametrize("name", sorted(ALERT_NAMES))
def test_every_alert_has_severity_compliance_and_a_runbook(name: str) -> None:
    rule = alerts()[name]
    labels, annotations = rule["labels"], rule["annotations"]
    assert labels["severity"] in {"critical", "warning", "info"}
    assert labels["compliance"].startswith("CIS AWS 1.")
    if name in COMPLIANCE:
        assert labels["compliance"] == COMPLIANCE[name]
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), key
    assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower()
    assert name.lower() in github_anchors(RUNBOOKS.read_text())
    assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]


RANGE = re.compile(r"\[(\d+[smhd])(?::(\d*[smhd]?))?\]")
RECORDED_NAME = re.compile(r"\b([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b")
LEVELS = ("account_user_key", "account_user", "account", "job_account", "job_shard", "job")


@pytest.mark.parametrize("name", sorted(ALERT_NAMES))
def test_alerts_read_recorded_series_and_never_write_the_bridge(name: str) -> None:
    """Every alert on the exporter's series reads recorded series only (the bridge, the
    joins and the carried state are recording rules): no range or subquery in an alert
    expression, none in an annotation but the errors of the last hour; keep_firing_for is
    left where the data flaps, so that the headline alert resolves at the first evaluation
    after the exporter serves the fix."""
    rule = alerts()[name]
    assert rule.get("keep_firing_for") == KEEP_FIRING_FOR.get(name)
    assert not RANGE.findall(rule["expr"]), name
    assert {w for text in rule["annotations"].values() for w in RANGE.findall(text)} <= {
        ("1h", "")}, name
    selectors = set(re.findall(r"([a-z_:][a-z0-9_:]*)\s*(?:\{|\)|$|\s)", rule["expr"]))
    raw = {s for s in selectors if s.startswith("iam_")}
    assert not raw, (name, raw)
    if name in {"IAMExporterDown", "IAMExporterAbsent"}:
        assert not RECORDED_NAME.findall(rule["expr"])
    else:
        assert set(RECORDED_NAME.findall(rule["expr"])) <= set(records()), name


def test_rules_are_cheap_no_subqueries_and_no_range_beyond_the_bridge() -> None:
    """The cost of an evaluation grows with the number of series, not with series times the
    grace period: no subquery anywhere, no range longer than the 20-minute bridge."""
    for rule in all_rules():
        texts = [rule["expr"], *rule.get("annotations", {}).values()]
        windows = {w for text in texts for w in RANGE.findall(text)}
        assert all(not step for _, step in windows), (rule.get("alert") or rule["record"])
        allowed = {("20m", "")} if "record" in rule else {("1h", "")}
        assert windows <= allowed, (rule.get("alert") or rule["record"], windows)


def selectors(expr: str, name: str) -> list[tuple[str, str, str]]:
    """Each selector of the metric `name` in expr (not a quoted name, as label_replace
    reads `__name__`): its matchers, `[` if a range follows, and the text after it."""
    return [(m.group(1) or "", m.group(2) or "", expr[m.end():]) for m in re.finditer(
        rf"(?<![\w:\"]){name}(?![\w:\"])(\{{[^}}]*\}})?(\s*\[)?", expr)]


def test_no_range_read_of_a_per_user_or_per_key_series() -> None:
    """At 50,000 users a range read of a per-user or per-key family costs as much as a
    whole evaluation should: the gap bridge of the filtered sets reads their own value of
    the previous evaluation (an instant selector), never a range, and no recorded per-user
    or per-key series is read over a range either."""
    per_user = [*PER_USER_READS, *(n for n in records() if n.startswith("account_user"))]
    for rule in all_rules():
        texts = [rule["expr"], *rule.get("annotations", {}).values()]
        for name in per_user:
            for text in texts:
                assert not [s for s in selectors(text, name) if s[1]], (
                    rule.get("alert") or rule["record"], name)


def test_every_rule_over_all_users_is_a_filter() -> None:
    """Each per-user or per-key family is read a fixed number of times in all the rules
    (PER_USER_READS), only by the rules that filter it (FILTERS), each read combined at
    once with a small recorded set (`or on` / `and on` a carried set, or :multiple) - no
    aggregation, join or recorded series over all users - and each of those rules records
    a filtered set: a comparison with a threshold, or a join with :multiple (the users in
    the sets)."""
    reads = dict.fromkeys(PER_USER_READS, 0)
    for rule in all_rules():
        name = rule.get("alert") or rule["record"]
        expr = re.sub(r"\s+", " ", rule["expr"])
        for family in PER_USER_READS:
            for matchers, _, after in selectors(expr, family):
                if family == "iam_user_info" and matchers == '{exempt="true"}':
                    continue  # a few users: selected by the index
                reads[family] += 1
                assert name in FILTERS, (name, family)
                after = re.sub(rf"^ {FILTER} ", " ", after).lstrip(" )")
                assert after.startswith(("or on (", "and on (")), (name, family, after[:40])
        if name in FILTERS:
            # The filter last (or a label set on the few series it leaves), the filter right
            # on the read (before the join with the carried set), or the join with :multiple.
            expr = re.sub(r', "never_used", "true", "__name__", "[a-z_]+"\)\s*\)\s*$', ")", expr)
            assert (re.search(rf"\) {FILTER}\s*\)\s*$", expr)
                    or re.search(rf"\}} {FILTER} or on \(", expr)
                    or re.search(rf"and on \(account_id, user_name\) \(? ?{MULTI}\b", expr)), name
    assert reads == PER_USER_READS


def test_recording_rules_are_named_level_metric_operations_and_documented() -> None:
    doc = (ROOT / "docs" / "alerts.md").read_text()
    for name in records():
        level, metric, operations = name.split(":")
        assert level in LEVELS, name
        assert metric.startswith("iam_"), name
        assert re.fullmatch(r"[a-z0-9_]+", operations), name
        assert f"`{name}`" in doc, f"{name} is not documented in docs/alerts.md"


def test_each_rule_reads_what_is_recorded_before_it_in_its_group() -> None:
    """Rules of a group run in order at the same evaluation time: a rule reading a series
    recorded later in the group would see the previous evaluation's value. Only the carried
    carried series read themselves, and the state recorded after them (PREVIOUS) - their
    value of the previous evaluation, with an instant selector (no range: one sample per
    user) - and every recorded series is read."""
    read: set[str] = set()
    carried = {*CARRIED, MULTI_KEYS, USER_INFO, OVERLAP, ACCOUNT_OVERLAP, USER_SEEN, KEY_SEEN}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        recorded: set[str] = set()
        for rule in group["rules"]:
            texts = [rule["expr"], *rule.get("annotations", {}).values()]
            used = {n for text in texts for n in RECORDED_NAME.findall(text)}
            me = rule.get("record")
            allowed = recorded | ({me} if me in carried else set()) | PREVIOUS.get(me, set())
            assert used <= allowed, (me or rule["alert"], used - allowed)
            for before in PREVIOUS.get(me, set()):
                assert before not in recorded, (me, before)
            if me in used:
                assert f"{me}[" not in rule["expr"], me
            read |= used
            if me:
                recorded.add(me)
    assert read >= set(records()), set(records()) - read


def test_headline_alert_is_a_short_expression_over_recorded_series() -> None:
    rule = alerts()["IAMUserMultipleActiveAccessKeys"]
    assert rule["labels"]["severity"] == "warning"
    assert alerts()["IAMRootAccessKeyPresent"]["labels"]["severity"] == "critical"
    # The grace period is read from the data; `for:` is a short debounce.
    assert rule["for"] == "2m"
    expr = rule["expr"]
    assert len(expr.strip().splitlines()) <= 15, expr
    assert f'{USER_INFO}{{exempt="true"}}' in expr
    assert f"time() - ({OVERLAP} or {ACCOUNT_OVERLAP})" in expr
    # One grace period, written `H * 3600` once in all the rules.
    assert re.findall(r"(\d+) \* 3600", "".join(r["expr"] for r in all_rules())) == ["4"]
    assert re.findall(r"(\d+) \* 3600", expr) == ["4"]


def test_day_thresholds_can_be_substituted() -> None:
    """The Helm chart substitutes `90 * 86400` / `45 * 86400`, written once each, in the
    recording rule that filters the keys for IAMAccessKeyNotRotated / IAMAccessKeyUnused."""
    expected = {NOT_ROTATED: ["90 * 86400"], UNUSED: ["45 * 86400"]}
    for rule in all_rules():
        name = rule.get("alert") or rule["record"]
        assert re.findall(r"\d+\s*\*\s*86400", rule["expr"]) == expected.get(name, []), name


def test_exporter_target_alerts_use_the_job_name() -> None:
    rules = alerts()
    assert rules["IAMExporterDown"]["expr"].strip() == (
        'count without (instance, pod) (up{job="iam-key-exporter"} == 0)')
    assert rules["IAMExporterAbsent"]["expr"].strip() == 'absent(up{job="iam-key-exporter"})'


def test_runbooks_have_one_section_per_alert() -> None:
    text = RUNBOOKS.read_text()
    sections = re.findall(r"^## (\S+)\s*$", text, flags=re.M)
    assert sorted(sections) == sorted(ALERT_NAMES)
    for needle in ("aws iam list-access-keys --user-name", "aws iam get-access-key-last-used",
                   "iam-key-exporter/exempt=true", "TagUser", "update-access-key",
                   "delete-access-key", "SCP", "aws sqs get-queue-attributes",
                   "aws sqs start-message-move-task", "keep_firing_for",
                   "iam_exporter_iam_request_rate_needed", "iam_exporter_iam_request_budget",
                   "aws.max_requests_per_second", "interval_seconds"):
        assert needle in text, needle


# --- Alertmanager --------------------------------------------------------------------


def test_alertmanager_example_is_valid() -> None:
    r = run(require_binary("amtool"), "check-config", str(ALERTMANAGER))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    ("alertname=IAMUserMultipleActiveAccessKeys severity=warning team=payments",
     "team-payments"),
    ("alertname=IAMAccessKeyUnused severity=warning team=analytics", "team-data"),
    ("alertname=IAMAccessKeyNotRotated severity=warning team=unknown-team", "security-team"),
    ("alertname=IAMUserMultipleActiveAccessKeys severity=warning", "security-team"),
    ("alertname=IAMRootAccessKeyPresent severity=critical", "security-pager"),
    ("alertname=IAMExporterCollectionFailing severity=warning account_id=111111111111",
     "exporter-operators"),
    ("alertname=IAMExporterEventsQueueFailing severity=warning", "exporter-operators"),
    ("alertname=IAMExporterEventsDeadLettered severity=warning", "exporter-operators"),
    ("alertname=IAMExporterInventoryWithdrawn severity=warning account_id=111111111111",
     "exporter-operators"),
    ("alertname=IAMExporterUsersUnread severity=warning account_id=111111111111 user_name=bob",
     "exporter-operators"),
    ("alertname=IAMExporterUsersReadLate severity=warning account_id=111111111111",
     "exporter-operators"),
])
def test_alertmanager_routes_by_severity_and_team(labels: str, receiver: str) -> None:
    r = run(require_binary("amtool"), "config", "routes", "test",
            f"--config.file={ALERTMANAGER}", f"--verify.receivers={receiver}", *labels.split())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == receiver
