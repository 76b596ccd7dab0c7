"""An exporter restart in the middle of the grace period, and one while the alert fires,
with the real binaries (tests/e2e.py): moto → the exporter daemon → Prometheus →
Alertmanager → a webhook.

The shipped rules (fast_rules in tests/e2e.py) with the headline alert's 4-hour grace
period cut to GRACE seconds (every `for:` and keep_firing_for to 0 s) and the recording
rules' 20-minute gap bridge to BRIDGE seconds; Prometheus evaluates them every second. A
user gets a second active key; a few seconds later the exporter is stopped and, after a
pause, started again on the same address (Prometheus sees failed scrapes and staleness
markers, as in a rollout). The alert must fire about GRACE after the key was created, not
GRACE after the exporter came back, as a grace period kept in `for:` would: the recorded
start of the overlap outlives the gap. Once it fires, another restart must neither
resolve it nor notify again, and deactivating the key must resolve it within seconds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml

import tests.daemon
from bench.harness import stop_process
from tests.awsproxy import AwsProxy
from tests.daemon import Daemon
from tests.e2e import MULTI, RULES, Stack, alerting_stack, fast_rules, is_alert
from tests.helpers import add_user, daemon_config, iam_client, reset_moto

pytestmark = pytest.mark.e2e

GRACE = 20           # seconds; 4 hours in the shipped rules
BRIDGE = 30          # seconds; the rules' 20-minute gap bridge
RESTART_AFTER = 5    # seconds after the second key: the exporter is stopped ...
DOWN_FOR = 3         # ... and started again this long after it has stopped
BOB = 'iam_user_access_keys{user_name="bob",status="Active"}'


@pytest.fixture
def stack(moto_server: str) -> Iterator[Stack]:
    reset_moto(moto_server)
    iam = iam_client(moto_server)
    add_user(iam, "bob", ("Active",))
    # Two active keys all along, but exempt: never alerts, restart or not.
    add_user(iam, "ci-bot", ("Active", "Active"),
             tags={"iam-key-exporter/exempt": "true"})
    proxy = AwsProxy(moto_server).start()
    with alerting_stack(iam, proxy, daemon_config(proxy.url, interval=1),
                        fast_rules(RULES.read_text(), GRACE, BRIDGE)) as s:
        s.wait_query(f"{BOB} == 1", timeout=40)
        yield s


def restart_exporter(stack: Stack, monkeypatch: pytest.MonkeyPatch, down_for: float) -> Daemon:
    """Stops the exporter (SIGTERM, as in a rollout) and starts a new one on the same port
    `down_for` seconds later; returns the new one once it is ready (first cycle done)."""
    old = stack.exporter
    config: dict[str, Any] = yaml.safe_load(old.config_path.read_text())
    stop_process(old.proc, grace=15)
    time.sleep(down_for)
    monkeypatch.setattr(tests.daemon, "free_port", lambda: old.port)
    new = Daemon(config)
    stack.exporter = new
    new.wait_ready()
    return new


def series_gaps(stack: Stack, expr: str, start: float, end: float) -> list[float]:
    """Lengths in seconds of the holes (> 1.5 s) in expr's samples between start and end."""
    params = {"query": expr, "start": str(start), "end": str(end), "step": "1s"}
    r = requests.get(f"{stack.prometheus_url}/api/v1/query_range", params=params,
                     timeout=10).json()
    assert r["status"] == "success", r
    times = sorted(float(t) for s in r["data"]["result"] for t, _ in s["values"])
    return [b - a for a, b in itertools.pairwise(times) if b - a > 1.5]


def test_a_restart_mid_grace_does_not_restart_the_grace_period(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    t0 = time.time()
    stack.iam.create_access_key(UserName="bob")
    stack.wait_query(f"{BOB} == 2")
    seen = time.time() - t0

    time.sleep(max(0.0, t0 + RESTART_AFTER - time.time()))
    stopped = time.time() - t0
    new = restart_exporter(stack, monkeypatch, DOWN_FOR)
    try:
        # Data again: a sample scraped from the new exporter.
        stack.wait_query(f"timestamp({BOB}) > {t0 + stopped + DOWN_FOR} and {BOB} == 2")
        back = time.time() - t0

        received, alert = stack.hook.wait_for(is_alert(MULTI, "firing", user_name="bob"),
                                              since=started, timeout=GRACE + 20)
        fired = received - started
        [active] = [a for a in requests.get(f"{stack.prometheus_url}/api/v1/alerts",
                                            timeout=10).json()["data"]["alerts"]
                    if a["labels"].get("alertname") == MULTI]
        gaps = series_gaps(stack, BOB, t0, time.time())
        print(f"second key at 0 s; seen by Prometheus at {seen:.1f} s; exporter stopped at "
              f"{stopped:.1f} s, back in Prometheus at {back:.1f} s (gap in the series: "
              f"{', '.join(f'{g:.1f} s' for g in gaps)}); alert firing at the webhook at "
              f"{fired:.1f} s (grace {GRACE} s; a grace kept in `for:` would fire at "
              f"{back + GRACE:.1f} s or later)")
    finally:
        stop_process(new.proc, grace=15)
        new.stop()

    assert gaps and max(gaps) >= DOWN_FOR, gaps          # the restart left a real gap
    assert alert["labels"]["user_name"] == "bob" and active["state"] == "firing"
    # Not early: the grace period counts from the creation of the key (and from when
    # Prometheus first saw it; it sees it a second or two later) ...
    assert fired >= GRACE - 1, fired
    # ... and not restarted by the restart: about GRACE after the key, well before GRACE
    # after the exporter came back.
    assert fired <= GRACE + seen + 5, fired
    assert fired < back + GRACE - 3, (fired, back)
    # The exempt user never alerted.
    assert {a["labels"]["user_name"] for _, a in stack.hook.alerts()
            if a["labels"].get("alertname") == MULTI} == {"bob"}


def multi_alerts(stack: Stack) -> list[dict[str, Any]]:
    return [a for a in requests.get(f"{stack.prometheus_url}/api/v1/alerts",
                                    timeout=10).json()["data"]["alerts"]
            if a["labels"].get("alertname") == MULTI]


def test_a_restart_while_firing_neither_resolves_nor_renotifies_and_a_fix_resolves_at_once(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    key = stack.iam.create_access_key(UserName="bob")["AccessKey"]["AccessKeyId"]
    stack.hook.wait_for(is_alert(MULTI, "firing", user_name="bob"), since=started,
                        timeout=GRACE + 20)
    [before] = multi_alerts(stack)
    assert before["state"] == "firing"

    restarted = time.monotonic()
    t_stop = time.time()
    new = restart_exporter(stack, monkeypatch, DOWN_FOR)
    try:
        stack.wait_query(f"timestamp({BOB}) > {t_stop + DOWN_FOR} and {BOB} == 2")
        back = time.monotonic() - restarted
        time.sleep(5)  # evaluations with the new exporter's data
        gaps = series_gaps(stack, BOB, t_stop - 5, time.time())
        quiet = [(a["status"], a["labels"]) for _, a in stack.hook.alerts(since=restarted)
                 if a["labels"].get("alertname") == MULTI]
        [after] = multi_alerts(stack)

        # The fix: the second key deactivated; the exporter (interval 1 s) serves it.
        fixed = time.monotonic()
        stack.iam.update_access_key(UserName="bob", AccessKeyId=key, Status="Inactive")
        stack.wait_query(f"{BOB} == 1")
        scraped = time.monotonic()
        resolved_at, _ = stack.hook.wait_for(is_alert(MULTI, "resolved", user_name="bob"),
                                             since=fixed, timeout=30)
        print(f"restart while firing: exporter stopped {DOWN_FOR} s, data back after "
              f"{back:.1f} s (gap in the series: {', '.join(f'{g:.1f} s' for g in gaps)}); "
              f"notifications meanwhile: {quiet or 'none'}; second key deactivated -> one "
              f"active key in Prometheus {scraped - fixed:.1f} s -> resolved webhook "
              f"{resolved_at - fixed:.1f} s (bridge {BRIDGE} s, no keep_firing_for)")
    finally:
        stop_process(new.proc, grace=15)
        new.stop()

    assert gaps and max(gaps) >= DOWN_FOR, gaps          # the restart left a real gap
    assert quiet == []                                   # no resolved, no new firing
    assert after["state"] == "firing" and after["activeAt"] == before["activeAt"]
    # Resolved at the first evaluations after Prometheus has the fix (1 s scrape and
    # evaluation, Alertmanager's group_interval 1 s).
    assert resolved_at - scraped < 5, resolved_at - scraped
