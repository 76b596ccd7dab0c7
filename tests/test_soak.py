"""Soak: many passes with users and keys churning in the moto server. Memory stays flat,
no thread or file descriptor is left behind, and deleted users' series are gone. Bounded
to well under a minute each: passes through the real poller, renderer and WSGI app (one
in seven with the listing refused by the fault proxy), then passes with the account loops
reading continuously (interval 1 s) beside them."""

from __future__ import annotations

import gc
import logging
import os
import random
import threading
import time
from typing import Any

import pytest
from werkzeug.test import Client

from exporter import metrics, web
from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats, Target
from exporter.inventory import Snapshot
from exporter.metrics import Exposition, RenderInput
from exporter.poller import Poller
from tests.awsproxy import AwsProxy
from tests.daemon import parse_samples, sample
from tests.helpers import MOTO_ACCOUNT, add_user, make_config
from tests.passes import one_pass

A = MOTO_ACCOUNT
DENY_LISTING = {"GetAccountAuthorizationDetails": "deny", "ListUsers": "deny"}


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def measure() -> tuple[int, int, int]:
    gc.collect()
    return rss_bytes(), threads(), fds()


class Churn:
    """Changes the account in moto before each pass: users come and go (with tags), keys
    are created, deactivated and deleted."""

    def __init__(self, iam: Any, seed: int, size: int) -> None:
        self.iam = iam
        self.rng = random.Random(seed)
        self.size = size
        self.live: dict[str, list[str]] = {}  # user → key ids
        self.gone: set[str] = set()
        self.next_id = 0

    def add(self) -> None:
        name = f"user-{self.next_id}-" + "x" * self.rng.randint(0, 40)
        self.next_id += 1
        self.live[name] = add_user(self.iam, name, ("Active",) * self.rng.randint(0, 2),
                                   tags={"Team": name[:8]})

    def remove(self, name: str) -> None:
        for key in self.live.pop(name):
            self.iam.delete_access_key(UserName=name, AccessKeyId=key)
        self.iam.delete_user(UserName=name)
        self.gone.add(name)

    def step(self) -> None:
        rng = self.rng
        while len(self.live) < self.size:
            self.add()
        for name in rng.sample(sorted(self.live), k=2):
            self.remove(name)
        for _ in range(2):
            self.add()
        for name in rng.sample(sorted(self.live), k=3):
            keys = self.live[name]
            roll = rng.random()
            if roll < 0.4 and len(keys) < 2:
                keys.append(self.iam.create_access_key(UserName=name)["AccessKey"]
                            ["AccessKeyId"])
            elif roll < 0.7 and keys:
                self.iam.update_access_key(UserName=name, AccessKeyId=keys[0],
                                           Status="Inactive")
            elif keys:
                self.iam.delete_access_key(UserName=name, AccessKeyId=keys.pop())

    def expected(self) -> dict[str, int]:
        """user → number of keys."""
        return {name: len(keys) for name, keys in self.live.items()}


def served_users(body: str) -> dict[str, int]:
    """user → keys, from an exposition."""
    out: dict[str, int] = {}
    for (name, labels), value in parse_samples(body).items():
        if name == "iam_user_access_keys":
            user = dict(labels)["user_name"]
            out[user] = out.get(user, 0) + int(value)
    return out


PASSES = 49  # 7 of them with the listing refused
WARM = 15  # passes before the baseline is taken (caches, allocator arenas, first pools)


def test_churning_passes_through_the_web_app_stay_flat(
        proxy: AwsProxy, iam: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Captured log records would pile up in memory themselves.
    caplog.set_level(logging.CRITICAL, logger="exporter")
    cfg = make_config(interval_seconds=300, aws={"endpoint_url": proxy.url, "max_attempts": 1},
                      collection={"last_used": "off", "concurrency": 4},
                      metrics={"user_tags": {"Team": "team"}})
    stats = ApiStats()
    store = web.Store(Exposition.of(RenderInput(Snapshot(), stats.counts(), 300, cfg.metrics)))

    def publish(snap: Snapshot) -> None:
        store.set(Exposition.of(RenderInput(snap, stats.counts(), 300, cfg.metrics)))

    churn = Churn(iam, seed=500, size=30)
    poller = Poller(cfg, [Target(cfg, stats)], publish=publish)
    client = Client(web.App(store, poller))
    baseline: tuple[int, int, int] | None = None
    failed = 0
    try:
        for n in range(PASSES):
            churn.step()
            fails = n % 7 == 6
            proxy.modes = dict(DENY_LISTING) if fails else {}
            snap = poller.run_once(30) if fails else one_pass(poller, 30)
            failed += fails
            body = client.get("/metrics", headers={"Accept-Encoding": "gzip"} if n % 2
                              else {}).get_data()
            assert body
            st = snap.accounts[0]
            if fails:
                assert not st.success and st.error == "AccessDenied"
                assert st.inventory is not None  # the last good data is served
            else:
                assert st.success, st.error
                # The series are exactly the live users and their keys: the deleted
                # ones are gone.
                served = served_users(client.get("/metrics").get_data(as_text=True))
                assert served == churn.expected()
                assert not set(served) & churn.gone
            if n == WARM:
                baseline = measure()
    finally:
        poller.stop()
    assert baseline is not None
    rss, n_threads, n_fds = measure()
    print(f"soak web: RSS {(rss - baseline[0]) / 2**20:+.1f} MiB after {PASSES - WARM} passes, "
          f"threads {baseline[1]}->{n_threads}, fds {baseline[2]}->{n_fds}")
    # A few fds of slack: each listing starts a fresh IAM client, whose pooled connections
    # close when it is collected (a leak would grow with the passes, not stay this small).
    assert n_threads <= baseline[1] and n_fds <= baseline[2] + 4, (baseline, n_threads, n_fds)
    assert rss - baseline[0] < 16 * 2**20, f"RSS grew {(rss - baseline[0]) / 2**20:.1f} MiB"
    assert failed == PASSES // 7
    assert poller.snapshot.error_counts == {(A, "AccessDenied"): failed}


@pytest.mark.e2e
def test_continuous_reads_against_moto_leave_no_threads_fds_or_series_behind(
        iam: Any, moto: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="exporter")
    # Interval 1 s: the loops list and read every user every second on their own, beside
    # the passes the test asks for.
    cfg = make_config(interval_seconds=1, aws={"endpoint_url": moto},
                      collection={"concurrency": 4, "last_used": "off"})
    stats = ApiStats()
    published: list[Snapshot] = []
    poller = Poller(cfg, AccountSet(cfg, stats), publish=published.append)
    churn = Churn(iam, seed=80, size=15)
    baseline: tuple[int, int, int] | None = None
    before = threading.active_count()
    try:
        for n in range(WARM + 30):
            churn.step()
            snap = one_pass(poller, 30)
            st = snap.accounts[0]
            assert st.success, st.error
            assert st.inventory is not None
            assert {u.name: len(u.keys) for u in st.inventory.users} == churn.expected()
            if n == WARM:
                baseline = measure()
        assert baseline is not None
        rss, n_threads, n_fds = measure()
        final = poller.publish()
        # Running: the resolver, the publisher, and at most collection.concurrency workers.
        assert threading.active_count() <= before + 2 + cfg.collection.concurrency, [
            t.name for t in threading.enumerate()]
    finally:
        poller.stop()
    print(f"soak moto: RSS {(rss - baseline[0]) / 2**20:+.1f} MiB after 30 passes, threads "
          f"{baseline[1]}->{n_threads}, fds {baseline[2]}->{n_fds}")
    # botocore keeps a bounded pool of connections per client; a loop's workers are
    # bounded by collection.concurrency; nothing grows per pass.
    assert n_threads <= baseline[1] + 1 and n_fds <= baseline[2] + 2, (
        baseline, n_threads, n_fds)
    # Stopped, the poller leaves no thread behind (a worker ends when its read does).
    end = time.monotonic() + 10
    while threading.active_count() > before + 1 and time.monotonic() < end:
        time.sleep(0.05)
    assert threading.active_count() <= before + 1, [t.name for t in threading.enumerate()]
    assert rss - baseline[0] < 24 * 2**20, f"RSS grew {(rss - baseline[0]) / 2**20:.1f} MiB"
    text = metrics.render(RenderInput(final, stats.counts(), 1, cfg.metrics))
    s = parse_samples(text.decode())
    assert served_users(text.decode()) == churn.expected()
    assert sample(s, "iam_exporter_collection_success", account_id=A) == 1
    assert sample(s, "iam_account_never_read_users", account_id=A) == 0
    oldest = sample(s, "iam_exporter_oldest_user_read_timestamp_seconds", account_id=A)
    assert oldest is not None and final.completed_at is not None
    # Read continuously: no user's read is older than a few intervals.
    assert final.completed_at - oldest < 10
    assert published, "the publisher thread published nothing"
