"""Degrading per user, not per account (issue 15 §2–§4): one bad user, one bad answer,
sustained throttling, and the smaller defects found on the way.

The exporter's real collection (AccountSet, Poller, collect_account, botocore) against
moto behind tests/awsproxy.py, which injects what moto cannot do: a fault for one user
only, a rewritten answer, a truncated body, and IAM's throttling by rate (a token bucket
per account). Every case ends with the other users' counts exact.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from werkzeug.test import Client

from exporter import web
from exporter.aws.accounts import AccountSet
from exporter.aws.collect import collect_account
from exporter.aws.errors import Deadline
from exporter.aws.session import ApiStats, Target
from exporter.config import Config
from exporter.inventory import AccessKey, AccountInventory, AccountState, Snapshot, User
from exporter.metrics import Exposition, RenderInput
from exporter.poller import Poller
from tests.awsproxy import AwsProxy, TokenBucket
from tests.helpers import MOTO_ACCOUNT, make_config
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
    collection = {"last_used": "off", "timeout_seconds": 60, **kw.pop("collection", {})}
    return make_config(aws=aws, collection=collection, **kw)


def poller_for(cfg: Config) -> tuple[Poller, ApiStats]:
    stats = ApiStats()
    return Poller(cfg, AccountSet(cfg, stats)), stats


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


def test_one_user_denied_leaves_the_others_exact_and_that_user_marked(
        iam: Any, proxy: AwsProxy, caplog: pytest.LogCaptureFixture) -> None:
    want = seed(300)
    victim = "user-0123"
    p, stats = poller_for(config(proxy))
    assert counts(p.run_cycle()) == want

    proxy.rule = deny_user(victim)
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        snap = p.run_cycle()
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
    # Tried twice (once more after the others), and said so in the log.
    assert proxy.faults["ListAccessKeys"] == 2
    lines = [r for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(lines) == 1 and victim in getattr(lines[0], "users", "")
    assert "AccessDenied" in getattr(lines[0], "users", "")


def test_a_user_denied_from_the_first_cycle_is_left_out_and_logged(
        iam: Any, proxy: AwsProxy, caplog: pytest.LogCaptureFixture) -> None:
    want = seed(40)
    victim = "user-0007"
    proxy.rule = deny_user(victim)
    p, stats = poller_for(config(proxy))
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        snap = p.run_cycle()
    assert counts(snap) == {n: c for n, c in want.items() if n != victim}
    inv = state(snap).inventory
    assert inv is not None and inv.unread == ((victim, "/", "AccessDenied"),)
    fams = families(snap, stats)
    assert samples(fams, "iam_user_unread") == {
        (("account_id", A), ("reason", "AccessDenied"), ("user_name", victim)): 1.0}
    assert samples(fams, "iam_account_unread_users") == {(("account_id", A),): 1.0}
    lines = [r for r in caplog.records if "could not be read" in r.getMessage()]
    assert lines and victim in getattr(lines[0], "users_never_read", "")


def test_every_user_denied_fails_the_account(iam: Any, proxy: AwsProxy) -> None:
    seed(5)
    proxy.modes["ListAccessKeys"] = "deny"
    p, _ = poller_for(config(proxy))
    st = state(p.run_cycle())
    assert not st.success and st.error == "AccessDenied"


def test_a_user_throttled_through_every_attempt_is_retried_later_then_stale(
        iam: Any, proxy: AwsProxy) -> None:
    want = seed(60)
    victim = "user-0000"  # the first in line: its retry must come after the others
    p, _ = poller_for(config(proxy, aws={"max_attempts": 2},
                             collection={"concurrency": 2}))
    assert counts(p.run_cycle()) == want

    seen: list[tuple[str, str]] = []
    proxy.rule = deny_user(victim, "throttle", seen=seen)
    snap = p.run_cycle()
    assert counts(snap, fresh_only=True) == {n: c for n, c in want.items() if n != victim}
    v = user(snap, victim)
    assert v.stale == "Throttling"
    assert (v.count("Active"), v.count("Inactive")) == want[victim]
    assert counts(snap) == want
    # Two attempts, then two more after every other user was read.
    order = [name for _, name in seen]
    mine = [i for i, n in enumerate(order) if n == victim]
    assert len(mine) == 4
    others = [i for i, n in enumerate(order) if n != victim]
    assert mine[2] > max(others)


def test_a_user_throttled_only_at_first_is_read_fresh_on_the_second_pass(
        iam: Any, proxy: AwsProxy) -> None:
    want = seed(20)
    victim = "user-0000"
    proxy.rule = deny_user(victim, "throttle")
    proxy.fault_budget = 2  # its first two attempts only
    p, _ = poller_for(config(proxy, aws={"max_attempts": 2}))
    snap = p.run_cycle()
    assert counts(snap) == want
    assert not user(snap, victim).stale
    assert proxy.faults["ListAccessKeys"] == 2


def test_a_key_in_status_expired_is_counted_under_expired(iam: Any, proxy: AwsProxy) -> None:
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
    snap = p.run_cycle()
    assert seen == [victim]
    assert state(snap).success
    got = counts(snap)
    assert got.pop(victim) == (1, 0)
    assert got == {n: c for n, c in want.items() if n != victim}
    assert [k.status for k in user(snap, victim).keys] == ["Active", "Expired"]
    keys = samples(families(snap, stats), "iam_user_access_keys")
    mine = {dict(k)["status"]: v for k, v in keys.items() if dict(k)["user_name"] == victim}
    assert mine == {"Active": 1.0, "Inactive": 0.0, "Expired": 1.0}


def test_a_truncated_body_is_retried_not_a_parse_error(iam: Any, proxy: AwsProxy) -> None:
    want = seed(20)
    victim = "user-0003"
    proxy.rule = deny_user(victim, "truncate")
    proxy.fault_budget = 1
    p, stats = poller_for(config(proxy, aws={"max_attempts": 3}))
    snap = p.run_cycle()
    assert proxy.faults["ListAccessKeys"] == 1  # it really was cut short
    assert counts(snap) == want
    assert not user(snap, victim).stale
    assert stats.counts().retries == {(A, "iam", "ListAccessKeys"): 1}


# --------------------------------------------------------------------------- last-used dates


def last_used(snap: Snapshot) -> dict[str, float | None]:
    inv = state(snap).inventory
    assert inv is not None
    return {k.key_id: k.last_used for u in inv.users for k in u.keys if k.key_id}


def test_last_used_api_dates_are_cached(iam: Any, proxy: AwsProxy) -> None:
    want = seed(30)
    p, _ = poller_for(config(proxy, collection={"last_used": "api"}))
    first = p.run_cycle()
    assert counts(first) == want
    dates = last_used(first)
    assert len(dates) == proxy.counts()["GetAccessKeyLastUsed"] > 0
    assert all(d is not None for d in dates.values())
    assert state(first).inventory.last_used_complete is True  # type: ignore[union-attr]

    before = proxy.counts()["GetAccessKeyLastUsed"]
    new = add_key("user-0002")
    second = p.run_cycle()
    # Only the new key costs a call; the known ones come from the cache.
    assert proxy.counts()["GetAccessKeyLastUsed"] - before == 1
    again = last_used(second)
    assert {k: v for k, v in again.items() if k != new} == dates
    assert new in again


def test_one_last_used_denied_keeps_the_others_and_the_cached_dates(
        iam: Any, proxy: AwsProxy) -> None:
    want = seed(30)
    p, stats = poller_for(config(proxy, collection={"last_used": "api"}))
    first = p.run_cycle()
    dates = last_used(first)
    assert all(v is not None for v in dates.values())

    # A new key, denied: the cached dates stay, the new key has none.
    new = add_key("user-0005")
    proxy.rule = deny_user(new, action="GetAccessKeyLastUsed")
    snap = p.run_cycle()
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
        iam: Any, proxy: AwsProxy) -> None:
    want = seed(20)
    from moto.iam.models import iam_backends

    victim_key = next(iter(iam_backends[A]["global"].users["user-0000"].access_keys)
                      ).access_key_id
    proxy.rule = deny_user(victim_key, action="GetAccessKeyLastUsed")
    p, _ = poller_for(config(proxy, collection={"last_used": "api"}))
    snap = p.run_cycle()
    assert counts(snap) == want
    got = last_used(snap)
    assert got.pop(victim_key) is None
    assert got and all(v is not None for v in got.values())
    inv = state(snap).inventory
    assert inv is not None and inv.last_used_complete is False


def test_the_deadline_in_the_last_used_phase_keeps_the_counts(
        iam: Any, proxy: AwsProxy) -> None:
    want = seed(40)
    proxy.latencies["GetAccessKeyLastUsed"] = 0.5
    p, stats = poller_for(config(proxy, collection={"last_used": "api", "concurrency": 2,
                                                    "timeout_seconds": 2}))
    t0 = time.monotonic()
    snap = p.run_cycle()
    assert time.monotonic() - t0 < 6
    assert counts(snap) == want  # the counts are there, and the account succeeded
    inv = state(snap).inventory
    assert inv is not None and inv.last_used_complete is False
    got = last_used(snap)
    known = [v for v in got.values() if v is not None]
    assert 0 < len(known) < len(got)  # dates as far as time allowed
    fams = families(snap, stats)
    assert samples(fams, "iam_exporter_collection_success") == {(("account_id", A),): 1.0}


# --------------------------------------------------------------------------- §2 throttling


def test_sustained_throttling_slows_down_but_never_fails_nor_wedges(
        iam: Any, proxy: AwsProxy) -> None:
    """A quota well below the budget for a whole cycle (the ratio of the issue's 1,500
    users at 10/s, scaled down to keep the test short), standard retry mode: `once`
    succeeds exactly, and a daemon keeps succeeding cycle after cycle."""
    want = seed(100)
    proxy.bucket = TokenBucket(rate=30, burst=5)
    cfg = config(proxy, interval_seconds=1,
                 aws={"retry_mode": "standard", "max_requests_per_second": 90},
                 collection={"concurrency": 8, "min_pause_seconds": 0,
                             "timeout_seconds": 30})
    stats = ApiStats()
    published: list[Snapshot] = []
    clients: list[Any] = []  # kept alive, so that ids are not reused

    def collect(target: Target, cfg: Config, deadline: Deadline) -> AccountInventory:
        clients.append(target.iam())
        return collect_account(target, cfg, deadline)

    p = Poller(cfg, AccountSet(cfg, stats), publish=published.append, collect=collect)
    once = p.run_cycle()
    assert counts(once) == want
    assert not any(u.stale for u in state(once).inventory.users)  # type: ignore[union-attr]
    assert sum(1 for _, _, thr in proxy.bucket.requests() if thr) > 0

    # The same targets (and whatever clients they cached), as a daemon.
    p.start()
    try:
        deadline = time.monotonic() + 60
        while (sum(1 for s in published if s.cycles > 1) < 3
               and time.monotonic() < deadline):
            time.sleep(0.1)
    finally:
        p.stop(timeout=30)
    done = {s.cycles: s for s in published if s.cycles > 1}
    assert sorted(done)[:3] == [2, 3, 4]
    for n in (2, 3, 4):
        assert counts(done[n]) == want, n
        assert not any(u.stale for u in state(done[n]).inventory.users)  # type: ignore[union-attr]
    # Each cycle had a client of its own: a retry quota drained by one storm of
    # throttles cannot fail the cycles after it.
    assert len({id(c) for c in clients[:4]}) == 4
    throttles = sum(stats.counts().throttles.values())
    assert throttles == sum(1 for _, _, thr in proxy.bucket.requests() if thr)


# --------------------------------------------------------------------------- §4 smaller ones


def test_a_shard_with_zero_accounts_is_ready() -> None:
    from exporter import sharding

    role = next(f"arn:aws:iam::{i:012d}:role/r" for i in range(100, 200)
                if sharding.shard_of(f"{i:012d}", 2) == 0)
    cfg = make_config(include_self=False, accounts=[{"role_arn": role}],
                      sharding={"total": 2, "index": 1})
    stats = ApiStats()
    p = Poller(cfg, AccountSet(cfg, stats),
               collect=lambda *a: pytest.fail("nothing to collect on this shard"))
    snap = p.run_cycle()
    assert snap.accounts == () and snap.ready
    store = web.Store(Exposition.of(RenderInput(snap, stats.counts(), 300)))
    client = Client(web.App(store, None))
    assert client.get("/readyz").status_code == 200
    # Before its first cycle it is not ready yet.
    assert Client(web.App(web.Store(Exposition.of(
        RenderInput(Snapshot(), stats.counts(), 300))), None)).get("/readyz").status_code == 503


def test_include_self_and_the_own_account_listed_give_no_duplicate_series(
        iam: Any, proxy: AwsProxy, caplog: pytest.LogCaptureFixture) -> None:
    want = seed(5)
    role = f"arn:aws:iam::{A}:role/iam-key-exporter"
    cfg = config(proxy, include_self=True, accounts=[{"role_arn": role, "name": "own"}])
    stats = ApiStats()
    accounts = AccountSet(cfg, stats)
    p = Poller(cfg, accounts)
    with caplog.at_level(logging.INFO, logger="exporter.accounts"):
        snap = p.run_cycle()
        snap = p.run_cycle()
    assert [(a.key, a.account_id, a.name) for a in snap.accounts] == [(role, A, "own")]
    assert counts(snap) == want
    text = [s for f in families(snap, stats).values() for s in f.samples]
    series = [(s.name, tuple(sorted(s.labels.items()))) for s in text]
    dupes = {x for x in series if series.count(x) > 1}
    assert not dupes
    assert len(samples(families(snap, stats), "iam_account_info")) == 1
    logged = [r for r in caplog.records if r.name == "exporter.accounts"
              and A in r.getMessage() + str(getattr(r, "account_id", ""))]
    assert len(logged) == 1  # once, not every cycle


def test_include_self_without_the_own_account_listed_needs_no_sts(
        iam: Any, proxy: AwsProxy) -> None:
    """The own account id is asked for only when it could be a duplicate."""
    cfg = config(proxy)
    accounts = AccountSet(cfg, ApiStats())
    targets = accounts.resolve(0)
    assert [t.key for t in targets] == ["self"]
    assert proxy.counts()["GetCallerIdentity"] == 0


def test_an_account_failing_past_max_stale_seconds_loses_its_user_series() -> None:
    good = AccountInventory(A, "list", (User("alice", keys=(AccessKey("AKIA1", "Active", 0.0),)),))
    results: list[Any] = [good]

    def collect(target: Target, cfg: Any, deadline: Deadline) -> AccountInventory:
        r = results.pop(0) if len(results) > 1 else results[0]
        if isinstance(r, BaseException):
            raise r
        return r  # type: ignore[no-any-return]

    from botocore.exceptions import ClientError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ListUsers")
    cfg = make_config(collection={"max_stale_seconds": 60})
    stats = ApiStats()
    p = Poller(cfg, [Target(cfg, stats)], collect=collect)
    p.run_cycle()
    results[:] = [denied]
    # Failing, but for less than max_stale_seconds: the last good data is served.
    snap = p.run_cycle()
    st = state(snap)
    assert not st.success and st.inventory is good and not st.withdrawn
    fams = families(snap, stats)
    assert len(samples(fams, "iam_user_access_keys")) == 2
    assert samples(fams, "iam_exporter_inventory_withdrawn") == {}
    # The last success 61 s ago: withdrawn.
    key = st.key
    p._states[key] = dataclasses.replace(p._states[key], last_success=time.time() - 61)
    snap = p.run_cycle()
    st = state(snap)
    assert not st.success and st.inventory is None and st.withdrawn
    fams = families(snap, stats)
    assert samples(fams, "iam_user_access_keys") == {}
    assert samples(fams, "iam_exporter_inventory_withdrawn") == {
        (("account_id", st.account_id),): 1.0}
    # Stays withdrawn while it fails; back once it succeeds.
    assert state(p.run_cycle()).withdrawn
    results[:] = [good]
    snap = p.run_cycle()
    assert state(snap).success and not state(snap).withdrawn
    assert len(samples(families(snap, stats), "iam_user_access_keys")) == 2


def test_organizations_role_name_defaults_to_the_read_only_member_role() -> None:
    cfg = make_config()
    assert cfg.organizations.role_name == "iam-key-exporter-member"
    from tests.helpers import ROOT

    shipped = "\n".join(p.read_text() for p in (ROOT / "deploy" / "aws").rglob("*")
                        if p.is_file())
    assert re.search(r"\biam-key-exporter-member\b", shipped)


def test_an_account_still_running_reports_how_long_it_has_run() -> None:
    release = threading.Event()
    calls = 0

    def collect(target: Target, cfg: Any, deadline: Deadline) -> AccountInventory:
        nonlocal calls
        calls += 1
        if calls > 1:
            release.wait(30)
        return AccountInventory(A, "list", ())

    cfg = make_config(collection={"timeout_seconds": 0.3})
    stats = ApiStats()
    p = Poller(cfg, [Target(cfg, stats)], collect=collect)
    try:
        p.run_cycle()
        assert state(p.run_cycle()).error == "DeadlineExceeded"
        t0 = time.monotonic()
        snap = p.run_cycle()
        st = state(snap)
        assert st.error == "StillRunning"
        # Running since the second cycle began: at least its deadline plus the grace.
        assert st.duration >= 0.3
        assert st.duration < 0.3 + 10 + (time.monotonic() - t0)
        (d,) = samples(families(snap, stats),
                       "iam_exporter_collection_duration_seconds").values()
        assert d == st.duration > 0
    finally:
        release.set()
