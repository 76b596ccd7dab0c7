"""The poller: collects every account on the exporter's own timer and publishes snapshots.

One background thread; the first cycle starts at once, then one every ``interval_seconds``
(± 10 % jitter so that many exporters do not hit IAM in step). A lock makes sure two cycles
never overlap, a deadline bounds each account, and nothing raised inside a cycle can end
the thread.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from exporter.aws.accounts import AccountSet
from exporter.aws.collect import collect_account
from exporter.aws.errors import CollectionError, Deadline, error_code
from exporter.aws.session import Target
from exporter.config import Config
from exporter.inventory import AccountInventory, AccountState, Snapshot, User

log = logging.getLogger("exporter.poller")

JITTER = 0.1
# Seconds past an account's deadline before the cycle stops waiting for it.
OVERRUN = 2.0
# While a cycle waits for slow accounts, the ones done are published at most this often.
PROGRESS_EVERY = 1.0

Collect = Callable[[Target, Config, Deadline], AccountInventory]
# What an event learnt of one user: (target key, user name, the user as IAM showed it or
# None when it no longer exists, unix time it was read).
UserChange = tuple[str, str, User | None, float]


class Poller:
    def __init__(self, cfg: Config, targets: Sequence[Target] | AccountSet,
                 publish: Callable[[Snapshot], None] | None = None,
                 collect: Collect = collect_account,
                 ) -> None:
        self.cfg = cfg
        self._accounts = targets if isinstance(targets, AccountSet) else None
        self.targets = [] if isinstance(targets, AccountSet) else list(targets)
        self._publish = publish
        self._collect = collect
        self._cycle_lock = threading.Lock()
        # Guards _states, _overrides and snapshot: events change them during a cycle.
        self._state_lock = threading.RLock()
        # Users re-read through events, by target key and name, until a cycle's data
        # is newer than the read.
        self._overrides: dict[str, dict[str, tuple[float, User | None]]] = {}
        self._started_at: dict[str, float] = {}  # wall time each running collection began
        self._overrun = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._states: dict[str, AccountState] = {}
        # By target key, not account id: the id of the default credentials is only known
        # once STS answers, and failures from before then belong to it too.
        self._errors: Counter[tuple[str, str]] = Counter()
        self._cycles = 0
        # Target keys whose collection is running (set operations are atomic in CPython).
        self._busy: set[str] = set()
        self.snapshot = Snapshot()

    # -- one cycle -----------------------------------------------------------------------

    def _failed(self, target: Target, code: str, duration: float, detail: str,
                exc: BaseException | None = None) -> AccountState:
        """A failed account's state: the last good inventory is kept, and said so."""
        prev = self._states.get(target.key)
        inventory = prev.inventory if prev else None
        last = prev.last_success if prev else None
        # Served for at most max_stale_seconds: a deleted role must not keep months-old
        # per-user series (and their alerts) alive.
        withdrawn = (inventory is not None and last is not None
                     and time.time() - last > self.cfg.collection.max_stale_seconds)
        log.error("collection failed", exc_info=exc, extra={
            "account_id": target.account_id, "account_name": target.name,
            "error": code, "detail": detail[:300], "duration_s": round(duration, 3),
            "kept_last_good": inventory is not None and not withdrawn,
            **({"withdrawn_after_s": self.cfg.collection.max_stale_seconds}
               if withdrawn else {})})
        return AccountState(
            key=target.key, account_id=target.account_id, name=target.name,
            inventory=None if withdrawn else inventory, success=False,
            duration=duration, last_success=last, error=code,
            withdrawn=withdrawn or bool(prev and prev.withdrawn and inventory is None))

    def _collect_one(self, target: Target, started_at: dict[str, float]) -> AccountState:
        started = started_at[target.key] = time.monotonic()
        self._started_at[target.key] = time.time()
        # A fresh client each cycle: a retry quota drained by a throttling storm must not
        # fail every later cycle (the session and its credentials are kept).
        target.fresh_iam()
        try:
            inv = self._collect(target, self.cfg, Deadline(self.cfg.cycle_timeout))
        except Exception as e:
            # A traceback only for what we did not expect: AWS and collection errors are
            # fully described by their code.
            known = isinstance(e, ClientError | BotoCoreError | CollectionError)
            return self._failed(target, error_code(e), time.monotonic() - started, str(e),
                                exc=None if known else e)
        finally:
            self._busy.discard(target.key)
        duration = time.monotonic() - started
        inv = self._with_last_known(target.key, inv)
        totals = inv.key_totals()
        if inv.unread or any(u.stale for u in inv.users):
            log.warning("some users' keys could not be read; last known keys served", extra={
                "account_id": inv.account_id, "account_name": target.name,
                "users": ", ".join(f"{u.name} ({u.stale})" for u in inv.users if u.stale)[:300],
                "users_never_read": ", ".join(f"{n} ({r})" for n, _, r in inv.unread)[:300]})
        log.info("collection done", extra={
            "account_id": inv.account_id, "account_name": target.name,
            "strategy": inv.strategy, "users": len(inv.users),
            "keys_active": totals.active, "keys_inactive": totals.inactive,
            "multi_active_users": totals.multi_active_users,
            "duration_s": round(duration, 3),
            **({"warnings": "; ".join(map(str, inv.warnings))} if inv.warnings else {})})
        return AccountState(
            key=target.key, account_id=inv.account_id, name=target.name, inventory=inv,
            success=True, duration=duration, last_success=time.time())

    def _collect_all(self, progress: Callable[[list[AccountState]], None] | None = None
                     ) -> list[AccountState]:
        """Every account in parallel (up to the cap), none waited for past its deadline.

        The deadline is checked between AWS calls; a call stuck inside botocore's retries
        could still outlast it, so the cycle stops waiting for such an account, reports it
        failed, and does not start it again until the stuck collection has ended.
        """
        timeout = self.cfg.cycle_timeout
        workers = min(self.cfg.collection.max_parallel_accounts, len(self.targets)) or 1
        pool = ThreadPoolExecutor(workers, thread_name_prefix="iam-account")
        started_at: dict[str, float] = {}
        futures: dict[str, Future[AccountState]] = {}
        for t in self.targets:
            if t.key not in self._busy:
                self._busy.add(t.key)
                futures[t.key] = pool.submit(self._collect_one, t, started_at)
        pending = set(futures.values())
        overdue: set[str] = set()
        published, unpublished = 0.0, False
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            # Accounts done while others are still running go out now (throttled): one
            # slow account must not hold the others' fresh data back until its deadline.
            unpublished = unpublished or bool(done)
            if (unpublished and pending and progress is not None
                    and time.monotonic() - published >= PROGRESS_EVERY):
                progress([f.result() for f in futures.values() if f.done()])
                published, unpublished = time.monotonic(), False
            now = time.monotonic()
            for key, fut in futures.items():
                began = started_at.get(key)
                if fut in pending and began is not None and now - began > timeout + OVERRUN:
                    overdue.add(key)
                    pending.discard(fut)
        pool.shutdown(wait=False)
        states = []
        for t in self.targets:
            result = futures.get(t.key)
            if result is None:
                began = self._started_at.get(t.key)
                states.append(self._failed(t, "StillRunning",
                                           time.time() - began if began else 0.0,
                                           "the previous collection has not ended yet"))
            elif t.key in overdue:
                states.append(self._failed(t, "DeadlineExceeded",
                                           time.monotonic() - started_at[t.key],
                                           f"no result within the {timeout:g}s deadline"))
            else:
                states.append(result.result())
        return states

    def reconfigure(self, cfg: Config) -> None:
        """Uses cfg from now on, and starts the next cycle now (so a new interval takes
        effect at once). Listen address and web settings need a restart; not read here."""
        self.cfg = cfg
        if self._accounts is not None:
            self._accounts.reconfigure(cfg)
        self._wake.set()

    def _resolve_targets(self) -> None:
        if self._accounts is not None:
            self.targets = self._accounts.resolve(self._cycles)
        keys = {t.key for t in self.targets}
        # Accounts no longer watched (left the Organization, another shard, removed from
        # the config): their series go with them.
        with self._state_lock:
            for key in [k for k in self._states if k not in keys]:
                del self._states[key]
            for key in [k for k in self._overrides if k not in keys]:
                del self._overrides[key]
        for err in [e for e in self._errors if e[0] not in keys]:
            del self._errors[err]

    def run_cycle(self) -> Snapshot:
        """Collects every account once (never two cycles at once) and publishes."""
        with self._cycle_lock:
            self._resolve_targets()
            states = self._collect_all(self._progress if self._publish else None)
            with self._state_lock:
                for i, st in enumerate(states):
                    states[i] = st = self._overlay(st)
                    self._states[st.key] = st
                    if not st.success:
                        self._errors[(st.key, st.error or "unknown")] += 1
                self._cycles += 1
                ids = {t.key: t.account_id for t in self.targets}
                errors: Counter[tuple[str, str]] = Counter()
                for (key, code), n in self._errors.items():
                    errors[(ids[key], code)] += n
                self.snapshot = Snapshot(
                    accounts=tuple(states), cycles=self._cycles, completed_at=time.time(),
                    error_counts=dict(errors), overrun=self._overrun, **self._placement())
                snap = self.snapshot
            if self._publish is not None:
                self._publish(snap)
            return snap

    def _progress(self, done: list[AccountState]) -> None:
        """Publishes the accounts done so far in this cycle, the others as they were."""
        with self._state_lock:
            fresh = {st.key: self._overlay(st) for st in done}
            accounts = tuple(fresh.get(t.key) or self._states[t.key] for t in self.targets
                             if t.key in fresh or t.key in self._states)
            self.snapshot = snap = dataclasses.replace(
                self.snapshot, accounts=accounts,
                completed_at=self.snapshot.completed_at or time.time(), **self._placement())
        assert self._publish is not None, "only passed as progress when publishing"
        self._publish(snap)

    # -- users: last known keys, and changes learnt from events --------------------------

    def _with_last_known(self, key: str, inv: AccountInventory) -> AccountInventory:
        """Users whose keys could not be read keep their last known keys, marked stale."""
        if not inv.unread:
            return inv
        prev = self._states.get(key)
        known = {u.name: u for u in prev.inventory.users} if prev and prev.inventory else {}
        users = list(inv.users)
        unread = []
        for name, path, reason in inv.unread:
            last = known.get(name)
            if last is not None:
                users.append(dataclasses.replace(last, stale=reason))
            else:
                unread.append((name, path, reason))
        users.sort(key=lambda u: u.name)
        return dataclasses.replace(inv, users=tuple(users), unread=tuple(unread))

    def _overlay(self, st: AccountState) -> AccountState:
        """A collected state with the users events read after its data was taken; the
        changes it is as new as are dropped."""
        ov = self._overrides.get(st.key)
        inv = st.inventory
        if not ov or inv is None or not st.success:
            return st
        newer = {n: v for n, v in ov.items() if v[0] > inv.data_time}
        if newer:
            self._overrides[st.key] = newer
        else:
            del self._overrides[st.key]
        for name, (_, user) in newer.items():
            inv = inv.with_user(name, user)
        return dataclasses.replace(st, inventory=inv)

    def target_for(self, account_id: str) -> Target | None:
        """The watched target of an account id (this replica's shard), if any."""
        for t in list(self.targets):
            if t.account_id == account_id:
                return t
        return None

    def apply(self, changes: list[UserChange]) -> None:
        """Puts users re-read through events into the served inventory, and publishes
        once. A change older than the account's data (or than a change already applied)
        is dropped."""
        if not changes:
            return
        with self._state_lock:
            for key, name, user, read_at in changes:
                ov = self._overrides.setdefault(key, {})
                if name in ov and ov[name][0] >= read_at:
                    continue
                st = self._states.get(key)
                if st is not None and st.inventory is not None:
                    if read_at <= st.inventory.data_time:
                        continue
                    st = dataclasses.replace(st, inventory=st.inventory.with_user(name, user))
                    self._states[key] = st
                ov[name] = (read_at, user)
            accounts = tuple(self._states[t.key] for t in self.targets if t.key in self._states)
            self.snapshot = snap = dataclasses.replace(self.snapshot, accounts=accounts)
        if self._publish is not None:
            self._publish(snap)

    def _placement(self) -> dict[str, Any]:
        """How the accounts were chosen: the last discovery and this replica's shard."""
        return {"discovery": self._accounts.discovery if self._accounts else None,
                "shard": (self.cfg.sharding.shard, self.cfg.sharding.total)}

    # -- the thread ----------------------------------------------------------------------

    def _pause(self, took: float) -> float:
        """Seconds to wait before the next cycle: the rest of the interval, or, after a
        cycle that overran it, the minimum pause (never back to back)."""
        interval = self.cfg.interval_seconds * (1 + random.uniform(-JITTER, JITTER))
        self._overrun = took > self.cfg.interval_seconds
        if self._overrun:
            # Never longer than the interval itself: a short interval asked for data often.
            pause = min(self.cfg.collection.min_pause_seconds, self.cfg.interval_seconds)
            log.warning("collection cycle took longer than interval_seconds; raise "
                        "interval_seconds (or aws.max_requests_per_second)", extra={
                            "took_s": round(took, 1),
                            "interval_s": self.cfg.interval_seconds, "pause_s": pause})
            with self._state_lock:
                self.snapshot = dataclasses.replace(self.snapshot, overrun=True)
            return pause
        return max(interval - took, 0.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_cycle()
            except Exception:  # the thread must outlive any bug in a cycle
                log.exception("collection cycle crashed; retrying next interval")
            self._wake.wait(self._pause(time.monotonic() - started))
            self._wake.clear()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="iam-poller", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
