"""Soak: many short cycles with users and keys churning. Memory stays flat, no thread or
file descriptor is left behind, and deleted users' series are gone. Bounded to well under
a minute: 500 cycles through the real poller, renderer and WSGI app with a churning fake
collection, then 80 cycles against the moto server over real HTTP."""

from __future__ import annotations

import gc
import logging
import os
import random
import threading
from typing import Any

import pytest
from werkzeug.test import Client

from exporter import metrics, web
from exporter.aws.accounts import AccountSet
from exporter.aws.errors import Deadline
from exporter.aws.session import ApiStats, Target
from exporter.inventory import AccessKey, AccountInventory, Snapshot, User
from exporter.metrics import Exposition, RenderInput
from exporter.poller import Poller
from tests.daemon import parse_samples, sample
from tests.helpers import MOTO_ACCOUNT, add_user, make_config

A = MOTO_ACCOUNT


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


class Churn:
    """A collect function whose account changes every cycle: users come and go, keys are
    created, deactivated and deleted; one cycle in seven fails."""

    def __init__(self) -> None:
        self.rng = random.Random(500)
        self.users: dict[str, list[AccessKey]] = {}
        self.next_id = 0
        self.gone: set[str] = set()
        self.calls = 0

    def step(self) -> None:
        rng = self.rng
        n = rng.randint(5, 15)
        for _ in range(n if len(self.users) < 200 else rng.randint(3, 12)):
            name = f"user-{self.next_id}-" + "x" * rng.randint(0, 40)
            self.next_id += 1
            self.users[name] = []
            self.gone.discard(name)
        leaving = n // 3 if len(self.users) < 200 else len(self.users) - 200 + n // 2
        for name in rng.sample(sorted(self.users), k=max(0, min(len(self.users), leaving))):
            del self.users[name]
            self.gone.add(name)
        for keys in self.users.values():
            roll = rng.random()
            if roll < 0.2 and len(keys) < 2:
                keys.append(AccessKey(f"AKIA{self.next_id:08d}{len(keys):08d}", "Active",
                                      1.7e9 + self.next_id))
            elif roll < 0.3 and keys:
                keys[0] = AccessKey(keys[0].key_id, "Inactive", keys[0].created)
            elif roll < 0.35 and keys:
                keys.pop()

    def __call__(self, target: Target, cfg: Any, deadline: Deadline) -> AccountInventory:
        self.calls += 1
        if self.calls % 7 == 0:
            raise RuntimeError("injected failure")
        self.step()
        return AccountInventory(A, "list", tuple(
            User(name, keys=tuple(keys), tags=(("Team", name[:8]),))
            for name, keys in sorted(self.users.items())))


def measure() -> tuple[int, int, int]:
    gc.collect()
    return rss_bytes(), threads(), fds()


def test_500_churning_cycles_stay_flat(caplog: pytest.LogCaptureFixture) -> None:
    # Captured log records would pile up in memory themselves.
    caplog.set_level(logging.CRITICAL, logger="exporter")
    cfg = make_config(interval_seconds=1, metrics={"user_tags": {"Team": "team"}})
    stats = ApiStats()
    store = web.Store(Exposition.of(RenderInput(Snapshot(), stats.counts(), 1, cfg.metrics)))

    def publish(snap: Snapshot) -> None:
        store.set(Exposition.of(RenderInput(snap, stats.counts(), 1, cfg.metrics)))

    churn = Churn()
    poller = Poller(cfg, [Target(cfg, stats)], publish=publish, collect=churn)
    client = Client(web.App(store, poller))
    baseline: tuple[int, int, int] | None = None
    sizes = []
    for cycle in range(500):
        snap = poller.run_cycle()
        sizes.append(len(churn.users))
        body = client.get("/metrics", headers={"Accept-Encoding": "gzip"} if cycle % 2
                          else {}).get_data()
        assert body
        if cycle == 100:  # after warm-up: caches, allocator arenas, first pools
            baseline = measure()
        if churn.calls % 7 and cycle % 50 == 0:
            # The series are exactly the live users: the deleted ones are gone.
            s = parse_samples(client.get("/metrics").get_data(as_text=True))
            names = {dict(k[1])["user_name"] for k in s if k[0] == "iam_user_access_keys"}
            assert names == set(churn.users)
            assert not names & churn.gone
            assert snap.accounts[0].success
    assert baseline is not None
    assert min(sizes[100:]) >= 150 and max(sizes) <= 230, (min(sizes[100:]), max(sizes))
    rss, n_threads, n_fds = measure()
    print(f"soak fake: RSS {(rss - baseline[0]) / 2**20:+.1f} MiB after 400 cycles, threads "
          f"{baseline[1]}->{n_threads}, fds {baseline[2]}->{n_fds}")
    assert n_threads <= baseline[1] and n_fds <= baseline[2], (baseline, n_threads, n_fds)
    assert rss - baseline[0] < 16 * 2**20, f"RSS grew {(rss - baseline[0]) / 2**20:.1f} MiB"
    assert poller.snapshot.cycles == 500
    assert sum(n for (_, code), n in poller.snapshot.error_counts.items()
               if code == "RuntimeError") == churn.calls // 7


@pytest.mark.e2e
def test_cycles_against_moto_leave_no_threads_fds_or_series_behind(
        iam: Any, moto: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="exporter")
    cfg = make_config(interval_seconds=1, aws={"endpoint_url": moto},
                      collection={"concurrency": 4, "last_used": "off"})
    stats = ApiStats()
    published: list[Snapshot] = []
    poller = Poller(cfg, AccountSet(cfg, stats), publish=published.append)
    rng = random.Random(80)
    live: set[str] = set()
    for i in range(15):
        add_user(iam, f"u{i}", ("Active",))
        live.add(f"u{i}")
    baseline: tuple[int, int, int] | None = None
    next_user = 15
    before = threading.active_count()
    for cycle in range(80):
        # churn: one user leaves, one joins, one rotates a key
        gone = rng.choice(sorted(live))
        for k in iam.list_access_keys(UserName=gone)["AccessKeyMetadata"]:
            iam.delete_access_key(UserName=gone, AccessKeyId=k["AccessKeyId"])
        iam.delete_user(UserName=gone)
        live.discard(gone)
        add_user(iam, f"u{next_user}", ("Active",) * rng.randint(0, 2))
        live.add(f"u{next_user}")
        next_user += 1
        snap = poller.run_cycle()
        assert snap.accounts[0].success, snap.accounts[0].error
        inv = snap.accounts[0].inventory
        assert inv is not None and {u.name for u in inv.users} == live
        if cycle == 20:
            baseline = measure()
    assert baseline is not None
    rss, n_threads, n_fds = measure()
    print(f"soak moto: RSS {(rss - baseline[0]) / 2**20:+.1f} MiB after 60 cycles, threads "
          f"{baseline[1]}->{n_threads}, fds {baseline[2]}->{n_fds}")
    # botocore keeps a bounded pool of connections per client; nothing grows per cycle.
    assert n_threads <= baseline[1] + 1 and n_fds <= baseline[2] + 2, (
        baseline, n_threads, n_fds)
    assert threading.active_count() <= before + 1
    assert rss - baseline[0] < 24 * 2**20, f"RSS grew {(rss - baseline[0]) / 2**20:.1f} MiB"
    text = metrics.render(RenderInput(published[-1], stats.counts(), 1, cfg.metrics))
    s = parse_samples(text.decode())
    names = {dict(k[1])["user_name"] for k in s if k[0] == "iam_user_access_keys"}
    assert names == live
    assert sample(s, "iam_exporter_cycles_total") == 80
