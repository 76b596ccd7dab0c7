"""Alerting end to end, with the real binaries on 127.0.0.1:

moto server → (fault proxy) → the exporter daemon → Prometheus (the shipped rules, every
`for:` shortened) → Alertmanager → a webhook receiver in this test.

One stack per module: the alert scenarios and the dashboard's queries share it.
Prometheus 2.42 (Debian) scrapes a newly discovered target only after ~5 s; with 1 s
scrape and evaluation intervals everything else takes a second or two.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bench.harness import stop_process
from tests.awsproxy import AwsProxy
from tests.daemon import Daemon
from tests.helpers import (
    MOTO_ACCOUNT,
    ROOT,
    add_user,
    aws,
    daemon_config,
    free_port,
    iam_client,
    require_binary,
    reset_moto,
)

pytestmark = pytest.mark.e2e

A = MOTO_ACCOUNT
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "iam-key-exporter.json"
LATENCY_FILE = Path("/tmp/team/e2e-latency.txt")
MULTI = "IAMUserMultipleActiveAccessKeys"


# --- webhook receiver ------------------------------------------------------------------


@dataclass
class Notification:
    received: float  # time.monotonic()
    payload: dict[str, Any]


@dataclass
class Webhook:
    notifications: list[Notification] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, payload: dict[str, Any]) -> None:
        with self.cond:
            self.notifications.append(Notification(time.monotonic(), payload))
            self.cond.notify_all()

    def alerts(self, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        """(received, alert) of every alert in every notification received since `since`."""
        with self.cond:
            return [(n.received, a) for n in self.notifications if n.received >= since
                    for a in n.payload["alerts"]]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], since: float,
                 timeout: float = 30.0) -> tuple[float, dict[str, Any]]:
        """The first alert received since `since` that matches; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for received, alert in self.alerts(since):
                    if predicate(alert):
                        return received, alert
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(a["status"], a["labels"]) for _, a in self.alerts(since)]
                    raise AssertionError(f"no matching alert in {timeout}s; got {seen}")
                self.cond.wait(left)


def start_webhook(hook: Webhook) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.add(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- the stack -------------------------------------------------------------------------


def short_for(rules: str) -> str:
    """The shipped rules with every grace period (`for:`) cut to zero."""
    out, n = re.subn(r"(?m)^(\s+for:\s*)\S+\s*$", r"\g<1>0s", rules)
    assert n == sum(len(g["rules"]) for g in yaml.safe_load(rules)["groups"])
    return out


class Proc:
    """A binary running with its output in a log file."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([require_binary(name), *args], cwd=workdir,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n"
                                     f"{self.logs()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.proc, grace=10)
        self._log.close()


@dataclass
class Stack:
    iam: Any
    proxy: AwsProxy
    exporter: Daemon
    prometheus_url: str
    hook: Webhook
    prometheus: Proc
    alertmanager: Proc

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = requests.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr},
                         timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def wait_query(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"{expr} returned nothing for {timeout}s\n"
                             f"exporter:\n{self.exporter.logs()[-3000:]}\n"
                             f"prometheus:\n{self.prometheus.logs()}")


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
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    reset_moto(moto_server)
    iam = iam_client(moto_server)
    seed(iam, moto_server)
    workdir = Path(tempfile.mkdtemp(prefix="iamx-alerting-"))
    started: list[Any] = []
    hook = Webhook()
    webhook_server = start_webhook(hook)
    proxy = AwsProxy(moto_server).start()
    # The first AWS request fails, so the first cycle fails: the error metrics exist
    # from the start (the dashboard's error panels have data), then all is well.
    proxy.mode, proxy.fault_budget = "http500", 1
    try:
        exporter = Daemon({
            **daemon_config(proxy.url, interval=1),
            "accounts": [{"role_arn": f"arn:aws:iam::{A}:role/iam-key-exporter",
                          "name": "sandbox"}],
            "metrics": {"user_tags": {"Team": "team"}},
        })
        started.append(exporter)

        am_port, prom_port = free_port(), free_port()
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump({
            "route": {"receiver": "test", "group_by": ["alertname", "account_id", "user_name"],
                      "group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [{
                "url": f"http://127.0.0.1:{webhook_server.server_address[1]}/",
                "send_resolved": True}]}],
        }))
        am = Proc("prometheus-alertmanager", [
            "--config.file=alertmanager.yml", f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
        ], workdir)
        started.append(am)

        (workdir / "alerts.yaml").write_text(short_for(RULES.read_text()))
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": ["alerts.yaml"],
            "alerting": {"alertmanagers": [
                {"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": "iam-key-exporter", "static_configs": [
                {"targets": [f"127.0.0.1:{exporter.port}"]}]}],
        }))
        prom = Proc("prometheus", [
            "--config.file=prometheus.yml", f"--storage.tsdb.path={workdir / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ], workdir)
        started.append(prom)

        exporter.wait_listening()
        am.wait_ready(f"http://127.0.0.1:{am_port}/-/ready")
        prom.wait_ready(f"http://127.0.0.1:{prom_port}/-/ready")
        s = Stack(iam, proxy, exporter, f"http://127.0.0.1:{prom_port}", hook, prom, am)
        # Scraped, with the tagged user's info: the rules have everything they join.
        s.wait_query(f'iam_user_info{{user_name="alice",team="payments",account_id="{A}"}}'
                     ' and on (account_id) iam_exporter_collection_success == 1', timeout=40)
        yield s
    finally:
        for p in reversed(started):
            if isinstance(p, Daemon):
                stop_process(p.proc, grace=15)  # SIGTERM: gunicorn stops its worker too
            p.stop()
        proxy.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        webhook_server.shutdown()
        webhook_server.server_close()


def is_alert(name: str, status: str, **labels: str) -> Callable[[dict[str, Any]], bool]:
    def match(alert: dict[str, Any]) -> bool:
        return (alert["labels"].get("alertname") == name and alert["status"] == status
                and all(alert["labels"].get(k) == v for k, v in labels.items()))
    return match


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


# Families the dashboard reads that this stack cannot serve yet, so their queries are not
# required to return data (they still run: a query Prometheus rejects fails the test).
# TODO(issue 14): the event and IAM request budget families are being added to the exporter
# now; drop each name once the exporter serves it here (the event families also need the
# stack to feed the exporter an SQS queue and an event).
NOT_YET_SERVED = ("iam_exporter_events_total", "iam_exporter_events_queue_up",
                  "iam_exporter_events_last_applied_delay_seconds",
                  "iam_exporter_iam_requests_total", "iam_exporter_iam_throttles_total",
                  "iam_exporter_iam_request_budget")


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 20
    # The counters have been scraped at least twice (rate/increase need two samples).
    stack.wait_query("count_over_time(iam_exporter_cycles_total[1m]) > 2")
    empty = []
    for title, ref, expr in targets:
        if not stack.query(substitute(expr)) and not any(
                re.search(rf"\b{name}\b", expr) for name in NOT_YET_SERVED):
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
