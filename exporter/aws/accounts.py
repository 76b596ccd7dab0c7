"""Which accounts are watched: the static list, the exporter's own account, and
the accounts AWS Organizations lists, cut down to this replica's shard.

Targets are kept from one resolve to the next (their sessions and caches with them) and
only rebuilt for accounts that appear, or whose settings change on a config reload.
Accounts are resolved at start and once per interval; Organizations is asked again every
``organizations.refresh_cycles`` intervals, not every one; if it fails, the accounts it
listed last time are kept.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence

import botocore.session
from botocore.exceptions import BotoCoreError

from exporter import sharding
from exporter.aws.errors import error_code
from exporter.aws.organizations import discover
from exporter.aws.session import UNKNOWN_ACCOUNT, ApiStats, Target, client_settings
from exporter.config import AccountConfig, Config
from exporter.inventory import Discovery

log = logging.getLogger("exporter.accounts")


class AccountSet:
    """Resolves the watched targets (at start, then once per interval)."""

    def __init__(self, cfg: Config, stats: ApiStats) -> None:
        self._stats = stats
        self._lock = threading.Lock()
        self._cfg = cfg
        self._pending: Config | None = None
        self._targets: dict[str, Target] = {}
        self._self: Target | None = None
        self._org: list[tuple[str, str]] | None = None  # (account id, name)
        self._org_cycle = -1
        # Rediscover at the next resolve() whatever the count (set by a config reload).
        self._org_stale = False
        self.discovery: Discovery | None = None
        self._dup_self: str | None = None  # own account id also listed, once logged

    def reconfigure(self, cfg: Config) -> None:
        """Takes effect at the next resolve(); rediscovers the Organization then (if that
        fails, the accounts found before are kept, as after any failed discovery)."""
        with self._lock:
            self._pending = cfg

    def _self_target(self, cfg: Config) -> Target:
        old = self._self
        if old is not None and old.settings() == client_settings(cfg, None):
            old.adopt(cfg)
            return old
        # The id known already: the new budget registers under it, not "unknown".
        self._self = Target(cfg, self._stats,
                            account_id=old.account_id if old is not None else UNKNOWN_ACCOUNT)
        return self._self

    @staticmethod
    def _self_id(target: Target) -> str | None:
        try:
            return target.resolve_account_id()
        except Exception as e:
            log.error("cannot read the exporter's own account id", extra={
                "error": error_code(e), "detail": str(e)[:300]})
            return None

    def _discover(self, cfg: Config, cycle: int, own: Target) -> list[tuple[str, str]]:
        org = cfg.organizations
        if (self._org is not None and not self._org_stale
                and cycle - self._org_cycle < org.refresh_cycles):
            return self._org
        self._org_stale = False
        prev = self.discovery
        try:
            client = own.client("organizations")
            found = [(a.account_id, a.name) for a in discover(client, org)]
        except Exception as e:
            code = error_code(e)
            log.error("Organizations discovery failed; keeping the accounts found before",
                      extra={"error": code, "detail": str(e)[:300],
                             "accounts_kept": len(self._org or [])})
            self.discovery = Discovery(False, len(self._org or []),
                                       prev.last_success if prev else None, code)
            self._org_cycle = cycle  # try again after refresh_cycles, not every cycle
            return self._org or []
        self._org, self._org_cycle = found, cycle
        self.discovery = Discovery(True, len(found), time.time())
        log.info("Organizations discovery done", extra={"accounts": len(found)})
        return found

    def resolve(self, cycle: int) -> list[Target]:
        with self._lock:
            if self._pending is not None:
                # Keep the accounts found so far: they are what a failed rediscovery falls
                # back on (dropping them would drop every member account's series).
                self._cfg, self._pending, self._org_stale = self._pending, None, True
            cfg = self._cfg
        if not cfg.organizations.enabled:
            self._org, self.discovery = None, None
        own = self._self_target(cfg)
        want: list[Target] = []
        static_ids = {a.account_id for a in cfg.accounts}
        self_id: str | None = None
        # The own account id is needed to recognise the management account among the
        # discovered ones, to shard the own account, and to tell whether the own account
        # is also listed under accounts; not otherwise (no STS call).
        if cfg.organizations.enabled or (cfg.collect_self and (cfg.sharding.total > 1
                                                               or static_ids)):
            self_id = self._self_id(own)
        if cfg.collect_self:
            if self_id is not None and self_id in static_ids:
                # Listed too: the listed entry wins (its role and name), the own target
                # would only duplicate every series.
                if self._dup_self != self_id:
                    log.warning("the exporter's own account is also listed under accounts; "
                                "collecting it once, as listed", extra={"account_id": self_id})
                    self._dup_self = self_id
            else:
                want.append(own)
        for acct in cfg.accounts:
            want.append(self._keep(cfg, acct))
        if cfg.organizations.enabled:
            org = cfg.organizations
            partition = _partition(cfg.region)
            for account_id, name in self._discover(cfg, cycle, own):
                if account_id in static_ids:
                    continue  # a listed account keeps its own settings
                if account_id == self_id:
                    # The management (or delegated) account itself: read it with the
                    # exporter's own credentials; there is usually no role to assume.
                    if cfg.include_self is False:
                        continue
                    own.name = own.name or name
                    if not cfg.collect_self:
                        want.append(own)
                    continue
                acct = AccountConfig(
                    role_arn=f"arn:{partition}:iam::{account_id}:role/{org.role_name}",
                    external_id=org.external_id, name=name, session_name=org.session_name)
                want.append(self._keep(cfg, acct))
        want = self._shard(cfg, want, self_id)
        with self._lock:
            self._targets = {t.key: t for t in want}
        # API counters of accounts no longer watched go too (Organizations churn would
        # grow them without bound); the own account's stay, discovery is counted there.
        self._stats.forget({t.account_id for t in want} | {own.account_id, UNKNOWN_ACCOUNT})
        return want

    def _keep(self, cfg: Config, account: AccountConfig) -> Target:
        """The existing target for the same account and settings (its sessions are warm)."""
        old = self._targets.get(account.role_arn)
        if old is not None and old.settings() == client_settings(cfg, account):
            old.adopt(cfg, account)  # only the alias or the strategy changed, if anything
            return old
        return Target(cfg, self._stats, account=account)

    @staticmethod
    def _shard(cfg: Config, targets: Sequence[Target], self_id: str | None) -> list[Target]:
        total, index = cfg.sharding.total, cfg.sharding.shard
        if total == 1:
            return list(targets)
        out = []
        for t in targets:
            account_id = t.account_id if t.key != "self" else self_id
            if account_id is None:
                # Unknown until STS answers: shard 0 owns it, so it is not lost.
                if index == 0:
                    out.append(t)
            elif sharding.mine(account_id, total, index):
                out.append(t)
        return out


@functools.lru_cache(maxsize=16)
def _partition(region: str) -> str:
    """The ARN partition of the region (aws, aws-cn, aws-us-gov, ...); aws if unknown."""
    try:
        return str(botocore.session.get_session().get_partition_for_region(region))
    except (BotoCoreError, ValueError):
        return "aws"
