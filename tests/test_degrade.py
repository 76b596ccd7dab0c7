"""Degrading per user, not per account (issue 15 §2–§4): one bad user, one bad answer,
sustained throttling, and the smaller defects found on the way.

The exporter's real reads (AccountSet, Poller, its account loops, botocore) against moto
behind tests/awsproxy.py, which injects what moto cannot do: a fault for one user only,
a rewritten answer, a truncated body, and IAM's throttling by rate (a token bucket per
account). Every case ends with the other users' counts exact.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from werkzeug.test import Client

from exporter import reconcile, web
from exporter.aws import collect
from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats, Target
from exporter.config import Config
from exporter.inventory import AccountState, Snapshot, User
from exporter.metrics import Exposition, RenderInput
from exporter.poller import Poller
from tests.awsproxy import AwsProxy, TokenBucket
from tests.events_helpers import wait_until
from tests.helpers import MOTO_ACCOUNT, make_config
from tests.passes import PollerFor
from tests.test_budget import families, samples

A = MOTO_ACCOUNT
KINDS = (("Active",), ("Active", "Inactive"), (), ("Active", "Active"), ("Inactive",))
DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


def seed(n: int) -> dict[str, tuple[int, int]]:
    """n users with keys in moto itself (its in-process backend, not the proxy; fast),
    every key with its own last-used date; returns name → (active, inactive)."""
    from moto.iam.models import AccessKeyLastUsed, iam_backends

    backend = iam_backends[A]["global"]
    want = {}
    for i in range(n):
        statuses = KINDS[i % len(KINDS)]
        name = f"user-{i:04d}"
        backend.create_user("us-east-1", name)
        for k, status in enumerate(statuses):
            key = backend.create_access_key(name, status=status)
            key.last_used = AccessKeyLastUsed(DAY0 + timedelta(days=i, hours=k), "iam",
                                              "us-east-1")
        want[name] = (statuses.count("Active"), statuses.count("Inactive"))
    return want


def add_key(name: str, status: str = "Active") -> str:
    from moto.iam.models import iam_backends

    return str(iam_backends[A]["global"].create_access_key(name, status=status).access_key_id)


def config(proxy: AwsProxy, **kw: Any) -> Config:
    aws = {"endpoint_url": proxy.url, "max_requests_per_second": 1000, **kw.pop("aws", {})}
    collection = {"last_used": "off", **kw.pop("collection", {})}
    return make_config(aws=aws, collection=collection, **kw)


def run_once(p: Poller) -> Snapshot:
    """A pass on demand: every user read once from now."""
    snap = p.run_once(timeout=60)
    assert snap.ready, snap.accounts
    return snap


def state(snap: Snapshot) -> AccountState:
    (st,) = snap.accounts
    return st


def counts(snap: Snapshot, fresh_only: bool = False) -> dict[str, tuple[int, int]]:
    st = state(snap)
    assert st.success, st.error
    assert st.inventory is not None
    return {u.name: (u.count("Active"), u.count("Inactive")) for u in st.inventory.users
            if not (fresh_only and u.stale)}


def user(snap: Snapshot, name: str) -> User:
    inv = state(snap).inventory
    assert inv is not None
    (u,) = [u for u in inv.users if u.name == name]
    return u


def deny_user(victim: str, fault: str = "deny", action: str = "ListAccessKeys",
              seen: list[tuple[str, str]] | None = None) -> Any:
    """A proxy rule: the fault for one user's calls of one action, nothing for others."""

    def rule(act: str, params: dict[str, list[str]]) -> str | None:
        name = (params.get("UserName") or params.get("AccessKeyId") or [""])[0]
        if seen is not None and act == action:
            seen.append((act, name))
        return fault if act == action and name == victim else None

    return rule


# --------------------------------------------------------------------------- §3 one bad user


def unread_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "exporter.reconcile"
            and "could not be read" in r.getMessage()]


def test_one_user_denied_leaves_the_others_exact_and_that_user_marked(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor,
        caplog: pytest.LogCaptureFixture) -> None:
    want = seed(300)
    victim = "user-0123"
    p, stats = poller_for(config(proxy))
    assert counts(run_once(p)) == want

    proxy.rule = deny_user(victim)
    with caplog.at_level(logging.WARNING, logger="exporter.reconcile"):
        snap = run_once(p)
    st = state(snap)
    assert st.success
    # The 299 others, exact and fresh.
    fresh = counts(snap, fresh_only=True)
    assert len(fresh) == 299 and victim not in fresh
    assert fresh == {n: c for n, c in want.items() if n != victim}
    # The victim: last known keys, marked.
    v = user(snap, victim)
    assert v.stale == "AccessDenied"
    assert (v.count("Active"), v.count("Inactive")) == want[victim]
    assert counts(snap) == want
    fams = families(snap, stats)
    assert samples(fams, "iam_user_unread") == {
        (("account_id", A), ("reason", "AccessDenied"), ("user_name", victim)): 1.0}
    assert samples(fams, "iam_account_unread_users") == {(("account_id", A),): 1.0}
    assert samples(fams, "iam_exporter_collection_success") == {(("account_id", A),): 1.0}
    # Tried once (denied: again after an interval, not at once), and said so in the log.
    assert proxy.faults["ListAccessKeys"] == 1
    (line,) = unread_lines(caplog)
    assert getattr(line, "user_name", None) == victim
    assert getattr(line, "error", None) == "AccessDenied"


def test_a_user_denied_from_the_first_pass_is_left_out_and_logged(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor,
        caplog: pytest.LogCaptureFixture) -> None:
    want = seed(40)
    victim = "user-0007"
    proxy.rule = deny_user(victim)
    p, stats = poller_for(config(proxy))
    with caplog.at_level(logging.WARNING, logger="exporter.reconcile"):
        snap = run_once(p)
    assert counts(snap) == {n: c for n, c in want.items() if n != victim}
    inv = state(snap).inventory
    assert inv is not None and inv.unread == ((victim, "/", "AccessDenied"),)
    fams = families(snap, stats)
    assert samples(fams, "iam_user_unread") == {
        (("account_id", A), ("reason", "AccessDenied"), ("user_name", victim)): 1.0}
    assert samples(fams, "iam_account_unread_users") == {(("account_id", A),): 1.0}
    assert [getattr(r, "user_name", None) for r in unread_lines(caplog)] == [victim]


def test_every_user_denied_is_every_user_marked_not_a_silent_empty_account(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    """ListAccessKeys denied for everyone (a role without the permission): the account's
    pass fails (a missing permission, not one odd user), and every user says why it has no
    keys."""
    want = seed(5)
    proxy.modes["ListAccessKeys"] = "deny"
    p, stats = poller_for(config(proxy))
    snap = run_once(p)
    st = state(snap)
    assert not st.success and st.error == "AccessDenied"
    assert snap.error_counts == {(A, "AccessDenied"): 1}
    assert st.inventory is not None and st.inventory.users == ()
    assert sorted(st.inventory.unread) == sorted((n, "/", "AccessDenied") for n in want)
    fams = families(snap, stats)
    assert samples(fams, "iam_account_unread_users") == {(("account_id", A),): 5.0}
    assert samples(fams, "iam_account_watched_users") == {(("account_id", A),): 0.0}


def test_a_user_throttled_through_every_attempt_is_retried_later_then_stale(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    want = seed(60)
    victim = "user-0000"  # the first in line: its retry must come after the others
    # One call at a time: the order of the requests is the order of the queue.
    p, _ = poller_for(config(proxy, aws={"max_attempts": 2},
                             collection={"concurrency": 1}))
    assert counts(run_once(p)) == want

    monkeypatch.setattr(reconcile, "RETRY_SECONDS", 0.2)
    seen: list[tuple[str, str]] = []
    proxy.rule = deny_user(victim, "throttle", seen=seen)
    snap = run_once(p)
    assert counts(snap, fresh_only=True) == {n: c for n, c in want.items() if n != victim}
    v = user(snap, victim)
    assert v.stale == "Throttling"
    assert (v.count("Active"), v.count("Inactive")) == want[victim]
    assert counts(snap) == want
    # Two attempts (botocore's), then, after every other user was read, two more.
    wait_until(lambda: sum(1 for _, n in seen if n == victim) >= 4)
    order = [name for _, name in seen]
    mine = [i for i, n in enumerate(order) if n == victim]
    others = [i for i, n in enumerate(order) if n != victim]
    assert mine[:2] == [0, 1] and len(others) == len(want) - 1
    assert mine[2] > max(others)
    # And once IAM answers, the retry makes it fresh (no new pass needed).
    proxy.rule = None
    wait_until(lambda: not user(p.build(), victim).stale)
    assert counts(p.build()) == want


def test_a_user_throttled_only_at_first_is_read_fresh_on_the_next_pass(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    want = seed(20)
    victim = "user-0000"
    proxy.rule = deny_user(victim, "throttle")
    proxy.fault_budget = 2  # its first two attempts only
    p, _ = poller_for(config(proxy, aws={"max_attempts": 2}))
    snap = run_once(p)
    assert counts(snap) == {n: c for n, c in want.items() if n != victim}
    inv = state(snap).inventory
    assert inv is not None and inv.unread == ((victim, "/", "Throttling"),)
    snap = run_once(p)
    assert counts(snap) == want
    assert not user(snap, victim).stale
    assert proxy.faults["ListAccessKeys"] == 2


def test_a_key_in_status_expired_is_counted_under_expired(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    want = seed(10)
    victim = "user-0001"  # Active + Inactive: the Inactive one comes back Expired
    seen: list[str] = []

    def rewrite(action: str, body: bytes) -> bytes:
        if action == "ListAccessKeys" and f"<UserName>{victim}</UserName>".encode() in body:
            seen.append(victim)
            return body.replace(b"<Status>Inactive</Status>", b"<Status>Expired</Status>")
        return body

    proxy.rewrite = rewrite
    p, stats = poller_for(config(proxy))
    snap = run_once(p)
    assert seen == [victim]
    assert state(snap).success
    got = counts(snap)
    assert got.pop(victim) == (1, 0)
    assert got == {n: c for n, c in want.items() if n != victim}
    assert [k.status for k in user(snap, victim).keys] == ["Active", "Expired"]
    keys = samples(families(snap, stats), "iam_user_access_keys")
    mine = {dict(k)["status"]: v for k, v in keys.items() if dict(k)["user_name"] == victim}
    assert mine == {"Active": 1.0, "Inactive": 0.0, "Expired": 1.0}
    # The account totals count it under its own status too.
    totals = samples(families(snap, stats), "iam_account_access_keys")
    assert totals[(("account_id", A), ("status", "Expired"))] == 1.0


def test_a_truncated_body_is_retried_not_a_parse_error(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    want = seed(20)
    victim = "user-0003"
    proxy.rule = deny_user(victim, "truncate")
    proxy.fault_budget = 1
    p, stats = poller_for(config(proxy, aws={"max_attempts": 3}))
    snap = run_once(p)
    assert proxy.faults["ListAccessKeys"] == 1  # it really was cut short
    assert counts(snap) == want
    assert not user(snap, victim).stale
    assert stats.counts().retries == {(A, "iam", "ListAccessKeys"): 1}


# --------------------------------------------------------------------------- last-used dates


def last_used(snap: Snapshot) -> dict[str, float | None]:
    inv = state(snap).inventory
    assert inv is not None
    return {k.key_id: k.last_used for u in inv.users for k in u.keys if k.key_id}


def test_last_used_api_dates_are_cached(iam: Any, proxy: AwsProxy,
                                        poller_for: PollerFor) -> None:
    want = seed(30)
    p, _ = poller_for(config(proxy, collection={"last_used": "api"}))
    first = run_once(p)
    assert counts(first) == want
    dates = last_used(first)
    assert len(dates) == proxy.counts()["GetAccessKeyLastUsed"] > 0
    assert all(d is not None for d in dates.values())
    assert state(first).inventory.last_used_complete is True  # type: ignore[union-attr]

    before = proxy.counts()["GetAccessKeyLastUsed"]
    new = add_key("user-0002")
    second = run_once(p)
    # Only the new key costs a call; the known ones come from the cache.
    assert proxy.counts()["GetAccessKeyLastUsed"] - before == 1
    again = last_used(second)
    assert {k: v for k, v in again.items() if k != new} == dates
    assert new in again


def test_one_last_used_denied_keeps_the_others_and_the_cached_dates(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    want = seed(30)
    p, stats = poller_for(config(proxy, collection={"last_used": "api"}))
    first = run_once(p)
    dates = last_used(first)
    assert all(v is not None for v in dates.values())

    # A new key, denied: the cached dates stay, the new key has none.
    new = add_key("user-0005")
    proxy.rule = deny_user(new, action="GetAccessKeyLastUsed")
    snap = run_once(p)
    assert counts(snap) == {**want, "user-0005": (2, 0)}
    got = last_used(snap)
    assert got.pop(new) is None
    assert got == dates
    inv = state(snap).inventory
    assert inv is not None and inv.last_used_complete is False
    fams = families(snap, stats)
    assert samples(fams, "iam_exporter_last_used_complete") == {(("account_id", A),): 0.0}
    used = samples(fams, "iam_access_key_last_used_timestamp_seconds")
    assert len(used) == len(dates)


def test_one_last_used_denied_on_a_fresh_start_keeps_the_others(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    want = seed(20)
    from moto.iam.models import iam_backends

    victim_key = next(iter(iam_backends[A]["global"].users["user-0000"].access_keys)
                      ).access_key_id
    proxy.rule = deny_user(victim_key, action="GetAccessKeyLastUsed")
    p, _ = poller_for(config(proxy, collection={"last_used": "api"}))
    snap = run_once(p)
    assert counts(snap) == want
    got = last_used(snap)
    assert got.pop(victim_key) is None
    assert got and all(v is not None for v in got.values())
    inv = state(snap).inventory
    assert inv is not None and inv.last_used_complete is False


# --------------------------------------------------------------------------- §2 throttling


def test_sustained_throttling_slows_down_but_never_fails_nor_wedges(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A quota well below the budget, for pass after pass (the ratio of the issue's 1,500
    users at 10/s, scaled down to keep the test short), standard retry mode: the first
    pass is exact, and the loops keep ending passes, each exact."""
    want = seed(40)
    proxy.bucket = TokenBucket(rate=30, burst=5)
    cfg = config(proxy, interval_seconds=1,
                 aws={"retry_mode": "standard", "max_requests_per_second": 90},
                 collection={"concurrency": 8})
    clients: list[Any] = []  # the IAM client of each listing, kept alive (no id reuse)
    listed = collect.list_account

    def list_account(target: Target, cfg: Config, strategy: str) -> collect.Listing:
        clients.append(target.iam())
        return listed(target, cfg, strategy)

    monkeypatch.setattr(collect, "list_account", list_account)
    p, stats = poller_for(cfg)
    once = run_once(p)
    assert counts(once) == want
    assert not any(u.stale for u in state(once).inventory.users)  # type: ignore[union-attr]
    assert sum(1 for _, _, thr in proxy.bucket.requests() if thr) > 0

    # The loops keep running: three more passes end, each exact and without a stale user.
    passes: dict[float, Snapshot] = {}
    first = state(once).last_success

    def three_more() -> bool:
        snap = p.build()
        st = state(snap)
        if st.last_success is not None and st.last_success != first:
            passes.setdefault(st.last_success, snap)
        return len(passes) >= 3

    wait_until(three_more, timeout=60, every=0.02)
    for when, snap in passes.items():
        assert counts(snap) == want, when
        assert not any(u.stale for u in state(snap).inventory.users)  # type: ignore[union-attr]
    # Each listing had an IAM client of its own: a retry quota drained by one storm of
    # throttles cannot fail the reads after it.
    assert len(clients) >= 4
    assert len({id(c) for c in clients}) == len(clients)
    throttles = sum(stats.counts().throttles.values())
    assert throttles == sum(1 for _, _, thr in proxy.bucket.requests() if thr)


# --------------------------------------------------------------------------- §4 smaller ones


def test_a_shard_with_zero_accounts_is_ready(poller_for: PollerFor) -> None:
    from exporter import sharding

    role = next(f"arn:aws:iam::{i:012d}:role/r" for i in range(100, 200)
                if sharding.shard_of(f"{i:012d}", 2) == 0)
    cfg = make_config(include_self=False, accounts=[{"role_arn": role}],
                      sharding={"total": 2, "index": 1})
    p, stats = poller_for(cfg)
    snap = p.run_once(timeout=10)
    assert snap.accounts == () and snap.ready
    assert p.targets == []  # nothing to read on this shard
    store = web.Store(Exposition.of(RenderInput(snap, stats.counts(), 300)))
    client = Client(web.App(store, None))
    assert client.get("/readyz").status_code == 200
    # Before the watched accounts are known it is not ready yet.
    assert Client(web.App(web.Store(Exposition.of(
        RenderInput(Snapshot(), stats.counts(), 300))), None)).get("/readyz").status_code == 503


def test_include_self_and_the_own_account_listed_give_no_duplicate_series(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor,
        caplog: pytest.LogCaptureFixture) -> None:
    want = seed(5)
    role = f"arn:aws:iam::{A}:role/iam-key-exporter"
    cfg = config(proxy, include_self=True, accounts=[{"role_arn": role, "name": "own"}])
    p, stats = poller_for(cfg)
    with caplog.at_level(logging.INFO, logger="exporter.accounts"):
        snap = run_once(p)
        p.resolve()  # the accounts resolved again (once per interval)
        snap = run_once(p)
    assert [(a.key, a.account_id, a.name) for a in snap.accounts] == [(role, A, "own")]
    assert counts(snap) == want
    text = [s for f in families(snap, stats).values() for s in f.samples]
    series = [(s.name, tuple(sorted(s.labels.items()))) for s in text]
    dupes = {x for x in series if series.count(x) > 1}
    assert not dupes
    assert len(samples(families(snap, stats), "iam_account_info")) == 1
    logged = [r for r in caplog.records if r.name == "exporter.accounts"
              and A in r.getMessage() + str(getattr(r, "account_id", ""))]
    assert len(logged) == 1  # once, not every time the accounts are resolved


def test_include_self_without_the_own_account_listed_needs_no_sts(
        iam: Any, proxy: AwsProxy) -> None:
    """The own account id is asked for only when it could be a duplicate."""
    cfg = config(proxy)
    accounts = AccountSet(cfg, ApiStats())
    targets = accounts.resolve(0)
    assert [t.key for t in targets] == ["self"]
    assert proxy.counts()["GetCallerIdentity"] == 0


def test_an_account_failing_past_max_stale_seconds_loses_its_user_series(
        iam: Any, proxy: AwsProxy, poller_for: PollerFor) -> None:
    seed(1)  # user-0000, one active key
    p, stats = poller_for(config(proxy, collection={"max_stale_seconds": 60}))
    good = run_once(p)
    assert counts(good) == {"user-0000": (1, 0)}
    # The account's listing fails (both ways of listing denied): an account-wide failure.
    proxy.modes.update({"GetAccountAuthorizationDetails": "deny", "ListUsers": "deny"})
    # Failing, but for less than max_stale_seconds: the last good data is served.
    snap = p.run_once(timeout=30)
    st = state(snap)
    assert not st.success and st.error == "AccessDenied" and not st.withdrawn
    assert st.inventory is not None and st.inventory.users == state(good).inventory.users  # type: ignore[union-attr]
    fams = families(snap, stats)
    assert len(samples(fams, "iam_user_access_keys")) == 2
    assert samples(fams, "iam_exporter_inventory_withdrawn") == {}
    # The last success 61 s ago: withdrawn.
    (loop,) = p._loops.values()
    loop.last_success = time.time() - 61
    snap = p.run_once(timeout=30)
    st = state(snap)
    assert not st.success and st.inventory is None and st.withdrawn
    fams = families(snap, stats)
    assert samples(fams, "iam_user_access_keys") == {}
    assert samples(fams, "iam_exporter_inventory_withdrawn") == {
        (("account_id", st.account_id),): 1.0}
    # Stays withdrawn while it fails; back once it succeeds.
    assert state(p.run_once(timeout=30)).withdrawn
    proxy.modes.clear()
    snap = run_once(p)
    assert state(snap).success and not state(snap).withdrawn
    assert len(samples(families(snap, stats), "iam_user_access_keys")) == 2


def test_organizations_role_name_defaults_to_the_read_only_member_role() -> None:
    cfg = make_config()
    assert cfg.organizations.role_name == "iam-key-exporter-member"
    from tests.helpers import ROOT

    shipped = "\n".join(p.read_text() for p in (ROOT / "deploy" / "aws").rglob("*")
                        if p.is_file())
    assert re.search(r"\biam-key-exporter-member\b", shipped)
