"""The event path against moto's SQS and IAM (the shared moto server), in process:

queue (+ dead-letter queue, redrive after 2 receives) → Consumer → the user at the head of
its account's read queue → re-read from IAM → the store → the served snapshot. An AwsProxy
in front of moto injects faults; the exporter's own ApiStats count its IAM calls. Short
long polls (1 s) and visibility timeouts (1 s) keep it fast.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats
from exporter.events.consumer import Consumer
from exporter.events.stats import RESULTS
from exporter.poller import Poller
from tests.awsproxy import AwsProxy
from tests.daemon import sample
from tests.events_helpers import (
    Queues,
    Runner,
    body,
    keys,
    make_queues,
    metrics,
    results,
    served,
    settled,
    the,
    wait_until,
)
from tests.events_helpers import config as events_config
from tests.helpers import MOTO_ACCOUNT, add_user, aws, creds_in, make_config

A = MOTO_ACCOUNT
MEMBER = "444455556666"


@pytest.fixture
def queues(moto: str, aws_env: dict[str, str]) -> Queues:
    # A name of its own: a consumer of an earlier test still in its last long poll (not
    # waited for) cannot take this test's messages.
    return make_queues(moto, f"iam-key-exporter-events-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def run(proxy: AwsProxy, queues: Queues) -> Iterator[Runner]:
    runner = Runner(proxy, queues)
    yield runner
    runner.close()


def only(**counts: int) -> dict[str, int]:
    """Every result counted, those not named 0."""
    return {r: counts.get(r, 0) for r in RESULTS}


# --- every event kind ------------------------------------------------------------------


def test_every_handled_event_kind_reaches_the_inventory(
        iam: Any, queues: Queues, run: Runner) -> None:
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
    assert results(consumer) == only(applied=7)
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
def test_self_service_shapes_name_the_caller(iam: Any, moto: str, queues: Queues, run: Runner,
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
                                               queues: Queues,
                                               run: Runner) -> None:
    member = aws("iam", moto, creds_in(moto, MEMBER))
    add_user(member, "mallory", ("Active",))
    poller, consumer = run(accounts=[{"role_arn": f"arn:aws:iam::{MEMBER}:role/x"}])
    assert keys(poller, "mallory", MEMBER) == {"Active": 1}
    member.create_access_key(UserName="mallory")
    before = run.iam_calls()
    queues.send(body("CreateAccessKey", "mallory", account=MEMBER))
    wait_until(lambda: keys(poller, "mallory", MEMBER) == {"Active": 2})
    wait_until(settled(consumer, queues, applied=1))
    # One call, in the member account.
    assert run.iam_calls() - before == {"ListAccessKeys": 1}


def test_unwatched_account_costs_no_iam_call_and_is_deleted(
        iam: Any, queues: Queues, run: Runner) -> None:
    add_user(iam, "alice", ("Active",))
    _poller, consumer = run()
    before = run.iam_calls()
    queues.send(body("CreateAccessKey", "alice", account="999988887777"),
                body("DeleteUser", "zed", account="999988887777"))
    wait_until(settled(consumer, queues, ignored=2))
    assert run.iam_calls() - before == {}
    assert results(consumer) == only(ignored=2)
    assert queues.depth(queues.dlq_url) == 0


def test_an_event_while_the_watched_account_id_is_unknown_is_never_dead_lettered(
        iam: Any, proxy: AwsProxy, queues: Queues) -> None:
    """STS fails, so the id of the default credentials' account is not known: an event
    might be for it. It comes back a few times, then is deleted (not dead-lettered); the
    account's first listing, once STS answers, reads the user as IAM has it."""
    add_user(iam, "alice", ("Active", "Active"))
    proxy.modes["GetCallerIdentity"] = "deny"
    cfg = events_config(proxy.url, queues, interval_seconds=1)
    poller = Poller(cfg, AccountSet(cfg, ApiStats()))
    consumer = Consumer(cfg, poller, dead_letter_every=0.5)
    try:
        poller.start()
        consumer.start()
        wait_until(lambda: proxy.faults["GetCallerIdentity"] > 0)
        queues.send(body("CreateAccessKey", "alice"))
        wait_until(lambda: consumer.stats.count("handed_over") == 1, timeout=15)
        assert consumer.stats.count("failed") >= 1
        assert served(poller, "alice") is None
        wait_until(lambda: not queues.depth())
        proxy.modes.clear()
        wait_until(lambda: keys(poller, "alice") == {"Active": 2}, timeout=15)
        assert queues.depth(queues.dlq_url) == 0
        assert results(consumer) == only(failed=results(consumer)["failed"], handed_over=1)
    finally:
        consumer.stop(timeout=0)
        poller.stop()


def test_events_that_need_nothing_cost_nothing(iam: Any, queues: Queues,
                                               run: Runner) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run(collection={"users": {"exclude_names": ["svc-.*"]}})
    before = run.iam_calls()
    queues.send(body("AttachUserPolicy", "alice"),
                body("CreateAccessKey", "alice", error="LimitExceeded"),
                json.dumps({"source": "aws.s3", "detail-type": "Object Created"}))
    wait_until(settled(consumer, queues, ignored=3))
    assert run.iam_calls() - before == {}
    # A user outside collection.users: read (to know its path), not exported.
    add_user(iam, "svc-build", ("Active",))
    queues.send(body("CreateUser", "svc-build"))
    wait_until(settled(consumer, queues, ignored=4))
    assert served(poller, "svc-build") is None
    assert results(consumer)["applied"] == 0


# --- duplicates and bursts -------------------------------------------------------------


def test_a_burst_of_100_events_for_one_user_is_one_reread(
        iam: Any, queues: Queues, run: Runner) -> None:
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
    before = run.iam_calls()
    consumer.start()
    wait_until(settled(consumer, queues, applied=100), timeout=20)
    # Published a moment after the read (the publisher joins what arrives with it).
    wait_until(lambda: keys(poller, "alice") == {"Active": 1, "Inactive": 1})
    assert results(consumer) == only(applied=100)
    calls = run.iam_calls() - before
    assert sum(calls.values()) <= 3, calls
    assert calls == {"ListAccessKeys": 1}


def test_duplicates_across_batches_come_out_exact(iam: Any, queues: Queues,
                                                  run: Runner) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run()
    iam.create_access_key(UserName="alice")
    event = body("CreateAccessKey", "alice")
    for _ in range(3):  # the same message delivered again later (at-least-once)
        queues.send(event)
        time.sleep(0.3)
    wait_until(settled(consumer, queues, applied=3))
    wait_until(lambda: keys(poller, "alice") == {"Active": 2})


# --- failures: unreadable messages, a throttled re-read, SQS down ---------------------


def test_malformed_bodies_go_to_the_dead_letter_queue(iam: Any, queues: Queues,
                                                      run: Runner) -> None:
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
                                                           queues: Queues, run: Runner) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run()
    iam.create_access_key(UserName="alice")
    proxy.modes["ListAccessKeys"] = "throttle"
    proxy.fault_budget = 1
    queues.send(body("CreateAccessKey", "alice"))
    wait_until(lambda: consumer.stats.count("failed") == 1)
    assert proxy.faults["ListAccessKeys"] == 1
    # The user stays first in its account's queue (tried again after 1 s) and the
    # message comes back after its back-off: applied, deleted, never dead-lettered.
    wait_until(settled(consumer, queues, applied=1))
    wait_until(lambda: keys(poller, "alice") == {"Active": 2})
    assert queues.depth(queues.dlq_url) == 0
    assert results(consumer) == only(failed=1, applied=1)
    assert proxy.faults["ListAccessKeys"] == 1


def test_without_get_user_key_events_of_known_users_still_apply(
        iam: Any, proxy: AwsProxy, queues: Queues, run: Runner) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run()
    proxy.modes["GetUser"] = "deny"  # a role from before iam:GetUser was in the policy
    iam.create_access_key(UserName="alice")
    add_user(iam, "newbie", ("Active",))
    queues.send(body("TagUser", "alice"), body("CreateUser", "newbie"))
    wait_until(lambda: keys(poller, "alice") == {"Active": 2})
    # An unknown user cannot be read without it: the message comes back, then is handed
    # over (the next listing finds the user); never dead-lettered.
    wait_until(lambda: consumer.stats.count("handed_over") == 1, timeout=15)
    assert consumer.stats.count("failed") >= 1
    assert served(poller, "newbie") is None
    assert consumer.stats.count("applied") == 1
    wait_until(lambda: not queues.depth())
    assert queues.depth(queues.dlq_url) == 0


def test_sqs_unreachable_then_back(iam: Any, proxy: AwsProxy, queues: Queues,
                                   run: Runner) -> None:
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
    assert poller.run_once(timeout=30).accounts[0].success
    iam.create_access_key(UserName="alice")
    queues.send(body("CreateAccessKey", "alice"))
    proxy.rule = None
    wait_until(lambda: keys(poller, "alice") == {"Active": 2}, timeout=15)
    assert consumer.stats.queue_up is True and consumer.alive()


def test_stop_does_not_wait_for_a_long_poll(iam: Any, proxy: AwsProxy, queues: Queues,
                                            run: Runner) -> None:
    add_user(iam, "alice")
    _poller, consumer = run(events={"wait_seconds": 20})
    wait_until(lambda: consumer.stats.queue_up is not None or proxy.counts()["?"] >= 2)
    started = time.monotonic()
    consumer.stop()
    assert time.monotonic() - started < 2


# --- the credential-report strategy ---------------------------------------------------


def test_credential_report_users_keep_the_reports_shape(iam: Any, queues: Queues,
                                                        run: Runner) -> None:
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


# --- the store: whichever read IAM later wins -------------------------------------------


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_credential_report_never_undoes_a_newer_event_read(
        iam: Any, proxy: AwsProxy) -> None:
    """The credential report is read as of its generation time: a report older than an
    event's re-read leaves the event's data (keys, a deletion, a creation) in place; a
    newer one wins. moto's report is live; the proxy sets its GeneratedTime and leaves
    out the rows of users it "predates"."""
    add_user(iam, "alice", ("Active",))
    generated = [time.time() - 3600]
    predates: set[str] = set()

    def rewrite(action: str, data: bytes) -> bytes:
        if action != "GetCredentialReport":
            return data
        data = re.sub(rb"<GeneratedTime>[^<]*</GeneratedTime>",
                      f"<GeneratedTime>{iso(generated[0])}</GeneratedTime>".encode(), data)
        m = re.search(rb"<Content>([^<]*)</Content>", data)
        assert m is not None
        rows = base64.b64decode(m.group(1)).decode().splitlines()
        kept = "\n".join(r for r in rows if r.split(",")[0] not in predates)
        return data.replace(m.group(1), base64.b64encode(kept.encode()))

    proxy.rewrite = rewrite
    cfg = make_config(aws={"endpoint_url": proxy.url, "max_attempts": 1},
                      collection={"strategy": "credential-report", "last_used": "off"})
    poller = Poller(cfg, AccountSet(cfg, ApiStats()))
    try:
        def once() -> None:
            snap = poller.run_once(timeout=30)
            assert snap.accounts and snap.accounts[0].success, snap.accounts

        def event(user: str, name: str) -> float:
            """The user re-read for an event; returns a time before the re-read."""
            before = time.time()
            ticket = poller.request(poller.targets[0], user, {name})
            assert ticket is not None and ticket.wait(10) and ticket.ok, ticket
            return before

        def served_keys(user: str) -> int | None:
            got = keys(poller, user)
            return None if got is None else sum(got.values())

        once()
        assert served_keys("alice") == 1
        new = iam.create_access_key(UserName="alice")["AccessKey"]["AccessKeyId"]
        read = event("alice", "CreateAccessKey")
        poller.build()
        assert served_keys("alice") == 2
        # A report generated before the event's re-read (IAM showed one key then): the
        # event's keys stay.
        iam.delete_access_key(UserName="alice", AccessKeyId=new)
        generated[0] = read - 10
        once()
        assert served_keys("alice") == 2
        # A report generated after it wins.
        generated[0] = time.time()
        once()
        assert served_keys("alice") == 1

        # An event saw the user deleted: a report from before the deletion that still
        # lists it neither brings it back nor leaves a user waiting for its first read.
        proxy.rule = lambda action, params: (
            "no_such_entity" if action == "GetUser" and params.get("UserName") == ["alice"]
            else None)
        read = event("alice", "DeleteUser")
        poller.build()
        assert served_keys("alice") is None
        proxy.rule = None
        generated[0] = read - 10
        once()
        assert served_keys("alice") is None
        assert poller.snapshot.accounts[0].never_read == 0
        # Until a newer report says otherwise.
        generated[0] = time.time()
        once()
        assert served_keys("alice") == 1

        # An event saw a user created: a report from before its creation (without it)
        # does not drop it; a newer report without it does.
        add_user(iam, "bob", ("Active", "Active"))
        predates.add("bob")
        read = event("bob", "CreateUser")
        poller.build()
        assert served_keys("bob") == 2
        generated[0] = read - 10
        once()
        assert served_keys("bob") == 2
        generated[0] = time.time()
        once()
        assert served_keys("bob") is None
    finally:
        poller.stop()
