"""Continuous reconciliation (issue 18): the acceptance tests.

The exporter's real parts (AccountSet, Poller, its account loops and queues, the store,
botocore, the events consumer) against moto — IAM and SQS — behind tests/awsproxy.py,
which adds what moto cannot do: IAM's throttling by rate (a token bucket per account), a
held or failing answer for one user, a failing SQS call. Waits are event-driven; the
budgets and intervals only set how long a pass takes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from exporter import web
from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats
from exporter.config import Config
from exporter.events.consumer import Consumer
from exporter.inventory import AccountState, Snapshot, User
from exporter.metrics import Exposition, RenderInput, render
from exporter.poller import Poller
from exporter.reconcile import AccountLoop
from exporter.workqueue import ReadQueue
from tests.awsproxy import AwsProxy, TokenBucket
from tests.daemon import sample
from tests.events_helpers import (
    Queues,
    Runner,
    body,
    keys,
    make_queues,
    metrics,
    served,
    wait_until,
)
from tests.events_helpers import config as events_config
from tests.helpers import MOTO_ACCOUNT, add_user, make_config
from tests.passes import PollerFor, read_at
from tests.test_budget import samples
from tests.test_degrade import add_key, deny_user, seed

A = MOTO_ACCOUNT


def config(proxy: AwsProxy, **kw: Any) -> Config:
    aws = {"endpoint_url": proxy.url, "max_requests_per_second": 1000, **kw.pop("aws", {})}
    collection = {"last_used": "off", **kw.pop("collection", {})}
    return make_config(aws=aws, collection=collection, **kw)


def state(snap: Snapshot) -> AccountState:
    (st,) = snap.accounts
    return st


def users(snap: Snapshot) -> dict[str, User]:
    inv = state(snap).inventory
    return {} if inv is None else {u.name: u for u in inv.users}


def counts(snap: Snapshot) -> dict[str, tuple[int, int]]:
    return {n: (u.count("Active"), u.count("Inactive")) for n, u in users(snap).items()}


def loop_of(p: Poller) -> AccountLoop:
    """The only account's loop (its store holds each user's read time)."""
    (loop,) = p._loops.values()
    return loop


def reads(proxy: AwsProxy) -> list[tuple[float, str]]:
    """Records every ListAccessKeys IAM answers as (monotonic time, user), in order."""
    seen: list[tuple[float, str]] = []

    def rule(action: str, params: dict[str, list[str]]) -> None:
        if action == "ListAccessKeys":
            seen.append((time.monotonic(), params["UserName"][0]))

    proxy.rule = rule
    return seen


@pytest.fixture
def queues(moto: str, aws_env: dict[str, str]) -> Queues:
    return make_queues(moto, f"iam-key-exporter-events-{uuid.uuid4().hex[:8]}", max_receive=3)


@pytest.fixture
def run(proxy: AwsProxy, queues: Queues) -> Iterator[Runner]:
    runner = Runner(proxy, queues)
    yield runner
    runner.close()


# --------------------------------------------------------------------------- 1. no starvation


USERS, BUDGET, INTERVAL = 300, 20, 10


def test_a_budget_below_the_need_reads_every_user_in_turn_and_ages_them_evenly(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    """300 users at 20 requests a second need 15 s a pass, more than the 10 s interval:
    nobody starves. Every user is exported exactly after the first pass, a key added to
    the last listed user meanwhile shows within two passes, and users are read in turn, so
    their read ages differ by at most about one pass."""
    want = seed(USERS)
    listed = [u["UserName"] for u in iam.get_account_authorization_details(
        Filter=["User"], MaxItems=1000)["UserDetailList"]]
    assert sorted(listed) == sorted(want)
    last = listed[-1]
    proxy.bucket = TokenBucket(rate=BUDGET + 5, burst=5)  # IAM's quota, above the budget
    seen = reads(proxy)
    cfg = config(proxy, interval_seconds=INTERVAL,
                 aws={"max_requests_per_second": BUDGET})
    p, stats = poller_for(cfg)
    p.start()

    # The first pass has started (the listing is done, users are being read): a key
    # for the last listed user.
    wait_until(lambda: len(seen) >= 5, timeout=20)
    add_key(last)
    want[last] = (want[last][0] + 1, want[last][1])
    added = len(seen)

    # The first pass ends: every user exported, exactly, the new key too.
    first = wait_until(lambda: s if state(s := p.build()).last_success else None,
                       timeout=30, every=0.02)
    assert counts(first) == want
    st = state(first)
    assert st.success and st.never_read == 0
    # The budget cannot hold the interval, and says so.
    assert st.needed_rate == pytest.approx((USERS + 2) / INTERVAL)
    assert st.needed_rate > BUDGET
    shown = next(i for i, (_, name) in enumerate(seen) if name == last and i >= added)
    assert shown - added < 2 * USERS

    # Half of the second pass: every user was read once before any is read a third time,
    # in turn, and their read ages spread by about one turn, never more.
    wait_until(lambda: len(seen) >= USERS * 3 // 2, timeout=30, every=0.02)
    order = [name for _, name in seen]
    assert max(order.count(n) for n in want) <= 2
    # A turn: every user once, give or take the calls waiting for the budget (they go in
    # no particular order).
    turn = USERS + USERS // 4
    for i in range(len(order) - turn + 1):
        assert set(order[i:i + turn]) == set(want), f"a user missing from reads {i}.."
    # The store's read times (taken in queue order) spread by at most one turn's time.
    read_at = [at for _, at in loop_of(p).store.members() if at is not None]
    assert len(read_at) == USERS
    spread = max(read_at) - min(read_at)
    assert spread <= seen[-1][0] - seen[-turn][0]
    assert spread < 2 * USERS / BUDGET  # bounded: about one pass at the budget's pace
    # And /metrics says as much: the oldest read is about one pass old, not more.
    snap = p.build()
    oldest = state(snap).oldest_read
    assert oldest is not None and oldest >= min(read_at)
    assert time.time() - oldest < 2 * USERS / BUDGET
    assert counts(snap) == want
    # Under the quota: nothing was throttled.
    assert not any(thr for _, _, thr in proxy.bucket.requests())
    assert stats.counts().budget[A] == BUDGET


# --------------------------------------------------------------------------- 2. newer read wins


class Hold:
    """Holds the next answer to alice's ListAccessKeys (already read from moto, so it is
    IAM's state before anything the test changes meanwhile) until released."""

    def __init__(self, proxy: AwsProxy, user: str = "alice") -> None:
        self.marker = f"<UserName>{user}</UserName>".encode()
        self.armed = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        proxy.rewrite = self.rewrite

    def arm(self) -> None:
        self.held.clear()
        self.release.clear()
        self.armed.set()

    def rewrite(self, action: str, data: bytes) -> bytes:
        if action == "ListAccessKeys" and self.marker in data and self.armed.is_set():
            self.armed.clear()
            self.held.set()
            self.release.wait(20)
        return data


def test_an_event_and_a_poll_of_one_user_in_either_order_end_with_the_newer_read(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    """One user's reads never overlap (its queue hands it to one worker at a time):
    whichever of a poll and an event came second reads IAM after the first ended. And
    the store keeps the newer read whatever order reads end in (the credential report
    against events: tests/test_events.py)."""
    ids = add_user(iam, "alice", ("Active",))
    for name in ("bob", "carol"):
        add_user(iam, name, ("Active",))
    p, _ = poller_for(config(proxy, aws={"max_attempts": 1}))
    snap = p.run_once(timeout=30)
    assert counts(snap)["alice"] == (1, 0)
    target = p.targets[0]
    store = loop_of(p).store
    hold = Hold(proxy)
    lists = lambda: proxy.counts()["GetAccountAuthorizationDetails"]  # noqa: E731

    # (a) A poll of alice has IAM's answer (one key) in hand; the key changes; an event
    # names alice; the poll's answer arrives; the event's read follows it.
    hold.arm()
    polled: list[Snapshot] = []
    poll = threading.Thread(target=lambda: polled.append(p.run_once(timeout=30)))
    poll.start()
    assert hold.held.wait(10)
    changed = time.time()
    iam.create_access_key(UserName="alice")
    ticket = p.request(target, "alice", {"CreateAccessKey"})
    assert ticket is not None
    hold.release.set()
    assert ticket.wait(10) and ticket.ok
    poll.join(30)
    assert polled
    assert counts(p.build())["alice"] == (2, 0)
    at = read_at(store, "alice")
    assert at is not None and at > changed
    # A read that began before it and ends only now changes nothing.
    assert not store.observe("alice", (), at - 1)
    assert counts(p.build())["alice"] == (2, 0)

    # (b) An event's re-read of alice has IAM's answer (two keys) in hand; a key is
    # deleted; a poll of every user is asked for; the event's answer arrives (older than
    # the change); the poll reads alice again after it.
    hold.arm()
    ticket = p.request(target, "alice", {"DeleteAccessKey"})
    assert ticket is not None
    assert hold.held.wait(10)
    changed = time.time()
    iam.delete_access_key(UserName="alice", AccessKeyId=ids[0])
    polled.clear()
    before = lists()
    poll = threading.Thread(target=lambda: polled.append(p.run_once(timeout=30)))
    poll.start()
    wait_until(lambda: lists() > before)  # the poll is under way (its listing is done)
    hold.release.set()
    assert ticket.wait(10) and ticket.ok
    poll.join(30)
    assert polled
    assert counts(polled[0])["alice"] == (1, 0)
    at = read_at(store, "alice")
    assert at is not None and at > changed
    assert not store.observe("alice", (), at - 1)
    assert counts(p.build()) == {"alice": (1, 0), "bob": (1, 0), "carol": (1, 0)}


# --------------------------------------------------------------------------- 3. readiness


def test_readyz_answers_503_until_every_user_was_read_once_then_200(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    want = seed(40)
    cfg = config(proxy, aws={"max_requests_per_second": 8})  # about 5 s for the pass
    stats = ApiStats()
    store = web.Store(Exposition.of(RenderInput(Snapshot(), stats.counts(),
                                                cfg.interval_seconds)))
    app = Client(web.App(store, None))
    # Each publication: what /readyz answers then, and how far the reads were.
    answers: list[tuple[int, int | None, bool]] = []

    def publish(snap: Snapshot) -> None:
        store.set(Exposition.of(RenderInput(snap, stats.counts(), cfg.interval_seconds)))
        st = snap.accounts[0] if snap.accounts else None
        answers.append((app.get("/readyz").status_code,
                        st.never_read if st is not None else None,
                        st is not None and st.inventory is not None))

    p = Poller(cfg, AccountSet(cfg, stats), publish=publish)
    try:
        assert app.get("/readyz").status_code == 503
        p.start()
        wait_until(lambda: answers and answers[-1][0] == 200, timeout=30)
        first = next(i for i, a in enumerate(answers) if a[0] == 200)
        # Not ready while users were still unread (at least one such publication: the
        # pass takes a few seconds, publications come every 2 s).
        assert any(never for _, never, listed in answers[:first] if listed)
        assert all(code == 503 for code, _, _ in answers[:first])
        # Ready exactly when every user had been read, and from then on.
        assert answers[first][1:] == (0, True)
        assert counts(p.build()) == want
        assert app.get("/readyz").status_code == 200
    finally:
        p.stop()


# --------------------------------------------------------------------------- 4. never DLQ'd


VISIBILITY, MAX_RECEIVES = 2, 3


def test_a_reread_failing_longer_than_the_redrive_is_handed_over_never_dead_lettered(
        iam: Any, proxy: AwsProxy, queues: Queues, run: Runner) -> None:
    add_user(iam, "alice", ("Active",))
    poller, consumer = run(events={"visibility_timeout_seconds": VISIBILITY})
    iam.create_access_key(UserName="alice")
    proxy.rule = deny_user("alice", "throttle")  # IAM throttles alice's reads
    started = time.monotonic()
    queues.send(body("CreateAccessKey", "alice"), "not an event")
    # The message came back a few times, then was deleted (handed over): alice stays
    # first in her account's queue.
    wait_until(lambda: consumer.stats.count("handed_over") == 1, timeout=30)
    assert consumer.stats.count("failed") >= 1
    assert keys(poller, "alice") == {"Active": 1}  # the last known keys meanwhile
    # Failing for longer than visibility × maxReceiveCount.
    time.sleep(max(0.0, VISIBILITY * MAX_RECEIVES + 1 - (time.monotonic() - started)))
    assert keys(poller, "alice") == {"Active": 1}
    proxy.rule = None
    # Once IAM answers, alice is exact: no resync (hourly) needed, no message left.
    wait_until(lambda: keys(poller, "alice") == {"Active": 2}, timeout=40)
    # The unreadable message, and only it, goes to the dead-letter queue.
    wait_until(lambda: queues.depth(queues.dlq_url) == 1, timeout=30)
    assert queues.depth() == 0
    dead = queues.sqs.receive_message(QueueUrl=queues.dlq_url,
                                      MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in dead] == ["not an event"]
    assert consumer.stats.count("invalid") == MAX_RECEIVES
    assert consumer.stats.count("handed_over") == 1
    assert consumer.stats.count("applied") == 0


# --------------------------------------------------------------------------- 5. tags kept


EXEMPT = {"iam-key-exporter/exempt": "true"}


def test_a_failed_tag_listing_keeps_each_users_exemption_and_reports_the_gap(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    add_user(iam, "bob", ("Active", "Active"), tags={**EXEMPT, "Team": "ops"})
    add_user(iam, "carol", ("Active", "Active"), tags={"Team": "dev"})
    cfg = config(proxy, metrics={"user_tags": {"Team": "team"}})
    p, stats = poller_for(cfg)

    def families(snap: Snapshot) -> dict[str, Any]:
        text = render(RenderInput(snap, stats.counts(), cfg.interval_seconds, cfg.metrics))
        return {f.name: f for f in text_string_to_metric_families(text.decode())}

    def info(snap: Snapshot) -> dict[str, tuple[str, str]]:
        got = samples(families(snap), "iam_user_info")
        return {dict(k)["user_name"]: (dict(k)["exempt"], dict(k)["team"]) for k in got}

    snap = p.run_once(timeout=30)
    assert info(snap) == {"bob": ("true", "ops"), "carol": ("false", "dev")}
    assert samples(families(snap), "iam_exporter_collection_warnings") == {}

    proxy.modes["GetAccountAuthorizationDetails"] = "deny"
    before = proxy.counts()["ListUsers"]
    snap = p.run_once(timeout=30)
    assert proxy.counts()["ListUsers"] > before  # listed without tags
    st = state(snap)
    assert st.success
    # Exempt and tagged as last known; the headline count still leaves bob out.
    assert info(snap) == {"bob": ("true", "ops"), "carol": ("false", "dev")}
    fams = families(snap)
    assert samples(fams, "iam_account_users_with_multiple_active_keys") == {
        (("account_id", A),): 1.0}
    assert samples(fams, "iam_exporter_collection_warnings") == {
        (("account_id", A), ("code", "AccessDenied"),
         ("operation", "GetAccountAuthorizationDetails")): 1.0}


# --------------------------------------------------------------------------- 6. delete fails


def test_a_failed_delete_is_counted_as_such_not_as_applied(
        iam: Any, proxy: AwsProxy, queues: Queues, run: Runner) -> None:
    add_user(iam, "alice", ("Active",))
    # A visibility timeout that leaves time to see the failure before it comes back.
    poller, consumer = run(events={"visibility_timeout_seconds": 3})
    iam.create_access_key(UserName="alice")
    proxy.rule = lambda _, params: ("http503" if params.get("Action") == ["DeleteMessageBatch"]
                                    else None)
    queues.send(body("CreateAccessKey", "alice"))
    wait_until(lambda: consumer.stats.count("delete_failed") == 1, timeout=15)
    proxy.rule = None
    wait_until(lambda: keys(poller, "alice") == {"Active": 2})  # read all the same
    s = metrics(consumer)
    assert sample(s, "iam_exporter_events_delete_failures_total") == 1
    assert sample(s, "iam_exporter_events_total", result="delete_failed") == 1
    assert sample(s, "iam_exporter_events_total", result="applied") == 0
    # It comes back (it was not deleted), and is handled and deleted then.
    wait_until(lambda: consumer.stats.count("applied") == 1 and not queues.depth(),
               timeout=20)
    s = metrics(consumer)
    assert sample(s, "iam_exporter_events_delete_failures_total") == 1
    assert sample(s, "iam_exporter_events_total", result="applied") == 1
    assert queues.depth(queues.dlq_url) == 0


# --------------------------------------------------------------------------- 7. during a pass


def test_an_event_during_a_long_pass_is_published_before_the_pass_ends(
        iam: Any, proxy: AwsProxy, queues: Queues, poller_for: PollerFor) -> None:
    want = seed(100)
    victim = "user-0099"  # listed last: the pass reads it last
    seen = reads(proxy)
    # A visibility timeout as in production: the event's read waits its turn at the
    # budget (behind the reads already under way), well inside it.
    cfg = events_config(proxy.url, queues, aws={"max_requests_per_second": 20},
                        events={"visibility_timeout_seconds": 30})
    published: list[Snapshot] = []
    p, _ = poller_for(cfg, publish=published.append)
    consumer = Consumer(cfg, p, dead_letter_every=0.5)
    try:
        consumer.start()
        p.start()
        wait_until(lambda: len(seen) >= 5, timeout=20)  # the pass is under way
        add_key(victim)
        want[victim] = (want[victim][0] + 1, want[victim][1])
        queues.send(body("CreateAccessKey", victim))
        wait_until(lambda: consumer.stats.count("applied") == 1, timeout=20)
        wait_until(lambda: any(state(s).last_success for s in published if s.accounts),
                   timeout=30)
    finally:
        consumer.stop(timeout=0)
    snaps = [s for s in published if s.accounts]
    shown = next(i for i, s in enumerate(snaps) if counts(s).get(victim) == want[victim])
    ended = next(i for i, s in enumerate(snaps) if state(s).last_success)
    # Published while the pass was still reading users.
    assert shown < ended
    assert state(snaps[shown]).never_read > 0
    assert state(snaps[shown]).last_success is None
    # The event's read was the victim's read in this pass: the pass did not read it
    # again (nor undo it).
    assert [n for _, n in seen].count(victim) == 1
    assert counts(snaps[ended]) == want
    assert all(counts(s).get(victim) == want[victim] for s in snaps[shown:])
    assert served_keys(p, victim) == want[victim]


def served_keys(p: Poller, user: str) -> tuple[int, int] | None:
    u = served(p, user)
    return None if u is None else (u.count("Active"), u.count("Inactive"))


# --------------------------------------------------------------------------- the queue


def test_a_user_rescheduled_while_read_is_not_lost_from_the_queue() -> None:
    """A worker reschedules its user before it is done with it; another worker looking
    at the queue meanwhile must keep that entry, not drop it (the user would never be
    polled again). A resync during a read: tests/test_workqueue.py."""
    now = [1000.0]
    q = ReadQueue(clock=lambda: now[0])
    q.list_at(float("inf"))
    q.schedule("alice", 0.0)
    item = q.get(0)
    assert item is not None and item.name == "alice"
    q.schedule("alice", now[0] + 60)  # its next read, an interval on
    assert q.get(0) is None  # another worker: nothing due
    q.done(item)
    now[0] += 61
    again = q.get(0)
    assert again is not None and (again.kind, again.name) == ("read", "alice")
