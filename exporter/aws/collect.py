"""One account, one cycle: run the account's strategy, last-used dates, tags and the
account summary, and apply the user filters."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from exporter.aws import credential_report, last_used, list_strategy
from exporter.aws.errors import Deadline, DeadlineExceeded, error_code
from exporter.aws.list_strategy import IamLists, KeysResult, Owner, UserRef
from exporter.aws.session import Target
from exporter.aws.summary import account_summary
from exporter.config import Config
from exporter.inventory import AccountInventory, AccountSummary, Gap, User

T = TypeVar("T")


def _owner_of(cfg: Config) -> Callable[[UserRef], Owner]:
    """UserRef → its configured tags and whether the exemption tag is on it."""
    wanted = cfg.metrics.user_tags
    exempt_key, exempt_value = cfg.metrics.exempt_tag.key, cfg.metrics.exempt_tag.value

    def owner(ref: UserRef) -> Owner:
        tags: Mapping[str, str] = ref.tags or {}
        return (tuple((k, tags[k]) for k in wanted if k in tags),
                tags.get(exempt_key) == exempt_value)

    return owner


def _raise_if_credentials(e: Exception) -> None:
    """A failed credential refresh (AssumeRole) fails the account, it is not a gap."""
    if getattr(e, "operation_name", None) == "AssumeRole":
        raise e


def _list_refs(iam: IamLists, cfg: Config, deadline: Deadline,
               gaps: list[Gap]) -> list[UserRef]:
    """Users with the tags that matter in bulk; without the permission, users without
    tags (a gap)."""
    tag_keys = {*cfg.metrics.user_tags, cfg.metrics.exempt_tag.key}
    try:
        return list_strategy.list_users_with_tags(iam, deadline, tag_keys)
    except DeadlineExceeded:
        raise
    except Exception as e:
        code = error_code(e)
        # Only this operation being denied is a gap; a denied AssumeRole (the credentials
        # refresh inside the first call) fails the account.
        if (code not in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")
                or getattr(e, "operation_name", None) != "GetAccountAuthorizationDetails"):
            raise
        gaps.append(Gap("GetAccountAuthorizationDetails", code))
        return list_strategy.list_users(iam, deadline)


def _or_gap(operation: str, gaps: list[Gap], fallback: T, call: Callable[[], T]) -> T:
    """call()'s result; when it fails, a gap (not a failure) and the fallback. The
    deadline and a failed credential refresh (AssumeRole) still fail the account."""
    try:
        return call()
    except DeadlineExceeded:
        raise
    except Exception as e:
        _raise_if_credentials(e)
        gaps.append(Gap(operation, error_code(e)))
        return fallback


@dataclass
class _Listed:
    users: tuple[User, ...]
    unread: tuple[tuple[str, str, str], ...] = ()
    generated: float | None = None  # credential report time, when one was read
    root: int | None = None  # root keys from the report
    complete: bool | None = None  # every key's last use known


def _list_strategy(target: Target, cfg: Config, deadline: Deadline,
                   gaps: list[Gap]) -> _Listed:
    """Users and keys, with last-used dates matched from the credential report as the
    keys come in; counts first, then dates as far as the deadline allows."""
    mode = cfg.collection.last_used
    matcher: last_used.ReportMatcher | None = None
    out = _Listed(users=())
    iam = target.iam()
    if mode == "credential-report":
        # Before the users are listed, not beside them: the two at once raise the
        # cycle's memory peak by more than they save in time.
        # Dates are optional, counts are not: the report may take half of what is left.
        wait = cfg.collection.credential_report.wait_seconds
        report_deadline = Deadline(max(deadline.remaining() / 2, 0.0))
        try:
            report = credential_report.fetch(iam, wait, report_deadline)
        except Exception as e:
            _raise_if_credentials(e)
            gaps.append(Gap("GetCredentialReport", error_code(e)))
            report = None
        if report is not None:
            matcher = last_used.ReportMatcher(report.users)
            out.generated, out.root = report.generated, report.root_keys
            del report  # the matcher lets go of each row as it is used
    refs = _list_refs(iam, cfg, deadline, gaps)
    filters = cfg.collection.users
    if filters.active:
        refs = [r for r in refs if filters.matches(r.name, r.path)]
    keys: KeysResult = list_strategy.collect_keys(iam, refs, cfg.collection.concurrency,
                                                  deadline, _owner_of(cfg), finish=matcher)
    del refs
    out.users, out.unread = keys.users, keys.unread
    if mode == "off":
        return out
    missing = matcher.unmatched if matcher is not None else None
    wanted = [(ui, ki) for ui, u in enumerate(out.users) for ki, k in enumerate(u.keys)
              if missing is None or k.key_id in missing]
    out.users, failed = last_used.fill_from_api(
        iam, out.users, wanted, cfg.collection.concurrency, deadline,
        target.last_used_cache)
    out.complete = failed is None
    if failed is not None:
        gaps.append(Gap("GetAccessKeyLastUsed", failed))
    return out


def collect_account(target: Target, cfg: Config, deadline: Deadline) -> AccountInventory:
    """Collects one account; raises on failure (the poller keeps the last good data)."""
    started = time.time()
    account_id = target.resolve_account_id()
    iam = target.iam()
    strategy = target.strategy or cfg.collection.strategy
    filters = cfg.collection.users
    gaps: list[Gap] = []
    if strategy == "list":
        listed = _list_strategy(target, cfg, deadline, gaps)
        data_time = started
    else:
        report = credential_report.fetch(iam, cfg.collection.credential_report.wait_seconds,
                                         deadline)
        users = report.users
        if filters.active:
            users = tuple(u for u in users if filters.matches(u.name, u.path))
        if cfg.metrics.user_tags:
            # The report has no tags: read them in bulk only when labels are asked for.
            owner = _owner_of(cfg)
            owners = {r.name: owner(r) for r in _list_refs(iam, cfg, deadline, gaps)}
            users = tuple(_with_owner(u, owners.get(u.name)) for u in users)
        listed = _Listed(users, generated=report.generated, root=report.root_keys,
                         complete=True)
        data_time = report.generated or started
    # A gap, not a failure: the keys are what matters; nor past the deadline.
    summary = AccountSummary()
    if deadline.remaining() > 0:
        summary = _or_gap("GetAccountSummary", gaps, AccountSummary(),
                          lambda: account_summary(iam))
    if summary.root_access_keys_present is None and listed.root is not None:
        summary = AccountSummary(int(listed.root > 0), summary.users)
    return AccountInventory(
        account_id=account_id,
        strategy=strategy,
        users=listed.users,
        summary=summary,
        report_generated=listed.generated,
        warnings=tuple(gaps),
        last_used_complete=listed.complete,
        unread=listed.unread,
        data_time=data_time,
    )


def _with_owner(user: User, owner: Owner | None) -> User:
    return user if owner is None else replace(user, tags=owner[0], exempt=owner[1])
