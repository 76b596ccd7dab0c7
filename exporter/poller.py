"""The poller: collects every account on the exporter's own timer and publishes snapshots.

One background thread; the first cycle starts at once, then one every ``interval_seconds``
(± 10 % jitter so that many exporters do not hit IAM in step). A lock makes sure two cycles
never overlap, a deadline bounds each account, and nothing raised inside a cycle can end
the thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from exporter.aws.collect import collect_account
from exporter.aws.errors import CollectionError, Deadline, error_code
from exporter.aws.session import Target
from exporter.config import Config
from exporter.inventory import STATUSES, AccountInventory, AccountState, Snapshot

log = logging.getLogger("exporter.poller")

JITTER = 0.1

Collect = Callable[[Target, Config, Deadline], AccountInventory]


class Poller:
    def __init__(self, cfg: Config, targets: Sequence[Target],
                 publish: Callable[[Snapshot], None] | None = None,
                 collect: Collect = collect_account) -> None:
        self.cfg = cfg
        self.targets = list(targets)
        self._publish = publish
        self._collect = collect
        self._cycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._states: dict[str, AccountState] = {}
        # By target key, not account id: the id of the default credentials is only known
        # once STS answers, and failures from before then belong to it too.
        self._errors: Counter[tuple[str, str]] = Counter()
        self._cycles = 0
        self.snapshot = Snapshot()

    # -- one cycle -----------------------------------------------------------------------

    def _collect_one(self, target: Target) -> AccountState:
        started = time.monotonic()
        prev = self._states.get(target.key)
        try:
            inv = self._collect(target, self.cfg, Deadline(self.cfg.cycle_timeout))
        except Exception as e:
            duration = time.monotonic() - started
            code = error_code(e)
            # A traceback only for what we did not expect: AWS and collection errors are
            # fully described by their code.
            known = isinstance(e, ClientError | BotoCoreError | CollectionError)
            log.error("collection failed", exc_info=None if known else e, extra={
                "account_id": target.account_id, "account_name": target.name,
                "error": code, "detail": str(e)[:300], "duration_s": round(duration, 3),
                "kept_last_good": prev is not None and prev.inventory is not None})
            return AccountState(
                key=target.key, account_id=target.account_id, name=target.name,
                inventory=prev.inventory if prev else None, success=False,
                duration=duration, last_success=prev.last_success if prev else None,
                error=code)
        duration = time.monotonic() - started
        counts = {s: sum(u.count(s) for u in inv.users) for s in STATUSES}
        log.info("collection done", extra={
            "account_id": inv.account_id, "account_name": target.name,
            "strategy": inv.strategy, "users": len(inv.users),
            "keys_active": counts["Active"], "keys_inactive": counts["Inactive"],
            "multi_active_users": sum(1 for u in inv.users if u.count("Active") > 1),
            "duration_s": round(duration, 3),
            **({"warnings": "; ".join(inv.warnings)} if inv.warnings else {})})
        return AccountState(
            key=target.key, account_id=inv.account_id, name=target.name, inventory=inv,
            success=True, duration=duration, last_success=time.time())

    def run_cycle(self) -> Snapshot:
        """Collects every account once (never two cycles at once) and publishes."""
        with self._cycle_lock:
            workers = min(self.cfg.collection.max_parallel_accounts, len(self.targets)) or 1
            with ThreadPoolExecutor(workers, thread_name_prefix="iam-account") as pool:
                states = list(pool.map(self._collect_one, self.targets))
            for st in states:
                self._states[st.key] = st
                if not st.success:
                    self._errors[(st.key, st.error or "unknown")] += 1
            self._cycles += 1
            ids = {t.key: t.account_id for t in self.targets}
            errors: Counter[tuple[str, str]] = Counter()
            for (key, code), n in self._errors.items():
                errors[(ids[key], code)] += n
            self.snapshot = Snapshot(accounts=tuple(states), cycles=self._cycles,
                                     completed_at=time.time(), error_counts=dict(errors))
            if self._publish is not None:
                self._publish(self.snapshot)
            return self.snapshot

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_cycle()
            except Exception:  # the thread must outlive any bug in a cycle
                log.exception("collection cycle crashed; retrying next interval")
            interval = self.cfg.interval_seconds * (1 + random.uniform(-JITTER, JITTER))
            self._stop.wait(max(interval - (time.monotonic() - started), 0.0))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="iam-poller", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
