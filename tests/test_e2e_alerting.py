"""Alerting end to end, with the real binaries on 127.0.0.1 (tests/e2e.py):

moto server → (fault proxy) → the exporter daemon → Prometheus (the shipped rules, every
`for:`, the gap bridge and the headline alert's grace period shortened: fast_rules in
tests/e2e.py) → Alertmanager → a webhook receiver in this test.

One stack per module: the alert scenarios and the dashboard's queries share it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.awsproxy import AwsProxy
from tests.e2e import MULTI, RULES, Stack, alerting_stack, fast_rules, is_alert
from tests.helpers import (
    MOTO_ACCOUNT,
    ROOT,
    add_user,
    aws,
    daemon_config,
    iam_client,
    reset_moto,
)

pytestmark = pytest.mark.e2e

A = MOTO_ACCOUNT
DASHBOARD = ROOT / "deploy" / "grafana" / "iam-key-exporter.json"
LATENCY_FILE = Path("/tmp/team/e2e-latency.txt")
# The headline alert's grace period here, in seconds (4 hours in the shipped rules).
GRACE = 2


# --- the stack -------------------------------------------------------------------------


def seed(iam: Any, endpoint: str) -> None:
    # alice (Team=payments): one active key, used once (so it has a last-used date).
    add_user(iam, "alice", tags={"Team": "payments"})
    key = iam.create_access_key(UserName="alice")["AccessKey"]
    as_alice = aws("iam", endpoint, {"aws_access_key_id": key["AccessKeyId"],
                                     "aws_secret_access_key": key["SecretAccessKey"]})
    as_alice.get_user(UserName="alice")
    # carol: one active and one inactive key -> never alerts.
    add_user(iam, "carol", ("Active", "Inactive"), tags={"Team": "data"})
    # ci-bot: two active keys but exempt -> never alerts (still shown on the dashboard).
    add_user(iam, "ci-bot", ("Active", "Active"), path="/automation/",
             tags={"Team": "platform", "iam-key-exporter/exempt": "true"})


@pytest.fixture(scope="module")
def stack(moto_server: str) -> Iterator[Stack]:
    reset_moto(moto_server)
    iam = iam_client(moto_server)
    seed(iam, moto_server)
    proxy = AwsProxy(moto_server).start()
    # The first AWS request fails, so the first cycle fails: the error metrics exist
    # from the start (the dashboard's error panels have data), then all is well.
    proxy.mode, proxy.fault_budget = "http500", 1
    with alerting_stack(iam, proxy, {
        **daemon_config(proxy.url, interval=1),
        "accounts": [{"role_arn": f"arn:aws:iam::{A}:role/iam-key-exporter",
                      "name": "sandbox"}],
        "metrics": {"user_tags": {"Team": "team"}},
    }, fast_rules(RULES.read_text(), GRACE)) as s:
        # Scraped, with the tagged user's info: the rules have everything they join.
        s.wait_query(f'iam_user_info{{user_name="alice",team="payments",account_id="{A}"}}'
                     ' and on (account_id) iam_exporter_collection_success == 1', timeout=40)
        yield s


# --- scenarios -------------------------------------------------------------------------


def test_second_active_key_pages_the_team_and_resolves(stack: Stack) -> None:
    start = time.monotonic()
    new_key = stack.iam.create_access_key(UserName="alice")["AccessKey"]["AccessKeyId"]
    created = time.monotonic()

    received, alert = stack.hook.wait_for(
        is_alert(MULTI, "firing", user_name="alice"), since=start, timeout=40)
    latency = received - created
    assert alert["labels"] == {
        "alertname": MULTI, "account_id": A, "account_name": "sandbox",
        "user_name": "alice", "team": "payments", "severity": "warning",
        "compliance": "CIS AWS 1.13"}
    annotations = alert["annotations"]
    assert new_key in annotations["description"]
    assert f"AWS account {A} (sandbox), team payments" in annotations["description"]
    assert annotations["runbook_url"].endswith("docs/runbooks.md#iamusermultipleactiveaccesskeys")

    stack.iam.delete_access_key(UserName="alice", AccessKeyId=new_key)
    deleted = time.monotonic()
    resolved_at, _ = stack.hook.wait_for(
        is_alert(MULTI, "resolved", user_name="alice"), since=deleted, timeout=40)

    message = (f"second key created -> firing webhook: {latency:.2f} s; "
               f"key deleted -> resolved webhook: {resolved_at - deleted:.2f} s "
               "(exporter interval 1 s, scrape/evaluation 1 s, group_wait 0 s)")
    print(message)
    if LATENCY_FILE.parent.is_dir():
        LATENCY_FILE.write_text(message + "\n")

    # The exempt user (two active keys) and the user with an inactive second key never
    # paged, though the exporter served them all along.
    others = [a["labels"]["user_name"] for _, a in stack.hook.alerts()
              if a["labels"].get("alertname") == MULTI]
    assert set(others) == {"alice"}
    assert stack.query('iam_user_info{user_name="ci-bot",exempt="true"}')


def test_failing_aws_endpoint_fires_collection_failing(stack: Stack) -> None:
    start = time.monotonic()
    stack.proxy.fault_budget = None
    stack.proxy.mode = "http500"
    try:
        fired, alert = stack.hook.wait_for(
            is_alert("IAMExporterCollectionFailing", "firing", account_id=A),
            since=start, timeout=40)
    finally:
        stack.proxy.mode = None
    labels = alert["labels"]
    assert labels["account_name"] == "sandbox"
    assert labels["job"] == "iam-key-exporter"
    assert labels["severity"] == "warning"
    # The exporter kept serving the last good data meanwhile.
    assert stack.query(f'iam_user_access_keys{{account_id="{A}",user_name="carol",'
                       'status="Inactive"} == 1')
    # And it recovers once AWS answers again.
    stack.hook.wait_for(is_alert("IAMExporterCollectionFailing", "resolved", account_id=A),
                        since=fired + 1e-6, timeout=40)


# --- the dashboard against the live Prometheus ----------------------------------------


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query in the dashboard, rows included."""
    def panels(ps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["refId"], t["expr"]) for p in panels(dash["panels"])
            for t in p.get("targets", [])]


def substitute(expr: str, account: str = ".*") -> str:
    """Grafana's variables replaced as Grafana would (All accounts: a regex matching all)."""
    for var, value in (("$__rate_interval", "1m"), ("$__interval", "15s"),
                       ("$__range", "1m"), ("${account}", account), ("$account", account)):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


# Families this stack cannot serve, so their queries need not return data (they still run:
# a query Prometheus rejects fails the test): events are off here (tests/test_e2e_events.py
# has them), and nothing throttles (a counter has no series before its first increment).
NOT_SERVED_HERE = ("iam_exporter_events_total", "iam_exporter_events_queue_up",
                  "iam_exporter_events_last_applied_delay_seconds",
                  "iam_exporter_iam_throttles_total")


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 20
    # The counters have been scraped at least twice (rate/increase need two samples).
    stack.wait_query("count_over_time(iam_exporter_build_info[1m]) > 2")
    empty = []
    for title, ref, expr in targets:
        if not stack.query(substitute(expr)) and not any(
                re.search(rf"\b{name}\b", expr) for name in NOT_SERVED_HERE):
            empty.append(f"{title} [{ref}]: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_account_variable_lists_the_account(stack: Stack) -> None:
    dash = json.loads(DASHBOARD.read_text())
    var = next(v for v in dash["templating"]["list"] if v["name"] == "account")
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)",
                                 var["query"]["query"]).groups()
    r = requests.get(f"{stack.prometheus_url}/api/v1/label/{label}/values",
                     params={"match[]": metric}, timeout=10).json()
    assert r["data"] == [A]
    # and a query filtered on that one account still has data
    assert all(stack.query(substitute(expr, account=A)) for _, _, expr in dashboard_targets()
               if "iam_account_users{" in expr)
