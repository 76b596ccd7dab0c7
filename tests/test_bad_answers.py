"""One unusable answer, on any call the exporter makes, is retried like a dropped
connection (exporter.aws.session.harden): the counts stay exact, the pass succeeds, and
the bad attempt is counted (issue 18: "every call retried the same way").

The proxy answers exactly one request of the operation under test with moto's real
answer cut in half under a Content-Length that matches the half ("cut": well framed, not
well formed), or with an empty 200 ("empty"). Every other request passes through.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats
from exporter.config import Config
from exporter.events import queue
from exporter.events.consumer import Consumer
from exporter.inventory import Snapshot
from tests.awsproxy import AwsProxy
from tests.daemon import sample
from tests.events_helpers import body, make_queues, wait_until
from tests.helpers import MOTO_ACCOUNT, add_user, aws, make_config
from tests.passes import inventory, one_pass, polling, samples

A = MOTO_ACCOUNT
FAULTS = ["cut", "empty"]
SEEDED = {"alice": (1, 0), "bob": (2, 0), "carol": (1, 1)}


def seed(iam: Any) -> None:
    add_user(iam, "alice", ("Active",))
    add_user(iam, "bob", ("Active", "Active"))
    add_user(iam, "carol", ("Active", "Inactive"))


def once(proxy: AwsProxy, fault: str, operation: str) -> None:
    """The next request of operation (a query Action or a JSON X-Amz-Target operation)
    gets the fault; no other request does."""
    proxy.rule = lambda _, p: fault if p.get("Action") == [operation] else None
    proxy.fault_budget = 1


def config(proxy: AwsProxy, **extra: Any) -> Config:
    return make_config(aws={"endpoint_url": proxy.url},
                       collection={"last_used": "off"}, **extra)


def check(snap: Snapshot, cfg: Config, stats: ApiStats, proxy: AwsProxy) -> dict[Any, float]:
    """Exact counts, a successful pass, the fault really injected, and every IAM request
    the proxy saw counted by the exporter."""
    assert proxy.fault_budget == 0, "the fault was never injected: the test proves nothing"
    inv = inventory(snap)
    assert {u.name: (u.count("Active"), u.count("Inactive")) for u in inv.users} == SEEDED
    assert inv.unread == () and not any(u.stale for u in inv.users)
    s = samples(snap, cfg, stats)
    assert sample(s, "iam_exporter_collection_success", account_id=A) == 1
    sent = sum(v for (name, _), v in s.items() if name == "iam_exporter_iam_requests_total")
    assert sent == proxy.service_counts()["iam"] > 0
    assert not [k for k in s if k[0] == "iam_exporter_collection_errors_total"]
    return s


def retried(s: dict[Any, float], service: str, operation: str) -> float | None:
    return sample(s, "iam_exporter_aws_api_retries_total", account_id=A, service=service,
                  operation=operation)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("operation", ["GetAccountAuthorizationDetails", "ListAccessKeys"])
def test_one_bad_iam_answer(iam: Any, proxy: AwsProxy, fault: str, operation: str) -> None:
    seed(iam)
    cfg, stats = config(proxy), ApiStats()
    once(proxy, fault, operation)
    with polling(cfg, AccountSet(cfg, stats)) as poller:
        snap = one_pass(poller)
    s = check(snap, cfg, stats, proxy)
    assert retried(s, "iam", operation) == 1
    assert sample(s, "iam_exporter_iam_requests_total", account_id=A,
                  operation=operation) == proxy.counts()[operation]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("operation", ["GetCallerIdentity", "AssumeRole"])
def test_one_bad_sts_answer(iam: Any, proxy: AwsProxy, fault: str, operation: str) -> None:
    """GetCallerIdentity: the own account's id; AssumeRole: an account's role (here in
    moto's own account, so the same users)."""
    seed(iam)
    accounts = ([{"role_arn": f"arn:aws:iam::{A}:role/iam-key-exporter"}]
                if operation == "AssumeRole" else [])
    cfg, stats = config(proxy, accounts=accounts), ApiStats()
    once(proxy, fault, operation)
    with polling(cfg, AccountSet(cfg, stats)) as poller:
        snap = one_pass(poller)
    s = check(snap, cfg, stats, proxy)
    assert retried(s, "sts", operation) == 1
    assert proxy.counts()[operation] == 2


@pytest.mark.parametrize("fault", FAULTS)
def test_one_bad_organizations_answer(iam: Any, moto: str, proxy: AwsProxy,
                                      fault: str) -> None:
    """Discovery's ListAccounts (JSON protocol): the Organization of moto's account, whose
    management account is the exporter's own."""
    seed(iam)
    aws("organizations", moto).create_organization(FeatureSet="ALL")
    cfg, stats = config(proxy, organizations={"enabled": True}), ApiStats()
    once(proxy, fault, "ListAccounts")
    with polling(cfg, AccountSet(cfg, stats)) as poller:
        snap = one_pass(poller)
    s = check(snap, cfg, stats, proxy)
    assert retried(s, "organizations", "ListAccounts") == 1
    assert sample(s, "iam_exporter_discovery_success") == 1
    assert sample(s, "iam_exporter_discovered_accounts") == 1
    assert [st.account_id for st in snap.accounts] == [A]


@pytest.mark.parametrize("fault", FAULTS)
def test_one_bad_sqs_answer(iam: Any, moto: str, proxy: AwsProxy, fault: str) -> None:
    """The events consumer's ReceiveMessage (JSON protocol) answered badly once: retried
    inside the call (botocore alone would read the half or empty JSON as "no messages"),
    never a failed receive, and the event is still applied."""
    seed(iam)
    queues = make_queues(moto, f"iam-key-exporter-events-{uuid.uuid4().hex[:8]}")
    cfg = config(proxy, events={"queue_url": queues.url, "wait_seconds": 1,
                                "visibility_timeout_seconds": 1})
    stats = ApiStats()
    sqs = queue.client(cfg, queues.url)  # the consumer's own client, as it builds it
    receives: list[int] = []
    sqs.meta.events.register(
        "after-call.sqs.ReceiveMessage",
        lambda parsed, **_: receives.append(parsed["ResponseMetadata"]["RetryAttempts"]))
    with polling(cfg, AccountSet(cfg, stats)) as poller:
        one_pass(poller)
        iam.create_access_key(UserName="alice")
        queues.send(body("CreateAccessKey", "alice"))
        once(proxy, fault, "ReceiveMessage")
        consumer = Consumer(cfg, poller, dead_letter_every=0.5, sqs=sqs)
        consumer.start()
        try:
            wait_until(lambda: consumer.stats.count("applied") == 1
                       and served(poller.snapshot, "alice") == (2, 0),
                       timeout=20, what="the event applied")
        finally:
            consumer.stop(timeout=0)
        snap = poller.publish()
    assert proxy.fault_budget == 0, "the fault was never injected: the test proves nothing"
    assert receives[0] == 1  # the first receive: one bad answer, retried at once
    assert consumer.stats.queue_up is True
    assert receive_errors(consumer) == {}
    assert (consumer.stats.count("failed"), consumer.stats.count("invalid")) == (0, 0)
    inv = inventory(snap)
    assert {u.name: (u.count("Active"), u.count("Inactive")) for u in inv.users} == dict(
        SEEDED, alice=(2, 0))
    s = samples(snap, cfg, stats)
    assert sample(s, "iam_exporter_collection_success", account_id=A) == 1
    sent = sum(v for (name, _), v in s.items() if name == "iam_exporter_iam_requests_total")
    assert sent == proxy.service_counts()["iam"]


def served(snap: Snapshot, name: str) -> tuple[int, int] | None:
    for u in inventory(snap).users:
        if u.name == name:
            return u.count("Active"), u.count("Inactive")
    return None


def receive_errors(consumer: Consumer) -> dict[str, float]:
    return {s.labels["code"]: s.value for m in consumer.stats.collect()
            if m.name == "iam_exporter_events_receive_errors" for s in m.samples}
