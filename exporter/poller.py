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
from exporter.inventory import AccountInventory, AccountState, Snapshot

log = logging.getLogger("exporter.poller")

JITTER = 0.1
# Seconds past an account's deadline before the cycle stops waiting for it.
OVERRUN = 2.0
# While a cycle waits for slow accounts, the ones done are published at most this often.
PROGRESS_EVERY = 1.0

Collect = Callable[[Target, Config, Deadline], AccountInventory]


class Poller:
    def __init__(self, cfg: Config, targets: Sequence[Target] | AccountSet,
                 publish: Callable[[Snapshot], None] | None = None,
                 collect: Collect = collect_account,
                 starting: Callable[[], None] | None = None,
                 finished: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        # Called as each cycle starts and after it is published (memory housekeeping).
        self._starting = starting
        self._finished = finished
        self._accounts = targets if isinstance(targets, AccountSet) else None
        self.targets = [] if isinstance(targets, AccountSet) else list(targets)
        self._publish = publish
        self._collect = collect
        self._cycle_lock = threading.Lock()
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
        log.error("collection failed", exc_info=exc, extra={
            "account_id": target.account_id, "account_name": target.name,
            "error": code, "detail": detail[:300], "duration_s": round(duration, 3),
            "kept_last_good": prev is not None and prev.inventory is not None})
        return AccountState(
            key=target.key, account_id=target.account_id, name=target.name,
            inventory=prev.inventory if prev else None, success=False,
            duration=duration, last_success=prev.last_success if prev else None, error=code)

    def _collect_one(self, target: Target, started_at: dict[str, float]) -> AccountState:
        started = started_at[target.key] = time.monotonic()
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
        totals = inv.key_totals()
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
                states.append(self._failed(t, "StillRunning", 0.0,
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
        for key in [k for k in self._states if k not in keys]:
            del self._states[key]
        for err in [e for e in self._errors if e[0] not in keys]:
            del self._errors[err]

    def run_cycle(self) -> Snapshot:
        """Collects every account once (never two cycles at once) and publishes."""
        with self._cycle_lock:
            if self._starting is not None:
                self._starting()
            self._resolve_targets()
            states = self._collect_all(self._progress if self._publish else None)
            for st in states:
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
                error_counts=dict(errors), **self._placement())
            if self._publish is not None:
                self._publish(self.snapshot)
            if self._finished is not None:
                self._finished()
            return self.snapshot

    def _progress(self, done: list[AccountState]) -> None:
        """Publishes the accounts done so far in this cycle, the others as they were."""
        fresh = {st.key: st for st in done}
        accounts = tuple(fresh.get(t.key) or self._states[t.key] for t in self.targets
                         if t.key in fresh or t.key in self._states)
        self.snapshot = dataclasses.replace(
            self.snapshot, accounts=accounts,
            completed_at=self.snapshot.completed_at or time.time(), **self._placement())
        assert self._publish is not None, "only passed as progress when publishing"
        self._publish(self.snapshot)

    def _placement(self) -> dict[str, Any]:
        """How the accounts were chosen: the last discovery and this replica's shard."""
        return {"discovery": self._accounts.discovery if self._accounts else None,
                "shard": (self.cfg.sharding.shard, self.cfg.sharding.total)}

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_cycle()
            except Exception:  # the thread must outlive any bug in a cycle
                log.exception("collection cycle crashed; retrying next interval")
            interval = self.cfg.interval_seconds * (1 + random.uniform(-JITTER, JITTER))
            self._wake.wait(max(interval - (time.monotonic() - started), 0.0))
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
