"""The poller over real targets (moto, through the fault proxy): last good data kept,
account failures counted, users deleted from IAM gone, readiness, crash safety,
reconfiguration.

Each test drives passes on demand (``Poller.run_once``: every account listed and each
user tried once); between passes the account loops run on, at an interval long enough
that they stay quiet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats, Target
from exporter.config import Config
from exporter.inventory import AccountState, Snapshot
from exporter.poller import Poller
from exporter.store import AccountStore
from tests.awsproxy import AwsProxy
from tests.helpers import MOTO_ACCOUNT, add_user, aws, creds_in, make_config
from tests.passes import one_pass

QUIET = 300  # interval_seconds: nothing is due again within a test
WAIT = 20.0  # upper bound of one pass in these tests


def config(endpoint: str, **kw: Any) -> Config:
    aws_cfg = {"endpoint_url": endpoint, "max_attempts": 1, "connect_timeout_seconds": 1,
               "read_timeout_seconds": 10, **kw.pop("aws", {})}
    collection = {"last_used": "off", **kw.pop("collection", {})}
    return make_config(interval_seconds=kw.pop("interval_seconds", QUIET), aws=aws_cfg,
                       collection=collection, **kw)


@pytest.fixture
def pollers() -> Iterator[Callable[..., Poller]]:
    """Makes pollers; every one is stopped after the test."""
    made: list[Poller] = []

    def make(cfg: Config, targets: Any = None, **kw: Any) -> Poller:
        p = Poller(cfg, targets if targets is not None else [Target(cfg, ApiStats())], **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def only(snap: Snapshot) -> AccountState:
    (st,) = snap.accounts
    return st


def keys_of(st: AccountState) -> dict[str, tuple[str, ...]]:
    assert st.inventory is not None, st
    return {u.name: tuple(sorted(k.status for k in u.keys)) for u in st.inventory.users}


def until(check: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < end, f"timed out waiting for {what or check}"
        time.sleep(0.05)


DENY_LISTING = {"GetAccountAuthorizationDetails": "deny", "ListUsers": "deny"}


# --------------------------------------------------------------------------- last good data


def test_an_account_failure_keeps_the_last_good_data(proxy: AwsProxy, iam: Any,
                                                      pollers: Callable[..., Poller]) -> None:
    alice = add_user(iam, "alice", ("Active", "Active"))
    add_user(iam, "bob", ("Inactive",))
    published: list[Snapshot] = []
    p = pollers(config(proxy.url), publish=published.append)
    first = one_pass(p, WAIT)
    st = only(first)
    assert first.ready and st.success and st.error is None
    assert keys_of(st) == {"alice": ("Active", "Active"), "bob": ("Inactive",)}
    last_ok = st.last_success
    assert last_ok is not None and st.oldest_read is not None and st.never_read == 0

    # IAM now refuses everything, and alice's keys change meanwhile: what is served is
    # the last good read, not nothing and not a guess.
    iam.delete_access_key(UserName="alice", AccessKeyId=alice[0])
    proxy.mode = "deny"
    second = p.run_once(WAIT)
    st = only(second)
    assert not st.success and st.error == "AccessDenied"
    assert keys_of(st) == {"alice": ("Active", "Active"), "bob": ("Inactive",)}
    assert st.last_success == last_ok  # and its time does not advance
    assert second.ready
    third = p.run_once(WAIT)
    assert third.error_counts == {(MOTO_ACCOUNT, "AccessDenied"): 2}
    assert published[-1] is third

    # IAM answers again: the next pass has the keys as they are now.
    proxy.mode = None
    fourth = one_pass(p, WAIT)
    st = only(fourth)
    assert st.success and st.error is None
    assert keys_of(st) == {"alice": ("Active",), "bob": ("Inactive",)}
    assert st.last_success is not None and st.last_success > last_ok
    assert all(not u.stale for u in st.inventory.users)  # type: ignore[union-attr]
    assert fourth.error_counts == {(MOTO_ACCOUNT, "AccessDenied"): 2}  # a counter


def test_a_user_read_that_fails_keeps_that_users_last_keys(
        proxy: AwsProxy, iam: Any, pollers: Callable[..., Poller]) -> None:
    add_user(iam, "alice", ("Active", "Active"))
    add_user(iam, "bob", ("Active",))
    p = pollers(config(proxy.url))
    assert keys_of(only(one_pass(p, WAIT)))["alice"] == ("Active", "Active")
    proxy.modes = {"ListAccessKeys": "throttle"}
    add_user(iam, "carol", ("Active",))  # listed, never read: unread, no keys
    snap = p.run_once(WAIT)
    st = only(snap)
    assert st.inventory is not None
    users = {u.name: u for u in st.inventory.users}
    assert users["alice"].stale == "Throttling" and len(users["alice"].keys) == 2
    assert users["bob"].stale == "Throttling"
    assert st.inventory.unread == (("carol", "/", "Throttling"),)
    assert st.never_read == 1
    # Every user failing is the account failing (a missing permission); one user
    # failing is not (below).
    assert not st.success and snap.error_counts == {(MOTO_ACCOUNT, "Throttling"): 1}
    proxy.modes = {}
    proxy.rule = lambda action, params: ("throttle" if action == "ListAccessKeys"
                                         and params.get("UserName") == ["bob"] else None)
    snap = p.run_once(WAIT)
    st = only(snap)
    assert st.success and st.error is None
    users = {u.name: u for u in st.inventory.users} if st.inventory else {}
    assert users["bob"].stale == "Throttling" and not users["alice"].stale
    assert snap.error_counts == {(MOTO_ACCOUNT, "Throttling"): 1}


def test_a_failed_first_listing_has_no_inventory_and_counts_as_settled(
        proxy: AwsProxy, iam: Any, pollers: Callable[..., Poller]) -> None:
    add_user(iam, "alice", ("Active",))
    proxy.modes = dict(DENY_LISTING)
    p = pollers(config(proxy.url))
    snap = p.run_once(WAIT)
    st = only(snap)
    assert st.inventory is None and not st.success and st.error == "AccessDenied"
    assert st.last_success is None
    # One account IAM refuses does not keep the replica out of service for ever.
    assert snap.ready
    assert snap.error_counts == {(MOTO_ACCOUNT, "AccessDenied"): 1}


def test_an_unexpected_error_in_a_listing_fails_the_account_with_a_traceback(
        proxy: AwsProxy, iam: Any, pollers: Callable[..., Poller],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    add_user(iam, "alice", ("Active",))
    p = pollers(config(proxy.url))
    one_pass(p, WAIT)
    proxy.modes = dict(DENY_LISTING)
    with caplog.at_level("ERROR", logger="exporter.reconcile"):
        p.run_once(WAIT)
        proxy.modes = {}

        def bug(*_: Any, **__: Any) -> None:
            raise ZeroDivisionError("bug")

        monkeypatch.setattr("exporter.reconcile.collect.list_account", bug)
        st = only(p.run_once(WAIT))
    assert st.error == "ZeroDivisionError" and not st.success
    assert keys_of(st) == {"alice": ("Active",)}
    failed = [r for r in caplog.records if r.name == "exporter.reconcile"
              and r.levelname == "ERROR"]
    assert [getattr(r, "error", None) for r in failed] == ["AccessDenied", "ZeroDivisionError"]
    assert failed[0].exc_info is None  # an AWS error: one line
    assert failed[1].exc_info is not None  # a bug: its traceback


# --------------------------------------------------------------------------- membership


def test_a_deleted_user_disappears_and_a_new_one_appears(
        proxy: AwsProxy, iam: Any, pollers: Callable[..., Poller]) -> None:
    add_user(iam, "alice", ("Active",))
    add_user(iam, "bob")
    p = pollers(config(proxy.url))
    assert set(keys_of(only(one_pass(p, WAIT)))) == {"alice", "bob"}
    iam.delete_user(UserName="bob")
    add_user(iam, "carol", ("Inactive",))
    st = only(one_pass(p, WAIT))
    assert keys_of(st) == {"alice": ("Active",), "carol": ("Inactive",)}
    assert st.never_read == 0


# --------------------------------------------------------------------------- readiness


class GatedProxy(AwsProxy):
    """Holds chosen requests until released (moto answers everything at once)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.held_user = ""  # ListAccessKeys of this user waits for release
        self.release = threading.Event()
        self.holding = threading.Event()

    def fault_for(self, action: str, params: dict[str, list[str]] | None = None
                  ) -> str | None:
        if (action == "ListAccessKeys" and self.held_user
                and (params or {}).get("UserName") == [self.held_user]):
            self.holding.set()
            self.release.wait(WAIT)
        return super().fault_for(action, params)


@pytest.fixture
def gated(moto: str) -> Iterator[GatedProxy]:
    p = GatedProxy(moto).start()
    yield p  # type: ignore[misc]
    p.release.set()
    p.stop()


def two_accounts(endpoint: str) -> list[str]:
    """Two accounts with users: 111111111111 (alice), 222222222222 (bob, carol)."""
    for account_id, names in (("111111111111", ("alice",)), ("222222222222", ("bob", "carol"))):
        iam = aws("iam", endpoint, creds_in(endpoint, account_id))
        for name in names:
            add_user(iam, name, ("Active",))
    return ["111111111111", "222222222222"]


def test_not_ready_until_every_user_of_every_account_was_read_once(
        gated: GatedProxy, moto: str, aws_env: dict[str, str],
        pollers: Callable[..., Poller]) -> None:
    ids = two_accounts(moto)
    gated.held_user = "carol"
    cfg = config(gated.url, accounts=[{"role_arn": f"arn:aws:iam::{a}:role/r"} for a in ids])
    stats = ApiStats()
    p = pollers(cfg, [Target(cfg, stats, account=a) for a in cfg.accounts])
    assert not p.build().ready  # nothing resolved yet
    p.start()
    gated.holding.wait(WAIT)

    def all_but_carol() -> Snapshot | None:
        snap = p.build()
        by_id = {a.account_id: a for a in snap.accounts}
        a, b = by_id.get(ids[0]), by_id.get(ids[1])
        if a is None or b is None or a.inventory is None or b.inventory is None:
            return None
        read = {u.name for u in a.inventory.users} | {u.name for u in b.inventory.users}
        return snap if read == {"alice", "bob"} else None

    snap = until(all_but_carol, what="every user but carol read")
    # The first account is done, the second has carol left: not ready.
    assert [a.never_read for a in snap.accounts] == [0, 1]
    assert not snap.ready
    assert not p.build().ready
    gated.release.set()
    snap = until(lambda: (s := p.build()).ready and s, what="ready")
    assert [a.never_read for a in snap.accounts] == [0, 0]
    assert {u.name for a in snap.accounts for u in a.inventory.users  # type: ignore[union-attr]
            } == {"alice", "bob", "carol"}


def test_an_empty_shard_is_ready_at_once(proxy: AwsProxy, aws_env: dict[str, str],
                                         pollers: Callable[..., Poller]) -> None:
    p = pollers(config(proxy.url), [])
    snap = p.run_once(WAIT)
    assert snap.ready and snap.accounts == () and snap.completed_at is not None
    assert sum(proxy.counts().values()) == 0


def test_ready_stays_once_reached(proxy: AwsProxy, iam: Any,
                                  pollers: Callable[..., Poller]) -> None:
    """Readiness is about the start: an account failing later does not take the replica
    out of service (its last good data is served, and says so)."""
    add_user(iam, "alice", ("Active",))
    p = pollers(config(proxy.url))
    assert one_pass(p, WAIT).ready
    proxy.mode = "deny"
    snap = p.run_once(WAIT)
    assert snap.ready and not only(snap).success


# --------------------------------------------------------------------------- crash safety


def test_the_publisher_survives_a_crashing_publish_and_stops_promptly(
        proxy: AwsProxy, iam: Any, pollers: Callable[..., Poller]) -> None:
    add_user(iam, "alice", ("Active",))
    calls: list[Snapshot] = []

    def publish_crash_once(snap: Snapshot) -> None:
        calls.append(snap)
        if len(calls) == 1:
            raise RuntimeError("bug in publish")

    cfg = config(proxy.url)
    target = Target(cfg, ApiStats())
    p = pollers(cfg, [target], publish=publish_crash_once)
    p.start()
    until(lambda: calls, what="a first publish")
    assert p.alive()
    # An event's read is published at once, by the same thread.
    ticket = until(lambda: p.request(target, "alice", {"CreateAccessKey"}), what="the loop")
    assert ticket.wait(WAIT) and ticket.ok
    until(lambda: len(calls) >= 2, what="a publish after the crash")
    assert p.alive()
    started = time.monotonic()
    p.stop(timeout=5)
    assert time.monotonic() - started < 3
    assert not p.alive()


def test_a_worker_survives_a_bug_and_the_user_is_read_at_the_next_pass(
        proxy: AwsProxy, iam: Any, pollers: Callable[..., Poller],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    add_user(iam, "alice", ("Active",))
    add_user(iam, "bob", ("Active", "Inactive"))
    observe = AccountStore.observe
    crashed: list[str] = []

    def observe_crashing_once_for_bob(self: AccountStore, name: str, *a: Any, **kw: Any
                                      ) -> bool:
        if name == "bob" and not crashed:
            crashed.append(name)
            raise ZeroDivisionError("bug in the store")
        return observe(self, name, *a, **kw)

    monkeypatch.setattr(AccountStore, "observe", observe_crashing_once_for_bob)
    p = pollers(config(proxy.url, collection={"concurrency": 1}))
    with caplog.at_level("ERROR", logger="exporter.reconcile"):
        first = p.run_once(WAIT)
    assert crashed == ["bob"]
    assert [r.exc_info is not None for r in caplog.records
            if r.getMessage() == "reading failed unexpectedly"] == [True]
    assert set(keys_of(only(first))) == {"alice"}  # bob could not be stored
    assert only(first).inventory.unread == (("bob", "/", "InternalError"),)  # type: ignore[union-attr]
    # The one worker is still there: the next pass reads bob.
    st = only(one_pass(p, WAIT))
    assert keys_of(st) == {"alice": ("Active",), "bob": ("Active", "Inactive")}
    assert st.success


# --------------------------------------------------------------------------- reconfigure


def test_reconfigure_applies_from_the_next_pass_and_keeps_the_data(
        proxy: AwsProxy, iam: Any, aws_env: dict[str, str],
        pollers: Callable[..., Poller]) -> None:
    add_user(iam, "alice", ("Active",))
    add_user(iam, "svc-build", ("Active", "Active"))
    other = "333333333333"
    add_user(aws("iam", proxy.url, creds_in(proxy.url, other)), "dora", ("Inactive",))
    cfg = config(proxy.url)
    stats = ApiStats()
    p = pollers(cfg, AccountSet(cfg, stats))
    st = only(one_pass(p, WAIT))
    assert set(keys_of(st)) == {"alice", "svc-build"}
    first_read = st.oldest_read

    # A user filter, an alias-free second account, the own account kept.
    p.reconfigure(config(proxy.url, include_self=True,
                         collection={"users": {"exclude_names": ["svc-.*"]}},
                         accounts=[{"role_arn": f"arn:aws:iam::{other}:role/r",
                                    "name": "other"}]))

    def reconfigured() -> Snapshot | None:
        snap = one_pass(p, WAIT)
        by_id = {a.account_id: a for a in snap.accounts}
        if set(by_id) != {MOTO_ACCOUNT, other} or by_id[other].inventory is None:
            return None
        return snap if set(keys_of(by_id[MOTO_ACCOUNT])) == {"alice"} else None

    # A few passes at most; generous for a loaded machine (each is bounded by WAIT).
    snap = until(reconfigured, timeout=3 * WAIT, what="the new config in a pass")
    by_id = {a.account_id: a for a in snap.accounts}
    assert keys_of(by_id[other]) == {"dora": ("Inactive",)}
    assert by_id[other].name == "other"
    assert p.cfg.accounts[0].name == "other"
    # The own account's loop (its store) was kept, not started again.
    assert by_id[MOTO_ACCOUNT].success
    assert by_id[MOTO_ACCOUNT].oldest_read is not None and first_read is not None
    assert p.target_for(other) is not None and p.target_for("999999999999") is None


def test_a_user_the_new_filter_excludes_goes_even_if_read_while_listing(
        proxy: AwsProxy, iam: Any, aws_env: dict[str, str],
        pollers: Callable[..., Poller]) -> None:
    """A reload that excludes a user drops it at the next pass, even when its read runs
    while the listing does (a listing keeps every user read after it began)."""
    add_user(iam, "alice", ("Active",))
    add_user(iam, "svc-build", ("Active", "Active"))
    cfg = config(proxy.url)
    p = pollers(cfg, AccountSet(cfg, ApiStats()))
    assert set(keys_of(only(one_pass(p, WAIT)))) == {"alice", "svc-build"}
    # A slow listing: the pass reads its users (other workers) while it runs.
    proxy.latencies["GetAccountAuthorizationDetails"] = 1.0
    p.reconfigure(config(proxy.url, collection={"users": {"exclude_names": ["svc-.*"]}}))
    # The first pass may still run under the old filter (accounts resolve on their own
    # thread); the next ones under the new one.
    for _ in range(3):
        st = only(one_pass(p, WAIT))
    assert set(keys_of(st)) == {"alice"}
