"""The poller: keeps one reconciling loop per watched account and publishes snapshots.

It resolves the watched accounts (the static list, the own account, Organizations
discovery, this replica's shard) at start and once per interval, starts and stops an
``AccountLoop`` for each, hands event re-reads to the right loop, and publishes what the
stores hold: at once after an event, at most every PUBLISH_SECONDS while users are
polled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from exporter.aws.accounts import AccountSet
from exporter.aws.session import Target
from exporter.config import Config
from exporter.inventory import AccountInventory, AccountState, Snapshot
from exporter.reconcile import AccountLoop
from exporter.workqueue import Ticket

log = logging.getLogger("exporter.poller")

# While users are polled, the served data is renewed at most this often (an event's
# read is published at once).
PUBLISH_SECONDS = 2.0
# An event's change is published after at most this long (others it can join).
URGENT_SECONDS = 0.05


def _reads_changed(old: Config, new: Config) -> bool:
    """Whether a new config reads users differently, or more often."""
    return (new.interval_seconds < old.interval_seconds
            or new.collection != old.collection
            or (new.metrics.user_tags, new.metrics.exempt_tag)
            != (old.metrics.user_tags, old.metrics.exempt_tag))


class Poller:
    def __init__(self, cfg: Config, targets: Sequence[Target] | AccountSet,
                 publish: Callable[[Snapshot], None] | None = None) -> None:
        self.cfg = cfg
        self._accounts = targets if isinstance(targets, AccountSet) else None
        self._static = [] if isinstance(targets, AccountSet) else list(targets)
        self.targets: list[Target] = []
        self._publish = publish
        self._lock = threading.RLock()
        self._loops: dict[str, AccountLoop] = {}
        self._states: dict[str, tuple[tuple[Any, ...], AccountState]] = {}
        self._resolves = 0
        self._started = time.time()
        self._ready = False
        self._stop = threading.Event()
        self._wake = threading.Event()  # resolve again now (a reload)
        self._dirty = threading.Event()
        self._urgent = False
        self._threads: list[threading.Thread] = []
        self.snapshot = Snapshot()

    # -- accounts ------------------------------------------------------------------------

    def resolve(self) -> None:
        """Which accounts are watched now: loops start for new ones, stop for those gone;
        a target rebuilt for new client settings keeps its account's store."""
        targets = (self._accounts.resolve(self._resolves) if self._accounts is not None
                   else list(self._static))
        with self._lock:
            self._resolves += 1
            keys = {t.key for t in targets}
            for key in [k for k in self._loops if k not in keys]:
                self._loops.pop(key).stop()
                self._states.pop(key, None)
            for t in targets:
                loop = self._loops.get(t.key)
                if loop is None:
                    loop = self._loops[t.key] = AccountLoop(t, self.cfg, self._changed)
                    loop.start()
                else:
                    old_cfg, old_strategy = loop.cfg, loop.strategy
                    loop.target, loop.cfg = t, self.cfg
                    if loop.strategy != old_strategy or _reads_changed(old_cfg, self.cfg):
                        # What is read, or how often, changed (a reload): a pass at once,
                        # not when the old interval would have had one.
                        loop.queue.resync()
            self.targets = targets
        self._changed(False)

    def reconfigure(self, cfg: Config) -> None:
        """Uses cfg from now on; accounts are resolved again at once. Listen address and
        web settings need a restart; not read here."""
        self.cfg = cfg
        if self._accounts is not None:
            self._accounts.reconfigure(cfg)
        self._wake.set()

    def target_for(self, account_id: str) -> Target | None:
        """The watched target of an account id (this replica's shard), if any."""
        for t in list(self.targets):
            if t.account_id == account_id:
                return t
        return None

    @property
    def resolved(self) -> bool:
        """The watched accounts are known (events can be told apart from others')."""
        return self._resolves > 0

    def request(self, target: Target, name: str, events: set[str]) -> Ticket | None:
        """Puts a user an event named at the head of its account's queue."""
        loop = self._loops.get(target.key)
        return loop.queue.event(name, events) if loop is not None else None

    # -- publishing ----------------------------------------------------------------------

    def _changed(self, urgent: bool) -> None:
        if urgent:
            self._urgent = True
        self._dirty.set()

    def _state(self, loop: AccountLoop) -> AccountState:
        """The account's state; the same object while nothing changed (the render cache
        keys on it)."""
        store, t = loop.store, loop.target
        withdrawn = (not loop.success and loop.last_success is not None
                     and time.time() - loop.last_success > self.cfg.collection.max_stale_seconds)
        # Everything the state is made of; the store's reads only where it changed.
        key = (store.version, loop.success, loop.error, loop.last_success, loop.duration,
               withdrawn,
               t.account_id, t.name, loop.strategy, loop.cfg.interval_seconds)
        old = self._states.get(t.key)
        if old is not None and old[0] == key:
            return old[1]
        fresh = store.freshness()
        inventory: AccountInventory | None = store.inventory() if store.listed else None
        st = AccountState(
            key=t.key, account_id=t.account_id, name=t.name,
            inventory=None if withdrawn else inventory, success=loop.success,
            duration=loop.duration, last_success=loop.last_success, error=loop.error,
            withdrawn=withdrawn, oldest_read=fresh.oldest_read, never_read=fresh.never_read,
            needed_rate=loop.needed_rate(fresh.users))
        self._states[t.key] = (key, st)
        return st

    def build(self) -> Snapshot:
        with self._lock:
            loops = [self._loops[t.key] for t in self.targets if t.key in self._loops]
            accounts = tuple(self._state(loop) for loop in loops)
            errors = {(loop.target.account_id, code): n for loop in loops
                      for code, n in loop.errors.items()}
            if not self._ready and self.resolved:
                self._ready = all(loop.settled_since(self._started) for loop in loops)
            self.snapshot = Snapshot(
                accounts=accounts, completed_at=time.time() if self.resolved else None,
                error_counts=errors, ready=self._ready, **self._placement())
            return self.snapshot

    def publish(self) -> Snapshot:
        snap = self.build()
        if self._publish is not None:
            self._publish(snap)
        return snap

    def _placement(self) -> dict[str, Any]:
        """How the accounts were chosen: the last discovery and this replica's shard."""
        return {"discovery": self._accounts.discovery if self._accounts else None,
                "shard": (self.cfg.sharding.shard, self.cfg.sharding.total)}

    # -- threads -------------------------------------------------------------------------

    def _resolver(self) -> None:
        while not self._stop.is_set():
            try:
                self.resolve()
            except Exception:  # the thread must outlive any bug
                log.exception("resolving the watched accounts crashed; retrying")
            self._wake.wait(self.cfg.interval_seconds)
            self._wake.clear()

    def _publisher(self) -> None:
        last, pause = 0.0, PUBLISH_SECONDS
        while not self._stop.is_set():
            if not self._dirty.wait(1.0):
                continue  # nothing changed: nothing to render
            # Polls are published at most every PUBLISH_SECONDS, an event at once (with
            # whatever arrives in the next moment).
            while (not self._urgent and not self._stop.is_set()
                   and time.monotonic() - last < pause):
                time.sleep(URGENT_SECONDS)
            if self._stop.is_set():
                return
            time.sleep(URGENT_SECONDS if self._urgent else 0.0)
            self._urgent = False
            self._dirty.clear()
            last = time.monotonic()
            try:
                self.publish()
            except Exception:
                log.exception("publishing the data failed; retrying")
            # Rendering a large estate while every account changes (a start) takes a
            # while: polls then publish less often, so rendering never takes more than
            # a fifth of the time.
            pause = max(PUBLISH_SECONDS, 4 * (time.monotonic() - last))

    def start(self) -> None:
        if self._threads:
            return
        for fn, name in ((self._resolver, "iam-accounts"), (self._publisher, "iam-publish")):
            th = threading.Thread(target=fn, name=name, daemon=True)
            th.start()
            self._threads.append(th)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._dirty.set()
        with self._lock:
            for loop in self._loops.values():
                loop.stop()
        for th in self._threads:
            th.join(timeout)

    def alive(self) -> bool:
        return bool(self._threads) and all(th.is_alive() for th in self._threads)

    def run_once(self, timeout: float | None = None) -> Snapshot:
        """Every account listed and each of its users read once from now (a pass on
        demand: ``once``, tests); the loops keep running. Returns the snapshot then."""
        since = time.time()
        if self.resolved:
            with self._lock:
                for loop in self._loops.values():
                    loop.queue.resync()
        self.start()
        end = None if timeout is None else time.monotonic() + timeout
        while end is None or time.monotonic() < end:
            with self._lock:
                loops = list(self._loops.values())
                done = self._resolves > 0 and all(loop.settled_since(since) for loop in loops)
            if done:
                break
            time.sleep(0.02)
        return self.publish()
