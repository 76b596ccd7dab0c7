"""The poller: last good data, error accounting, no overlapping cycles, crash safety."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from exporter.aws.errors import Deadline
from exporter.aws.session import ApiStats, Target
from exporter.inventory import AccessKey, AccountInventory, Snapshot, User
from exporter.poller import OVERRUN, Poller
from tests.helpers import make_config


def inventory(active: int, account_id: str = "111111111111") -> AccountInventory:
    keys = tuple(AccessKey(key_id=f"AKIA{i}", status="Active", created=0.0)
                 for i in range(active))
    return AccountInventory(account_id=account_id, strategy="list",
                            users=(User(name="alice", keys=keys),))


def denied() -> ClientError:
    return ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ListUsers")


class Script:
    """A collect function that plays a list of results (inventories or exceptions)."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.deadlines: list[Deadline] = []

    def __call__(self, target: Target, cfg: Any, deadline: Deadline) -> AccountInventory:
        self.deadlines.append(deadline)
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, AccountInventory)
        return result


def poller(collect: Any, **cfg: Any) -> tuple[Poller, list[Snapshot]]:
    config = make_config(**cfg)
    published: list[Snapshot] = []
    target = Target(config, ApiStats())
    return Poller(config, [target], publish=published.append, collect=collect), published


def test_failed_cycle_keeps_last_good_inventory() -> None:
    good = inventory(2)
    p, published = poller(Script(good, denied(), denied()))
    first = p.run_cycle()
    assert first.ready and first.accounts[0].success
    last_ok = first.accounts[0].last_success
    second = p.run_cycle()
    st = second.accounts[0]
    assert not st.success
    assert st.error == "AccessDenied"
    assert st.inventory is good  # last good data kept
    assert st.last_success == last_ok  # and its time does not advance
    assert second.ready
    third = p.run_cycle()
    assert third.error_counts == {("unknown", "AccessDenied"): 2}
    assert len(published) == 3 and published[-1] is third


def test_failure_before_any_success_is_not_ready() -> None:
    p, _ = poller(Script(denied()))
    snap = p.run_cycle()
    assert snap.completed_at is not None
    assert not snap.ready
    assert snap.accounts[0].inventory is None and not snap.accounts[0].success


def test_user_gone_from_aws_is_gone_from_next_snapshot() -> None:
    two = AccountInventory("1", "list", (User("alice"), User("bob")))
    one = AccountInventory("1", "list", (User("alice"),))
    p, _ = poller(Script(two, one))
    p.run_cycle()
    inv = p.run_cycle().accounts[0].inventory
    assert inv is not None and [u.name for u in inv.users] == ["alice"]


def test_unexpected_exception_is_a_failed_cycle_not_a_crash() -> None:
    p, _ = poller(Script(inventory(1), ZeroDivisionError("bug")))
    p.run_cycle()
    st = p.run_cycle().accounts[0]
    assert st.error == "ZeroDivisionError" and st.inventory is not None


def test_each_account_gets_a_deadline_of_the_cycle_timeout() -> None:
    script = Script(inventory(1))
    p, _ = poller(script, interval_seconds=100)
    p.run_cycle()
    assert script.deadlines[0].seconds == 80  # 80 % of the interval by default
    script2 = Script(inventory(1))
    p2, _ = poller(script2, collection={"timeout_seconds": 7})
    p2.run_cycle()
    assert script2.deadlines[0].seconds == 7


class Slow:
    """A collect function that takes a while and records how many ran at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, target: Target, cfg: Any, deadline: Deadline) -> AccountInventory:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return inventory(1, account_id=target.account_id)


def test_two_cycles_never_overlap() -> None:
    slow = Slow(0.2)
    p, published = poller(slow)
    threads = [threading.Thread(target=p.run_cycle) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert slow.peak == 1
    assert [s.cycles for s in published] == [1, 2, 3]


def test_thread_survives_a_crashing_cycle_and_stops_promptly() -> None:
    calls = 0

    def publish_crash_once(snap: Snapshot) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in publish")

    config = make_config(interval_seconds=1)
    p = Poller(config, [Target(config, ApiStats())], publish=publish_crash_once,
               collect=Script(inventory(1)))
    p.start()
    try:
        deadline = time.monotonic() + 5
        while calls < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls >= 2, "the thread died with the first cycle"
        assert p.alive()
    finally:
        started = time.monotonic()
        p.stop(timeout=5)
    assert time.monotonic() - started < 1.5
    assert not p.alive()


def test_first_cycle_runs_at_start_then_on_the_interval() -> None:
    stamps: list[float] = []

    def collect(target: Any, cfg: Any, deadline: Deadline) -> AccountInventory:
        stamps.append(time.monotonic())
        return inventory(1)

    config = make_config(interval_seconds=1)
    p = Poller(config, [Target(config, ApiStats())], collect=collect)
    t0 = time.monotonic()
    p.start()
    try:
        while len(stamps) < 3 and time.monotonic() - t0 < 6:
            time.sleep(0.02)
    finally:
        p.stop()
    assert len(stamps) >= 3
    assert stamps[0] - t0 < 0.5
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.85 <= g <= 1.2 for g in gaps), gaps  # 1 s ± 10 % jitter


@pytest.mark.parametrize("n_accounts,parallel", [(4, 4), (4, 1)])
def test_accounts_are_collected_in_parallel_up_to_the_cap(n_accounts: int, parallel: int
                                                          ) -> None:
    slow = Slow(0.1)
    config = make_config(
        collection={"max_parallel_accounts": parallel},
        accounts=[{"role_arn": f"arn:aws:iam::11111111111{i}:role/r"} for i in range(n_accounts)])
    stats = ApiStats()
    targets = [Target(config, stats, account=a) for a in config.accounts]
    p = Poller(config, targets, collect=slow)
    snap = p.run_cycle()
    assert slow.peak == parallel
    assert [a.account_id for a in snap.accounts] == [f"11111111111{i}" for i in range(n_accounts)]


def test_log_has_a_traceback_only_for_unexpected_errors(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    p, _ = poller(Script(denied(), ZeroDivisionError("bug")))
    with caplog.at_level("ERROR", logger="exporter.poller"):
        p.run_cycle()
        p.run_cycle()
    failed = [r for r in caplog.records if r.getMessage() == "collection failed"]
    assert [getattr(r, "error", None) for r in failed] == ["AccessDenied", "ZeroDivisionError"]
    assert failed[0].exc_info is None
    assert failed[1].exc_info is not None


def test_a_stuck_account_is_not_waited_for_past_its_deadline() -> None:
    """A call stuck inside botocore cannot hold the cycle, nor run twice at once."""
    release = threading.Event()
    calls = 0

    def collect(target: Any, cfg: Any, deadline: Deadline) -> AccountInventory:
        nonlocal calls
        calls += 1
        if calls == 1:
            return inventory(1)
        release.wait(30)  # stuck, deaf to the deadline
        return inventory(2)

    p, _ = poller(collect, collection={"timeout_seconds": 0.5})
    p.run_cycle()
    t0 = time.monotonic()
    st = p.run_cycle().accounts[0]
    took = time.monotonic() - t0
    assert 0.5 <= took < 0.5 + OVERRUN + 1
    assert st.error == "DeadlineExceeded" and not st.success
    assert st.inventory is not None and st.inventory.users[0].count("Active") == 1
    # Still stuck: the next cycle does not start a second collection of it.
    st = p.run_cycle().accounts[0]
    assert st.error == "StillRunning" and calls == 2
    release.set()
    deadline = time.monotonic() + 5
    while p._busy and time.monotonic() < deadline:
        time.sleep(0.02)
    st = p.run_cycle().accounts[0]
    assert st.success and calls == 3
    assert st.inventory is not None and st.inventory.users[0].count("Active") == 2


def test_a_stuck_account_does_not_hide_the_others() -> None:
    stuck = threading.Event()

    def collect(target: Target, cfg: Any, deadline: Deadline) -> AccountInventory:
        if target.account_id.endswith("0"):
            stuck.wait(30)
        return inventory(1, account_id=target.account_id)

    config = make_config(collection={"timeout_seconds": 0.3}, accounts=[
        {"role_arn": f"arn:aws:iam::11111111111{i}:role/r"} for i in range(3)])
    stats = ApiStats()
    p = Poller(config, [Target(config, stats, account=a) for a in config.accounts],
               collect=collect)
    try:
        snap = p.run_cycle()
        assert [(a.account_id, a.success, a.error) for a in snap.accounts] == [
            ("111111111110", False, "DeadlineExceeded"),
            ("111111111111", True, None),
            ("111111111112", True, None)]
    finally:
        stuck.set()
