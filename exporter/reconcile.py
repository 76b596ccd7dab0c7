"""One account, reconciled continuously: its workers drain its queue into its store.

Like a Kubernetes controller: the listing is the informer's list (membership, once per
interval), the queue is the rate-limited work queue (its request budget paces every IAM
call), the interval is the resync period. No deadline throws reads away: when the budget
cannot hold the interval, every user's read just gets older, evenly, and the freshness
metrics say so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from exporter.aws import collect
from exporter.aws.errors import CollectionError, error_code
from exporter.aws.list_strategy import ACCOUNT_ERRORS
from exporter.aws.session import Target
from exporter.aws.user import OUTSIDE, read_user
from exporter.config import Config
from exporter.inventory import AccessKey
from exporter.store import AccountStore, Identity
from exporter.workqueue import Item, ReadQueue

log = logging.getLogger("exporter.reconcile")

# A worker with nothing to do for this long ends (one always stays).
IDLE_SECONDS = 30.0
# A user whose read failed is tried again after this long (at most the interval); one
# IAM would not show (denied) after an interval, like any other.
RETRY_SECONDS = 60.0
DENIED = collect.DENIED
# After an account-wide failure (credentials, the listing): nothing of the account is
# read for this long, doubling up to the interval.
PAUSE_MIN = 5.0


def account_level(e: BaseException) -> bool:
    """Errors of the account's credentials, not of one user."""
    return (isinstance(e, NoCredentialsError) or error_code(e) in ACCOUNT_ERRORS
            or getattr(e, "operation_name", None) == "AssumeRole")


class AccountLoop:
    """One watched account: its store, its queue, its workers and its health."""

    def __init__(self, target: Target, cfg: Config,
                 changed: Callable[[bool], None]) -> None:
        self.target = target
        self.cfg = cfg
        self._changed = changed  # called after every change (True: publish at once)
        self.store = AccountStore(target.account_id, self.strategy,
                                  cfg.collection.last_used != "off")
        self.queue = ReadQueue()
        self._report: dict[str, tuple[AccessKey, ...]] | None = None
        self._lock = threading.Lock()
        self._workers = 0
        self._stopped = False
        # Health, as /metrics shows it.
        self.success = False
        self.error: str | None = None
        self.last_success: float | None = None
        self.duration = 0.0
        self.errors: Counter[str] = Counter()
        self.list_tried_at = 0.0  # when a listing last ended, well or not
        self.failed_at = 0.0  # when an account-wide failure last happened
        self._failures = 0  # account-wide failures in a row
        # The pass: from a listing until each user it found was read once.
        self._pass_start: float | None = None
        self.pass_ended_at = 0.0
        self._pass_left: set[str] = set()
        # Users whose read ended since the running (or last) listing began.
        self._read_while_listing: set[str] = set()
        self._pass_failed: str | None = None

    @property
    def strategy(self) -> str:
        return self.target.strategy or self.cfg.collection.strategy

    # -- threads -------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn()

    def stop(self) -> None:
        self._stopped = True
        self.queue.close()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopped or self._workers >= self.cfg.collection.concurrency:
                return
            self._workers += 1
            n = self._workers
        threading.Thread(target=self._work, name=f"iam-{self.target.account_id}-{n}",
                         daemon=True).start()

    def _work(self) -> None:
        while True:
            item = self.queue.get(IDLE_SECONDS)
            if item is None:
                with self._lock:
                    if self._stopped or self._workers > 1:
                        self._workers -= 1
                        return
                continue
            if self.queue.has_due() and not self.target.budget.waiting():
                # More is due and the budget has room for it (calls waiting for their
                # turn would not go sooner with more threads): up to
                # collection.concurrency calls at once.
                self._spawn()
            try:
                self._handle(item)
            except Exception:  # the worker must outlive any bug
                log.exception("reading failed unexpectedly", extra={
                    "account_id": self.target.account_id, "user_name": item.name})
                if item.kind == "read":
                    # Tried, like any failed read: its last keys stay (marked), and the
                    # pass and readiness do not wait for its retry.
                    self.store.failed(item.name, "InternalError", time.time())
                    self._progress(item.name)
                    self.queue.schedule(item.name, time.time() + RETRY_SECONDS)
                elif item.kind == "list":
                    self.queue.list_at(time.time() + RETRY_SECONDS)
                else:
                    self.queue.retry_event(item, "InternalError")
            finally:
                self.queue.done(item)

    def _handle(self, item: Item) -> None:
        if item.kind == "list":
            self._list()
        elif item.kind == "read":
            self._read(item.name)
        else:
            self._event(item)

    # -- account-wide --------------------------------------------------------------------

    def _account_failed(self, e: BaseException, what: str) -> None:
        code = error_code(e)
        self._failures += 1
        pause = min(PAUSE_MIN * 2 ** (self._failures - 1), self.cfg.interval_seconds)
        self.queue.pause(pause)
        self.success, self.error = False, code
        self._pass_failed = code
        self.errors[code] += 1
        # Last: settled_since (run_once) takes the account as settled on these markers
        # (failed_at, list_tried_at, pass_ended_at), so the outcome is set before them.
        self.failed_at = time.time()
        known = isinstance(e, ClientError | BotoCoreError | CollectionError)
        log.error(f"{what} failed; the last known data is kept", exc_info=None if known else e,
                  extra={"account_id": self.target.account_id,
                         "account_name": self.target.name, "error": code,
                         "detail": str(e)[:300], "retry_in_s": pause})
        self._changed(False)

    def _failures_cleared(self) -> bool:
        """Ends a run of account-wide failures; whether there was one."""
        had, self._failures = self._failures > 0, 0
        return had

    def _list(self) -> None:
        started = time.time()
        interval = self.cfg.interval_seconds
        with self._lock:
            self._read_while_listing = set()
        # A fresh client each interval: botocore's retry quota lives in the client, and
        # one drained by a throttling storm must not outlive it.
        self.target.fresh_iam()
        try:
            self.store.account_id = self.target.resolve_account_id()
            listing = collect.list_account(self.target, self.cfg, self.strategy)
        except Exception as e:
            # The next listing before the markers: a resync (run_once) that sees this
            # failure must find the listing over, or it asks for no new one.
            self.queue.list_at(time.time() + min(RETRY_SECONDS, interval))
            self._account_failed(e, "listing the account's users")
            self.list_tried_at = time.time()
            return
        if self._failures_cleared():
            # Listing works again after an account-wide failure: so do the account's
            # credentials (whether every user fails is told at the pass's end).
            self.success, self.error = True, None
        self.store.strategy = self.strategy
        self._report = listing.report
        listed_at = started  # when IAM showed these users
        if self.strategy == "credential-report" and listing.report is not None:
            at = listed_at = listing.extras.report_generated or started
            for ident in listing.users:
                self.store.observe(ident.name, listing.report.get(ident.name, ()), at,
                                   ident if ident.tags_known else None)
        new, gone = self.store.listed_users(listing.users, listed_at)
        self.store.set_extras(listing.extras)
        if self.strategy == "list":
            for name in new:
                self.queue.schedule(name, 0.0)  # never read: first, in listing order
        for name in gone:
            self.queue.forget(name)
        # Cached last-used dates of deleted keys go (the cache never outgrows the account).
        self.target.last_used_cache.keep_only(self.store.key_ids())
        with self._lock:
            if self._pass_start is None:  # a new pass: every user
                self._pass_start, self._pass_failed = started, None
                # (but those other workers read while the listing ran: not again)
                self._pass_left = ({n.lower() for n, _ in self.store.members()}
                                   - self._read_while_listing
                                   if self.strategy == "list" else set())
            else:  # the last pass goes on (the budget is behind): with the new users
                self._pass_left |= {n.lower() for n in new}
            self._pass_left -= {n.lower() for n in gone}
            self._read_while_listing = set()
        self.queue.list_at(started + interval)
        self._progress(None)
        # After the pass's outcome: settled_since (run_once) reads these markers alone.
        self.list_tried_at = time.time()
        self._changed(False)

    def _progress(self, name: str | None) -> None:
        """A user's read ended: the pass ends when every user it lists was read."""
        with self._lock:
            if name is not None:
                self._pass_left.discard(name.lower())
                self._read_while_listing.add(name.lower())
            if self._pass_start is None or self._pass_left:
                return
            now = time.time()
            self.duration = now - self._pass_start
            self._pass_start = None
            # Every user failing is the account failing (a missing permission), not
            # one odd user.
            failed = self._pass_failed or self.store.all_failed()
            if failed is None:
                self.success, self.error, self.last_success = True, None, now
            else:
                self.success, self.error = False, failed
                if self._pass_failed is None:
                    self.errors[failed] += 1
            self.pass_ended_at = now  # last, as failed_at
        if self._stopped:
            return  # a read that ended after the account stopped being watched
        # One line per account and interval (as the collection cycles logged).
        inv = self.store.inventory()
        totals = inv.key_totals()
        log.info("pass done", extra={
            "account_id": self.target.account_id, "account_name": self.target.name,
            "strategy": inv.strategy, "users": len(inv.users),
            "keys_active": totals.active, "keys_inactive": totals.inactive,
            "multi_active_users": totals.multi_active_users,
            "users_unread": sum(1 for u in inv.users if u.stale) + len(inv.unread),
            "duration_s": round(self.duration, 3),
            **({"error": failed} if failed is not None else {}),
            **({"warnings": "; ".join(map(str, inv.warnings))} if inv.warnings else {})})

    # -- one user ------------------------------------------------------------------------

    def _read(self, name: str) -> None:
        if self.strategy != "list":
            self._progress(name)  # the credential report reads every user at once
            return
        if self._excluded(name):
            # The user filter changed (a reload) since the user was listed: dropped now,
            # as an event re-read drops it. A read would keep it past the next listing,
            # which keeps every user read after it began.
            self.store.observe(name, None, time.time())
            self.queue.forget(name)
            self._progress(name)
            self._changed(False)
            return
        try:
            got = collect.read_keys(self.target, self.cfg, name, self._report)
        except Exception as e:
            if account_level(e):
                self._account_failed(e, "reading a user")
                self.queue.schedule(name, 0.0)
                return
            code = error_code(e)
            self.store.failed(name, code, time.time())
            log.warning("a user's keys could not be read; its last known keys are served",
                        extra={"account_id": self.target.account_id, "user_name": name,
                               "error": code})
            retry = self.cfg.interval_seconds if code in DENIED else RETRY_SECONDS
            self.queue.schedule(name, time.time() + min(retry, self.cfg.interval_seconds))
        else:
            if got.keys is None:  # deleted since it was listed
                self.store.observe(name, None, got.at)
            else:
                self.store.observe(name, got.keys, got.at, dates_complete=got.dates_complete)
                self.queue.schedule(name, got.at + self.cfg.interval_seconds)
            if got.gap is not None:
                self.store.gap(got.gap)
        self._progress(name)
        self._changed(False)

    def _excluded(self, name: str) -> bool:
        filters = self.cfg.collection.users
        ident = self.store.identity(name) if filters.active else None
        return ident is not None and not filters.matches(ident.name, ident.path)

    def _event(self, item: Item) -> None:
        known = self.store.known(item.name)
        at = time.time()
        try:
            with self.target.budget.urgent():
                got, fresh = read_user(self.target.iam(), self.cfg, self.strategy,
                                       item.name, known, item.events)
        except Exception as e:
            code = error_code(e)
            if account_level(e):
                self._account_failed(e, "re-reading a user for an event")
            elif code in DENIED:
                # IAM answered: this user is not to be read (a permission boundary). Its
                # next poll tries again; the message decides about more tries.
                self.store.failed(item.name, code, time.time())
                for t in item.tickets:
                    t.settle(False, code)
                self._changed(True)
                return
            log.warning("could not re-read a user for its events; it stays first in the "
                        "queue", extra={"account_id": self.target.account_id,
                                        "user_name": item.name, "error": code,
                                        "tries": item.tries + 1})
            self.queue.retry_event(item, code)
            return
        if got is None or got == OUTSIDE:
            self.store.observe(known.name if known is not None else item.name, None, at)
            self.queue.forget(item.name)
        else:
            ident = (Identity(got.name, got.path, got.tags, got.exempt)
                     if fresh else None)
            self.store.observe(got.name, got.keys, at, ident)
            self.queue.schedule(got.name, at + self.cfg.interval_seconds)
        self._progress(item.name)
        self._changed(True)
        for t in item.tickets:
            t.settle(True, "outside" if got == OUTSIDE else "")

    # -- what the poller asks ------------------------------------------------------------

    def settled_since(self, since: float) -> bool:
        """Since ``since``: the account failed, or a listing ended and (list strategy)
        each user was tried once."""
        if self.failed_at >= since:
            return True
        if self.list_tried_at < since:
            return False
        # A pass ended too: the last user's read is in the store a moment before the
        # pass knows it ended (and sets success).
        return self.strategy != "list" or (self.store.untried_since(since) == 0
                                           and self.pass_ended_at >= since)

    def needed_rate(self, users: int) -> float:
        """IAM requests per second that reading ``users`` users once per interval takes."""
        pages = users // 1000 + 1
        per_user = 1 if self.strategy == "list" else 0
        return (users * per_user + pages + 1) / self.cfg.interval_seconds
