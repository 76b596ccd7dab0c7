"""The event path against moto's SQS and IAM (the shared moto server), in process:

queue (+ dead-letter queue, redrive after 2 receives) → Consumer → re-read from IAM →
Poller.apply. An AwsProxy in front of moto counts the IAM calls and injects faults.
Short long polls (1 s) and visibility timeouts (1 s) keep it fast.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.aws.accounts import AccountSet
from exporter.aws.errors import Deadline
from exporter.aws.session import ApiStats, Target
from exporter.config import Config
from exporter.events.consumer import Consumer
from exporter.inventory import AccessKey, AccountInventory, User
from exporter.poller import Poller
from tests.awsproxy import AwsProxy
from tests.daemon import parse_samples, sample
from tests.events_helpers import Queues, body, make_queues, wait_until
from tests.helpers import MOTO_ACCOUNT, add_user, aws, creds_in, make_config

A = MOTO_ACCOUNT
MEMBER = "444455556666"
# IAM actions of a full cycle of the list strategy without last-used dates.
IAM_ACTIONS = {"GetUser", "ListAccessKeys", "ListUsers", "GetAccountAuthorizationDetails",
               "GetAccountSummary", "AssumeRole", "GetCallerIdentity"}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config(endpoint: str, queues: Queues, **extra: Any) -> Config:
    return make_config(**merge({
        "aws": {"endpoint_url": endpoint, "max_attempts": 1},
        "collection": {"last_used": "off"},
        "events": {"queue_url": queues.url, "wait_seconds": 1,
                   "visibility_timeout_seconds": 1},
    }, extra))


@pytest.fixture
def queues(moto: str, aws_env: dict[str, str]) -> Queues:
    # A name of its own: a consumer of an earlier test still in its last long poll (not
    # waited for) cannot take this test's messages.
    return make_queues(moto, f"iam-key-exporter-events-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def run(proxy: AwsProxy, queues: Queues) -> Iterator[Callable[..., tuple[Poller, Consumer]]]:
    """Builds a poller (first cycle done) and its consumer; started unless start=False."""
    consumers: list[Consumer] = []

    def build(start: bool = True, **extra: Any) -> tuple[Poller, Consumer]:
        cfg = config(proxy.url, queues, **extra)
        poller = Poller(cfg, AccountSet(cfg, ApiStats()))
        snap = poller.run_cycle()
        assert all(a.success for a in snap.accounts), snap.accounts
        consumer = Consumer(cfg, poller, dead_letter_every=0.5)
        consumers.append(consumer)
        if start:
            consumer.start()
        return poller, consumer

    yield build
    for c in consumers:
        c.stop(timeout=0)


def keys(poller: Poller, user: str, account: str = A) -> dict[str, int] | None:
    """{status: keys} of the user as served, None when it is not served."""
    for st in poller.snapshot.accounts:
        if st.account_id == account and st.inventory is not None:
            for u in st.inventory.users:
                if u.name == user:
                    return {s: u.count(s) for s in ("Active", "Inactive") if u.count(s)}
    return None


def served(poller: Poller, user: str, account: str = A) -> User | None:
    for st in poller.snapshot.accounts:
        if st.account_id == account and st.inventory is not None:
            for u in st.inventory.users:
                if u.name == user:
                    return u
    return None


def the(poller: Poller, user: str) -> User:
    u = served(poller, user)
    assert u is not None, f"{user} is not served"
    return u


def results(c: Consumer) -> dict[str, int]:
    return {r: c.stats.count(r) for r in ("applied", "ignored", "invalid", "failed")}


def settled(c: Consumer, queues: Queues, **want: int) -> Callable[[], bool]:
    """The consumer counted at least these results and the queue is empty."""
    return lambda: all(c.stats.count(r) >= n for r, n in want.items()) and not queues.depth()


def iam_calls(proxy: AwsProxy) -> dict[str, int]:
    return {a: n for a, n in proxy.counts().items() if a in IAM_ACTIONS}


def metrics(c: Consumer) -> dict[Any, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(c.stats)
    return parse_samples(generate_latest(registry).decode())


# --- every event kind ------------------------------------------------------------------


def test_every_handled_event_kind_reaches_the_inventory(iam: Any, proxy: AwsProxy,
                                                        queues: Queues, run: Any) -> None:
    [first] = add_user(iam, "alice", ("Active",), tags={"Team": "payments"})
    poller, consumer = run(metrics={"user_tags": {"Team": "team"}})
    assert keys(poller, "alice") == {"Active": 1}

    def step(event: str, user: str, expect: Callable[[], bool], **kw: Any) -> None:
        queues.send(body(event, user, **kw))
        wait_until(expect, what=f"{event} applied")

    second = iam.create_access_key(UserName="alice")["AccessKey"]["AccessKeyId"]
    step("CreateAccessKey", "alice", lambda: keys(poller, "alice") == {"Active": 2})
    iam.update_access_key(UserName="alice", AccessKeyId=first, Status="Inactive")
    step("UpdateAccessKey", "alice",
         lambda: keys(poller, "alice") == {"Active": 1, "Inactive": 1}, key_id=first)
    iam.delete_access_key(UserName="alice", AccessKeyId=first)
    step("DeleteAccessKey", "alice", lambda: keys(poller, "alice") == {"Active": 1},
         key_id=first)
    add_user(iam, "bob", ("Active", "Active"), path="/ops/", tags={"Team": "ops"})
    step("CreateUser", "bob", lambda: keys(poller, "bob") == {"Active": 2})
    bob = the(poller, "bob")
    assert bob.path == "/ops/" and bob.tags == (("Team", "ops"),) and not bob.exempt
    iam.tag_user(UserName="bob", Tags=[{"Key": "iam-key-exporter/exempt", "Value": "true"},
                                       {"Key": "Team", "Value": "platform"}])
    step("TagUser", "bob", lambda: bool((u := served(poller, "bob")) and u.exempt))
    assert the(poller, "bob").tags == (("Team", "platform"),)
    iam.untag_user(UserName="bob", TagKeys=["iam-key-exporter/exempt", "Team"])
    step("UntagUser", "bob", lambda: bool((u := served(poller, "bob")) and not u.exempt))
    assert the(poller, "bob").tags == ()
    for k in iam.list_access_keys(UserName="bob")["AccessKeyMetadata"]:
        iam.delete_access_key(UserName="bob", AccessKeyId=k["AccessKeyId"])
    iam.delete_user(UserName="bob")
    step("DeleteUser", "bob", lambda: served(poller, "bob") is None)

    wait_until(settled(consumer, queues, applied=7))
    assert results(consumer) == {"applied": 7, "ignored": 0, "invalid": 0, "failed": 0}
    # The key already known kept its id; the new one is the one IAM created.
    assert [k.key_id for k in the(poller, "alice").keys] == [second]
    s = metrics(consumer)
    assert sample(s, "iam_exporter_events_received_total") == 7
    assert sample(s, "iam_exporter_events_total", result="applied") == 7
    assert sample(s, "iam_exporter_events_queue_up") == 1
    assert sample(s, "iam_exporter_events_dead_letter_messages") == 0
    applied_at = sample(s, "iam_exporter_events_last_applied_timestamp_seconds")
    assert applied_at is not None and abs(applied_at - time.time()) < 30
    delay = sample(s, "iam_exporter_events_last_applied_delay_seconds")
    assert delay is not None and 0 <= delay < 10


@pytest.mark.parametrize("event", ["CreateAccessKey", "UpdateAccessKey", "DeleteAccessKey"])
def test_self_service_shapes_name_the_caller(iam: Any, moto: str, queues: Queues, run: Any,
                                             event: str) -> None:
    """A user acting on its own keys: the request names no user."""
    add_user(iam, "carol")
    secret = iam.create_access_key(UserName="carol")["AccessKey"]
    as_carol = aws("iam", moto, {"aws_access_key_id": secret["AccessKeyId"],
                                 "aws_secret_access_key": secret["SecretAccessKey"]})
    own = secret["AccessKeyId"]
    if event != "CreateAccessKey":
        own = iam.create_access_key(UserName="carol")["AccessKey"]["AccessKeyId"]
    poller, consumer = run()
    want = {"CreateAccessKey": {"Active": 2}, "UpdateAccessKey": {"Active": 1, "Inactive": 1},
            "DeleteAccessKey": {"Active": 1}}[event]
    assert keys(poller, "carol") != want
    if event == "CreateAccessKey":
        as_carol.create_access_key()
    elif event == "UpdateAccessKey":
        as_carol.update_access_key(AccessKeyId=own, Status="Inactive")
    else:
        as_carol.delete_access_key(AccessKeyId=own)
    queues.send(body(event, "carol", self_service=True, key_id=own))
    wait_until(lambda: keys(poller, "carol") == want)
    wait_until(settled(consumer, queues, applied=1))


# --- accounts: a member account, and one not watched ---------------------------------


def test_member_account_event_is_applied_there(moto: str, aws_env: dict[str, str],
                                               proxy: AwsProxy, queues: Queues,
                                               run: Any) -> None:
    member = aws("iam", moto, creds_in(moto, MEMBER))
    add_user(member, "mallory", ("Active",))
    poller, consumer = run(accounts=[{"role_arn": f"arn:aws:iam::{MEMBER}:role/x"}])
    assert keys(poller, "mallory", MEMBER) == {"Active": 1}
    member.create_access_key(UserName="mallory")
    proxy.actions.clear()
    queues.send(body("CreateAccessKey", "mallory", account=MEMBER))
    wait_until(lambda: keys(poller, "mallory", MEMBER) == {"Active": 2})
    wait_until(settled(consumer, queues, applied=1))
    # One call, in the member account (its role's session is reused: no AssumeRole).
    assert iam_calls(proxy) == {"ListAccessKeys": 1}


def test_unwatched_account_costs_no_iam_call_and_is_deleted(iam: Any, proxy: AwsProxy,
                                                             queues: Queues, run: Any) -> None:
    add_user(iam, "alice", ("Active",))
    _poller, consumer = run()
    proxy.actions.clear()
    queues.send(body("CreateAccessKey", "alice", account="999988887777"),
                body("DeleteUser", "zed", account="999988887777"))
    wait_until(settled(consumer, queues, ignored=2))
    assert iam_calls(proxy) == {}
    assert results(consumer) == {"applied": 0, "ignored": 2, "invalid": 0, "failed": 0}
    assert queues.depth(queues.dlq_url) == 0


def test_events_that_need_nothing_cost_nothing(iam: Any, proxy: AwsProxy, queues: Queues,
                                               run: Any) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run(collection={"users": {"exclude_names": ["svc-.*"]}})
    proxy.actions.clear()
    queues.send(body("AttachUserPolicy", "alice"),
                body("CreateAccessKey", "alice", error="LimitExceeded"),
                json.dumps({"source": "aws.s3", "detail-type": "Object Created"}))
    wait_until(settled(consumer, queues, ignored=3))
    assert iam_calls(proxy) == {}
    # A user outside collection.users: read (to know its path), not exported.
    add_user(iam, "svc-build", ("Active",))
    queues.send(body("CreateUser", "svc-build"))
    wait_until(settled(consumer, queues, ignored=4))
    assert served(poller, "svc-build") is None
    assert results(consumer)["applied"] == 0


# --- duplicates and bursts -------------------------------------------------------------


def test_a_burst_of_100_events_for_one_user_is_one_reread(iam: Any, proxy: AwsProxy,
                                                          queues: Queues, run: Any) -> None:
    ids = add_user(iam, "alice", ("Active", "Active"))
    # A visibility timeout that outlasts the batch (10 receives, here a few hundred ms).
    poller, consumer = run(start=False, events={"visibility_timeout_seconds": 10})
    # The events of a rotation storm, out of order and duplicated; IAM's end state:
    # one key active, one inactive.
    iam.update_access_key(UserName="alice", AccessKeyId=ids[0], Status="Inactive")
    storm = []
    for i in range(100):
        kind = ("CreateAccessKey", "UpdateAccessKey", "DeleteAccessKey")[i % 3]
        storm.append(body(kind, "alice", key_id=ids[i % 2], when=time.time() - i))
    queues.send(*storm)
    proxy.actions.clear()
    consumer.start()
    wait_until(settled(consumer, queues, applied=100), timeout=20)
    assert keys(poller, "alice") == {"Active": 1, "Inactive": 1}
    assert results(consumer) == {"applied": 100, "ignored": 0, "invalid": 0, "failed": 0}
    calls = iam_calls(proxy)
    assert sum(calls.values()) <= 3, calls
    assert calls == {"ListAccessKeys": 1}


def test_duplicates_across_batches_come_out_exact(iam: Any, queues: Queues,
                                                  run: Any) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run()
    iam.create_access_key(UserName="alice")
    event = body("CreateAccessKey", "alice")
    for _ in range(3):  # the same message delivered again later (at-least-once)
        queues.send(event)
        time.sleep(0.3)
    wait_until(settled(consumer, queues, applied=3))
    assert keys(poller, "alice") == {"Active": 2}


# --- failures: unreadable messages, a throttled re-read, SQS down ---------------------


def test_malformed_bodies_go_to_the_dead_letter_queue(iam: Any, queues: Queues,
                                                      run: Any) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run()
    bad = ["not json", json.dumps({"source": "aws.iam", "detail-type": 5}),
           body("CreateAccessKey", "x" * 200), "[" * 50_000 + "]" * 50_000]
    queues.send(*bad)
    # Received and left: after maxReceiveCount (2) receives, SQS moves them.
    wait_until(lambda: queues.depth(queues.dlq_url) == len(bad), timeout=15)
    assert consumer.stats.count("invalid") >= 2 * len(bad)
    assert queues.depth() == 0
    assert consumer.alive()
    wait_until(lambda: sample(metrics(consumer),
                              "iam_exporter_events_dead_letter_messages") == len(bad))
    # And the consumer goes on with good events.
    iam.create_access_key(UserName="alice")
    queues.send(body("CreateAccessKey", "alice"))
    wait_until(lambda: keys(poller, "alice") == {"Active": 2})
    assert consumer.stats.count("failed") == 0


def test_a_throttled_reread_is_retried_and_nothing_is_lost(iam: Any, proxy: AwsProxy,
                                                           queues: Queues, run: Any) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run()
    iam.create_access_key(UserName="alice")
    proxy.modes["ListAccessKeys"] = "throttle"
    proxy.fault_budget = 1
    queues.send(body("CreateAccessKey", "alice"))
    wait_until(lambda: consumer.stats.count("failed") == 1)
    assert keys(poller, "alice") == {"Active": 1}
    # Back after the visibility timeout (1 s), and applied.
    wait_until(settled(consumer, queues, applied=1))
    assert keys(poller, "alice") == {"Active": 2}
    assert queues.depth(queues.dlq_url) == 0
    assert proxy.faults["ListAccessKeys"] == 1


def test_sqs_unreachable_then_back(iam: Any, proxy: AwsProxy, queues: Queues,
                                   run: Any) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run()
    wait_until(lambda: consumer.stats.queue_up is True)
    # SQS speaks JSON: the proxy names its requests "?"; IAM (query protocol) goes on.
    proxy.rule = lambda action, _: "reset" if action == "?" else None
    wait_until(lambda: sample(metrics(consumer), "iam_exporter_events_queue_up") == 0)
    s = metrics(consumer)
    errors = {dict(k[1])["code"]: v for k, v in s.items()
              if k[0] == "iam_exporter_events_receive_errors_total"}
    assert errors == {"ConnectionClosedError": errors.get("ConnectionClosedError")}, errors
    # Polling AWS is not affected.
    assert poller.run_cycle().accounts[0].success
    iam.create_access_key(UserName="alice")
    queues.send(body("CreateAccessKey", "alice"))
    proxy.rule = None
    wait_until(lambda: keys(poller, "alice") == {"Active": 2}, timeout=15)
    assert consumer.stats.queue_up is True and consumer.alive()


def test_stop_does_not_wait_for_a_long_poll(iam: Any, proxy: AwsProxy, queues: Queues,
                                            run: Any) -> None:
    add_user(iam, "alice")
    _poller, consumer = run(events={"wait_seconds": 20})
    wait_until(lambda: consumer.stats.queue_up is not None or proxy.counts()["?"] >= 2)
    started = time.monotonic()
    consumer.stop()
    assert time.monotonic() - started < 2


# --- the credential-report strategy ---------------------------------------------------


def test_credential_report_users_keep_the_reports_shape(iam: Any, queues: Queues,
                                                        run: Any) -> None:
    """With the credential report, keys have slots, not ids: an event keeps them so
    (no series changes labels between an event and the next cycle)."""
    add_user(iam, "alice", ("Active",))
    poller, _consumer = run(collection={"strategy": "credential-report"})
    before = the(poller, "alice")
    assert [(k.key_id, k.slot) for k in before.keys] == [(None, 1)]
    iam.create_access_key(UserName="alice")
    queues.send(body("CreateAccessKey", "alice"))
    wait_until(lambda: keys(poller, "alice") == {"Active": 2})
    after = the(poller, "alice")
    assert [(k.key_id, k.slot) for k in after.keys] == [(None, 1), (None, 2)]
    assert after.keys[0].created == before.keys[0].created


# --- the reconcile and events: whichever read IAM later wins ---------------------------


def test_reconcile_wins_over_older_events_never_over_newer_ones() -> None:
    cfg = make_config()
    data_time = [100.0]

    def alice(active: int) -> User:
        return User("alice", keys=tuple(AccessKey(f"AKIA{i}", "Active", 0.0)
                                        for i in range(active)))

    collected = [1]

    def collect(target: Target, cfg: Any, deadline: Deadline) -> AccountInventory:
        return AccountInventory(A, "credential-report", (alice(collected[0]),),
                                data_time=data_time[0])

    target = Target(cfg, ApiStats())
    poller = Poller(cfg, [target], collect=collect)
    poller.run_cycle()

    def served_keys() -> int:
        inv = poller.snapshot.accounts[0].inventory
        assert inv is not None
        return len(inv.users[0].keys)

    # Older than the data served: dropped.
    poller.apply([(target.key, "alice", alice(3), 90.0)])
    assert served_keys() == 1
    # Newer: applied, and it survives a cycle whose data is older than it (a credential
    # report generated before the change).
    poller.apply([(target.key, "alice", alice(2), 150.0)])
    assert served_keys() == 2
    data_time[0] = 120.0
    poller.run_cycle()
    assert served_keys() == 2
    # A cycle that read IAM after the event wins.
    data_time[0] = 200.0
    poller.run_cycle()
    assert served_keys() == 1
    # And a user an event saw deleted stays deleted until a newer cycle says otherwise.
    poller.apply([(target.key, "alice", None, 250.0)])
    data_time[0] = 240.0
    poller.run_cycle()
    inv = poller.snapshot.accounts[0].inventory
    assert inv is not None and inv.users == ()
