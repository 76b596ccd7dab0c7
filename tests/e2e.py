"""The alerting stack of the end-to-end tests, with the real binaries on 127.0.0.1:

the exporter daemon (its AWS behind an AwsProxy in front of moto) → Prometheus (the
shipped rules, shortened) → Alertmanager → a webhook receiver in the test.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

from bench.harness import stop_process
from tests.awsproxy import AwsProxy
from tests.daemon import Daemon
from tests.helpers import ROOT, free_port, require_binary

RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
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
    assert n == sum(1 for g in yaml.safe_load(rules)["groups"] for r in g["rules"] if "alert" in r)
    return out


def fast_rules(rules: str, grace_seconds: int, bridge_seconds: int = 30) -> str:
    """The shipped rules made fast, for Prometheus evaluating them every second: every
    `for:` and keep_firing_for cut to 0 s; the 20-minute gap bridge cut to
    ``bridge_seconds`` - written `20 * 60` where a filtered set is carried by reading its
    own value of the previous evaluation, `[20m]` where a per-account or per-job input
    reads its last 20 minutes; and the 4-hour grace period of
    IAMUserMultipleActiveAccessKeys (`4 * 3600`, counted from the recorded start of the
    overlap) cut to ``grace_seconds``: the alert fires a few seconds after a second key is
    scraped, and a gap in the exporter's series shorter than ``bridge_seconds`` changes
    nothing."""
    out = short_for(rules)
    out = re.sub(r"(?m)^(\s+keep_firing_for:\s*)\S+\s*$", r"\g<1>0s", out)
    for old, new in (("[20m]", f"[{bridge_seconds}s]"), ("20 * 60", str(bridge_seconds))):
        assert old in out, old
        out = out.replace(old, new)
    assert not re.search(r"\[\d+m(:\w*)?\]", out), "a window of another length"
    assert not re.search(r"(?m)^\s+[^#\s].*\b\d+ \* 60\b", out), "a bridge of another length"
    out, n = re.subn(r"(?m)^(\s+[^#\s].*)4 \* 3600", rf"\g<1>{grace_seconds}", out)
    assert n == 1, "the grace period, once"
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


@contextmanager
def alerting_stack(iam: Any, proxy: AwsProxy, exporter_config: dict[str, Any],
                   rules: str) -> Iterator[Stack]:
    """The exporter (config exporter_config), Alertmanager and Prometheus (rules), all
    stopped afterwards, the proxy too."""
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    workdir = Path(tempfile.mkdtemp(prefix="iamx-alerting-"))
    started: list[Any] = []
    hook = Webhook()
    webhook_server = start_webhook(hook)
    try:
        exporter = Daemon(exporter_config)
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

        (workdir / "alerts.yaml").write_text(rules)
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
        yield Stack(iam, proxy, exporter, f"http://127.0.0.1:{prom_port}", hook, prom, am)
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
