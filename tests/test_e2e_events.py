"""Events end to end, with the real binaries (tests/e2e.py): a key change in the fake
account and its CloudTrail event in the SQS queue → the exporter daemon (hourly resync,
events on) → Prometheus → Alertmanager → webhook, in seconds, with no poll in between.
Also the change-to-/metrics latency of the event path, measured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bench.harness import percentile
from tests.awsproxy import AwsProxy
from tests.daemon import sample
from tests.e2e import MULTI, RULES, Stack, alerting_stack, fast_rules, is_alert
from tests.events_helpers import Queues, body, make_queues
from tests.helpers import MOTO_ACCOUNT, add_user, daemon_config, iam_client, reset_moto

pytestmark = pytest.mark.e2e

A = MOTO_ACCOUNT
GRACE = 3  # seconds: the headline alert's grace period here (4 hours in the shipped rules)
CHANGES = 20  # key changes timed for the latency
P99_LIMIT = 5.0  # seconds from the message landing in the queue to /metrics


@dataclass
class EventStack:
    stack: Stack
    queues: Queues

    def exporter_samples(self) -> dict[Any, float]:
        return self.stack.exporter.scrape()

    def last_pass(self) -> float | None:
        """When the account's last pass (a listing and a read of each user) ended."""
        return sample(self.exporter_samples(), "iam_exporter_last_success_timestamp_seconds",
                      account_id=A)


@pytest.fixture(scope="module")
def events(moto_server: str) -> Iterator[EventStack]:
    reset_moto(moto_server)
    iam = iam_client(moto_server)
    add_user(iam, "alice", ("Active",), tags={"Team": "payments"})
    add_user(iam, "timed", ("Active",))
    queues = make_queues(moto_server)
    proxy = AwsProxy(moto_server).start()
    exporter = {
        **daemon_config(proxy.url, interval=3600),
        "metrics": {"user_tags": {"Team": "team"}},
        "events": {"queue_url": queues.url, "visibility_timeout_seconds": 10},
    }
    with alerting_stack(iam, proxy, exporter, fast_rules(RULES.read_text(), GRACE)) as s:
        s.wait_query(f'iam_user_info{{user_name="alice",team="payments",account_id="{A}"}}',
                     timeout=40)
        s.exporter.wait_for(lambda x: sample(x, "iam_exporter_events_queue_up") == 1)
        yield EventStack(s, queues)


def active_keys(samples: dict[Any, float], user: str) -> float | None:
    return sample(samples, "iam_user_access_keys", account_id=A, user_name=user,
                  status="Active")


def test_second_key_event_pages_in_seconds_without_a_poll(events: EventStack) -> None:
    s = events.stack
    first = events.last_pass()
    assert first is not None
    before = s.proxy.counts()
    start = time.monotonic()
    s.iam.create_access_key(UserName="alice")
    events.queues.send(body("CreateAccessKey", "alice"))
    sent = time.monotonic()

    received, alert = s.hook.wait_for(is_alert(MULTI, "firing", user_name="alice"),
                                      since=start, timeout=60)
    latency = received - sent
    print(f"\nsecond key's event sent -> firing webhook: {latency:.2f} s (grace {GRACE} s, "
          "scrape/evaluation 1 s, group_wait 0 s, exporter interval 3600 s)")
    assert alert["labels"]["team"] == "payments"
    assert latency < GRACE + 15

    samples = events.exporter_samples()
    # No poll in between: the first pass only, and one IAM call for the event.
    assert events.last_pass() == first
    assert sample(samples, "iam_exporter_events_total", result="applied") == 1
    after = s.proxy.counts()
    iam_calls = {a: n - before[a] for a, n in after.items() if a != "?" and n != before[a]}
    assert iam_calls == {"ListAccessKeys": 1}
    delay = sample(samples, "iam_exporter_events_last_applied_delay_seconds")
    assert delay is not None and delay < 5


def test_change_to_metrics_latency(events: EventStack) -> None:
    """Queue send → the new count on /metrics, over CHANGES key changes."""
    s = events.stack
    first = events.last_pass()
    before = s.proxy.counts()
    [key] = [k["AccessKeyId"] for k in
             s.iam.list_access_keys(UserName="timed")["AccessKeyMetadata"]]
    latencies = []
    for i in range(CHANGES):
        status = "Inactive" if i % 2 == 0 else "Active"
        want = 0 if status == "Inactive" else 1
        s.iam.update_access_key(UserName="timed", AccessKeyId=key, Status=status)
        sent = time.monotonic()
        events.queues.send(body("UpdateAccessKey", "timed", key_id=key, status=status))
        while active_keys(events.exporter_samples(), "timed") != want:
            assert time.monotonic() - sent < 30, f"change {i} not on /metrics in 30 s"
            time.sleep(0.01)
        latencies.append(time.monotonic() - sent)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"\nchange-to-/metrics latency over {CHANGES} changes: p50 {p50:.3f} s, "
          f"p99 {p99:.3f} s, max {max(latencies):.3f} s")
    assert p99 <= P99_LIMIT
    # Every change came through its event: no pass, one ListAccessKeys per change.
    assert first is not None and events.last_pass() == first
    after = s.proxy.counts()
    iam_calls = {a: n - before[a] for a, n in after.items() if a != "?" and n != before[a]}
    assert iam_calls == {"ListAccessKeys": CHANGES}
