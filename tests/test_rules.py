"""The alert rules, their promtool unit tests, the runbooks and the Alertmanager example.

promtool and amtool are the real binaries (Debian packages prometheus and
prometheus-alertmanager). The rules' unit tests live in tests/rules/*.yaml; this module runs
them, checks that they cover every alert both firing and not firing, and checks that they
have teeth: each of a few plausible bugs in the rules makes them fail.
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
    "IAMExporterIntervalTooShort",
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
    assert f"SUCCESS: {len(alerts())} rules found" in r.stdout


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
HEADLINE_HISTORY = ("min_over_time((min by (account_id, user_name) (min_over_time("
                    'iam_user_access_keys{status="Active"}[5m])))[4h:5m]) > 1')
HEADLINE_SEEN = ('present_over_time((group by (account_id, user_name) (iam_user_access_keys'
                 '{status="Active"}))[1h:5m] offset 4h)')
ACCOUNT_SEEN = ("present_over_time((group by (account_id) (iam_account_users_with_multiple_"
                "active_keys))[1h:5m] offset 4h)")
BY_USER = "max by (account_id, user_name)"
ACTIVE = 'iam_user_access_keys{status="Active"}'
CREATED = 'iam_access_key_created_timestamp_seconds{status="Active"}'
COUNT_BRIDGE = f"last_over_time(({BY_USER} ({ACTIVE}))[20m:1m])"
CREATED_BRIDGE = f"last_over_time(({BY_USER} ({CREATED}))[20m:1m])"


def block(*rows: tuple[int, str]) -> str:
    """Lines of the rules file: (indentation, text) each, every line ending in a newline."""
    return "".join(" " * n + text + "\n" for n, text in rows)


HEADLINE_CREATED = block((0, "time() - ("), (26, f"{BY_USER} ({CREATED})"),
                         (24, "or on (account_id, user_name)"), (26, CREATED_BRIDGE),
                         (22, ") > 4 * 3600"))[:-1]
MUTATIONS: list[tuple[str, str, str, str] | tuple[str, str, str, str, int]] = [
    ("exempt users alert", 'iam_user_info{exempt="true"}', 'iam_user_info{exempt="yes"}',
     "multiple_keys.yaml", 3),
    ("status filter dropped (inactive keys count)", 'iam_user_access_keys{status="Active"}',
     "iam_user_access_keys", "multiple_keys.yaml", 8),
    ("per-account alert duplicates per-user ones", """
                unless on (account_id)
                  last_over_time(iam_user_access_keys{status="Active"}[20m])
""", "\n", "multiple_keys.yaml"),
    ("grace period too short", "> 4 * 3600", "> 3 * 3600", "multiple_keys.yaml"),
    ("history window too short", "[4h:5m]) > 1", "[3h:5m]) > 1", "multiple_keys_gaps.yaml"),
    ("history window too short (per account)", "[4h:5m]) > 0", "[3h:5m]) > 0",
     "multiple_keys_gaps.yaml"),
    ("history seen for too short", "[1h:5m] offset 4h", "[1h:5m] offset 3h",
     "multiple_keys.yaml", 2),
    ("history sampled at the subquery's points only (fires early)",
     'min_over_time(iam_user_access_keys{status="Active"}[5m])',
     'iam_user_access_keys{status="Active"}', "multiple_keys_gaps.yaml"),
    ("reactivated key counted from its creation (no history)",
     f"and on (account_id, user_name)\n                  {HEADLINE_HISTORY}\n", "",
     "multiple_keys_gaps.yaml"),
    ("creation times only (blind without metrics.per_key)",
     f"\n                    or on (account_id, user_name)\n                      {HEADLINE_SEEN}",
     "", "multiple_keys.yaml"),
    ("history only (creation times ignored)",
     f"{HEADLINE_CREATED}\n                    or on (account_id, user_name)\n", "",
     "multiple_keys_gaps.yaml"),
    ("per-account alert without history",
     f"and on (account_id)\n                  {ACCOUNT_SEEN}\n", "", "multiple_keys.yaml"),
    ("headline resolves late again (keep_firing_for)", "        for: 2m\n",
     "        for: 2m\n        keep_firing_for: 15m\n", "multiple_keys_bridge.yaml"),
    ("grace period in for: again", "for: 2m\n", "for: 4h\n", "multiple_keys.yaml"),
    ("headline count not bridged (a gap resolves the alert)",
     "\n" + block((20, "or on (account_id, user_name)"), (22, "("), (26, COUNT_BRIDGE),
                  (24, "unless on (account_id)"), (26, "iam_account_watched_users"),
                  (22, ")")), "\n", "multiple_keys_bridge.yaml"),
    ("a user gone from a served account stays firing for 20 minutes", """
                        unless on (account_id)
                          iam_account_watched_users
""", "\n", "multiple_keys_bridge.yaml"),
    ("an unread user resolves at once",
     "\n" + block((20, "or on (account_id, user_name)"), (22, "("), (26, COUNT_BRIDGE),
                  (24, "and on (account_id, user_name)"), (26, "iam_user_unread"),
                  (22, ")")), "\n", "multiple_keys_bridge.yaml"),
    ("creation times not bridged (the grace period unknown in a gap)",
     "\n" + block((24, "or on (account_id, user_name)"), (26, CREATED_BRIDGE)), "\n",
     "multiple_keys_bridge.yaml"),
    ("exemption forgotten in a gap",
     "\n" + block((20, "or"), (22, '(last_over_time(iam_user_info{exempt="true"}[20m]) unless on '
                                   "(account_id, user_name) iam_user_info)")), "\n",
     "multiple_keys_gaps.yaml"),
    ("team label lost in a gap (a new alert)", """
                  or on (account_id, user_name)
                    topk by (account_id, user_name) (1, last_over_time(iam_user_info[20m]))
""", "\n", "multiple_keys_bridge.yaml"),
    ("unguarded team join",
     "\n" + block((18, "or on (account_id, user_name)"),
                  (20, f"group by (account_id, user_name) (last_over_time({ACTIVE}[20m]))")),
     "\n", "multiple_keys.yaml"),
    ("never-used keys ignored", "(iam_exporter_last_used_complete[20m])) == 1)",
     "(iam_exporter_last_used_complete[20m])) == 2)", "key_age.yaml"),
    ("unknown last use taken as never used", "(iam_exporter_last_used_complete[20m])) == 1)",
     "(iam_exporter_last_used_complete[20m])) >= 0)", "key_age.yaml"),
    ("one cycle of incomplete last-used data resolves a never-used key",
     "max_over_time(iam_exporter_last_used_complete[20m])",
     "last_over_time(iam_exporter_last_used_complete[20m])", "key_age.yaml"),
    ("wrong unused threshold", "> 45 * 86400", "> 50 * 86400", "key_age.yaml"),
    ("wrong rotation threshold", "> 90 * 86400", "> 120 * 86400", "key_age.yaml"),
    ("stale threshold", "3 * (", "30 * (", "exporter_health.yaml"),
    ("down targets of other jobs counted", 'up{job="iam-key-exporter"} == 0)',
     "up == 0)", "exporter_health.yaml"),
]
# The same, within one alert's expression only (every occurrence there).
ALERT_MUTATIONS: list[tuple[str, str, str, str, str]] = [
    ("inactive keys age", "IAMAccessKeyNotRotated",
     'iam_access_key_created_timestamp_seconds{status="Active"}',
     "iam_access_key_created_timestamp_seconds", "key_age.yaml"),
    ("root key ignored", "IAMRootAccessKeyPresent", ") > 0", ") > 1", "key_age.yaml"),
    ("failing account missed", "IAMExporterCollectionFailing", ") == 0", ") < 0",
     "exporter_health.yaml"),
    ("withdrawn inventory missed", "IAMExporterInventoryWithdrawn", ") == 1", ") == 2",
     "degraded.yaml"),
    ("withdrawn inventory held after the account recovers", "IAMExporterInventoryWithdrawn",
     "unless on (account_id)\n    iam_exporter_collection_success", "", "degraded.yaml"),
    ("unread users missed", "IAMExporterUsersUnread", ") == 1", ") == 2", "degraded.yaml"),
    ("a user read again held for 20 minutes", "IAMExporterUsersUnread",
     "unless on (account_id)\n    iam_account_watched_users", "", "degraded.yaml"),
    ("cycle overrun missed", "IAMExporterIntervalTooShort", ") == 1", ") == 2",
     "degraded.yaml"),
    ("cycle overrun alerts too soon", "IAMExporterIntervalTooShort", "for", "for",
     "degraded.yaml"),
    ("events queue failure missed", "IAMExporterEventsQueueFailing", ") == 0", ") < 0",
     "events.yaml"),
    ("shards merged (one shard's queue hides another's)", "IAMExporterEventsQueueFailing",
     " * on (job, instance) group_left (shard_index) iam_exporter_shard_info", "",
     "events.yaml"),
    ("one dead-lettered message ignored", "IAMExporterEventsDeadLettered", ") > 0", ") > 1",
     "events.yaml"),
]
# keep_firing_for only where the data itself flaps while the problem persists (a target
# answering for a moment, one good cycle or receive between failures); every other alert
# bridges gaps from the data and resolves as soon as the data says so.
KEEP_FIRING_FOR = {"IAMExporterCollectionFailing": "15m", "IAMExporterDown": "15m",
                   "IAMExporterAbsent": "15m", "IAMExporterEventsQueueFailing": "15m"}
# The alerts that read the exporter's series (not `up`) bridge a gap from the data.
BRIDGED = sorted(ALERT_NAMES - {"IAMExporterDown", "IAMExporterAbsent"})


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


def with_alert_changed(name: str, change: Any) -> str:
    """The rules file (re-dumped) with change(rule) applied to the alert `name`."""
    doc = yaml.safe_load(RULES.read_text())
    [rule] = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == name]
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


@pytest.mark.parametrize("mutation", [m[1:] for m in ALERT_MUTATIONS],
                         ids=[m[0] for m in ALERT_MUTATIONS])
def test_a_broken_alert_fails_the_unit_tests(tmp_path: Path,
                                             mutation: tuple[str, str, str, str]) -> None:
    name, old, new, test_file = mutation

    def change(rule: dict[str, Any]) -> None:
        if old == "for":  # the for: period itself
            rule["for"] = "20m"
            return
        # Compare without indentation: the rule's expr as PromQL tokens on one line each.
        expr = re.sub(r"\n\s+", "\n    ", rule["expr"])
        assert old in expr, (name, old)
        rule["expr"] = expr.replace(old, new)

    fails_the_unit_tests(tmp_path, with_alert_changed(name, change), [test_file])


@pytest.mark.parametrize("name", sorted(KEEP_FIRING_FOR))
def test_every_keep_firing_for_is_needed(tmp_path: Path, name: str) -> None:
    """Without keep_firing_for, each alert that has one resolves and notifies again when
    its data flaps (a target answering for a moment, one good cycle) in its unit tests."""
    rules = with_alert_changed(name, lambda rule: rule.pop("keep_firing_for"))
    fails_the_unit_tests(tmp_path, rules, unit_tests_of(name))


@pytest.mark.parametrize("name", BRIDGED)
def test_every_bridge_is_needed(tmp_path: Path, name: str) -> None:
    """Without its 20-minute bridge (cut to 1 minute), each alert resolves (or restarts its
    `for:`) in a scrape gap its unit tests put in its way, keep_firing_for or not."""
    def change(rule: dict[str, Any]) -> None:
        assert "[20m" in rule["expr"], name
        rule["expr"] = rule["expr"].replace("[20m:1m]", "[1m:1m]").replace("[20m]", "[1m]")

    fails_the_unit_tests(tmp_path, with_alert_changed(name, change), unit_tests_of(name))


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


@pytest.mark.parametrize("name", sorted(ALERT_NAMES))
def test_gaps_are_bridged_from_the_data_and_keep_firing_for_only_where_data_flaps(
        name: str) -> None:
    """Every alert on the exporter's series bridges a scrape gap of up to 20 minutes from
    the data (`<value now> or last_over_time((<value>)[20m:1m])`), one window everywhere
    (tests/e2e.py shortens it); keep_firing_for is left where the data flaps, so that the
    headline alert resolves at the first evaluation after the exporter serves the fix."""
    rule = alerts()[name]
    assert rule.get("keep_firing_for") == KEEP_FIRING_FOR.get(name)
    text = rule["expr"] + "".join(rule["annotations"].values())
    windows = re.findall(r"\[(\d+[smh])(?::(\d+[smh]))?\]", text)
    bridges = {w for w in windows if w not in {("5m", ""), ("1h", "")}
               and w[1] != "5m"}  # the grace period's history and the errors of the hour
    if name in BRIDGED:
        assert ("20m", "1m") in bridges and bridges <= {("20m", "1m"), ("20m", "")}, name
        assert "last_over_time((" in rule["expr"], name
    else:
        assert not bridges, (name, bridges)


def test_headline_alert_is_per_user_warning_with_a_grace_period() -> None:
    rule = alerts()["IAMUserMultipleActiveAccessKeys"]
    assert rule["labels"]["severity"] == "warning"
    assert 'iam_user_info{exempt="true"}' in rule["expr"]
    assert alerts()["IAMRootAccessKeyPresent"]["labels"]["severity"] == "critical"
    # The grace period is read from the data; `for:` is a short debounce.
    assert rule["for"] == "2m"
    expr = rule["expr"]
    # One grace period, written `H * 3600` as a threshold and `Hh` where PromQL needs a
    # duration literal (subquery ranges, offsets); the subquery's step equals the range of
    # the minimum it takes, so no sample falls between two points.
    assert re.findall(r"(\d+) \* 3600", expr) == ["4"]
    assert re.findall(r"\[(\d+h):5m\]\) >", expr) == ["4h", "4h"]
    assert re.findall(r"offset (\d+h)", expr) == ["4h", "4h"]
    assert re.findall(r"\[(\w+)\]\)\)\)\[4h:(\w+)\]", expr) == [("5m", "5m")] * 2
    others = [r["expr"] for n, r in alerts().items() if n != "IAMUserMultipleActiveAccessKeys"]
    assert not [e for e in others if re.search(r"\d+\s*\*\s*3600", e)]


def test_day_thresholds_can_be_substituted() -> None:
    """The Helm chart substitutes `90 * 86400` / `45 * 86400`, written once per expr."""
    rules = alerts()
    assert rules["IAMAccessKeyNotRotated"]["expr"].count("90 * 86400") == 1
    assert rules["IAMAccessKeyUnused"]["expr"].count("45 * 86400") == 1
    for name, rule in rules.items():
        days = re.findall(r"\d+\s*\*\s*86400", rule["expr"])
        expected = {"IAMAccessKeyNotRotated": ["90 * 86400"],
                    "IAMAccessKeyUnused": ["45 * 86400"]}.get(name, [])
        assert days == expected, name


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
                   "aws sqs start-message-move-task", "keep_firing_for"):
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
    ("alertname=IAMExporterIntervalTooShort severity=info", "exporter-operators"),
])
def test_alertmanager_routes_by_severity_and_team(labels: str, receiver: str) -> None:
    r = run(require_binary("amtool"), "config", "routes", "test",
            f"--config.file={ALERTMANAGER}", f"--verify.receivers={receiver}", *labels.split())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == receiver
