"""The reads of one account: its listing (who its users are, their tags, the account
summary, the credential report) and one user's keys with their last-used dates.

Each read says what IAM showed; the store keeps it by read time. Optional parts (tags,
the summary, last-used dates) that fail become gaps, reported as such: they never fail
the account, and never replace what was read before with nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from exporter.aws import credential_report, last_used, list_strategy
from exporter.aws.errors import error_code
from exporter.aws.list_strategy import IamLists, Owner, UserRef
from exporter.aws.session import Target
from exporter.aws.summary import account_summary
from exporter.config import Config
from exporter.inventory import AccessKey, AccountSummary, Gap
from exporter.store import AccountExtras, Identity

DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})


def owner_of(cfg: Config) -> Callable[[UserRef], Owner]:
    """UserRef → its configured tags and whether the exemption tag is on it."""
    wanted = cfg.metrics.user_tags
    exempt_key, exempt_value = cfg.metrics.exempt_tag.key, cfg.metrics.exempt_tag.value

    def owner(ref: UserRef) -> Owner:
        tags: Mapping[str, str] = ref.tags or {}
        return (tuple((k, tags[k]) for k in wanted if k in tags),
                tags.get(exempt_key) == exempt_value)

    return owner


def raise_if_credentials(e: BaseException) -> None:
    """A failed credential refresh (AssumeRole) fails the account, it is not a gap."""
    if getattr(e, "operation_name", None) == "AssumeRole":
        raise e


@dataclass
class Listing:
    """What one listing of the account found."""

    users: list[Identity]
    extras: AccountExtras
    # The credential report's keys by user name: with the credential-report strategy the
    # users' keys themselves, with the list strategy the source of last-used dates.
    report: dict[str, tuple[AccessKey, ...]] | None = None
    gaps: list[Gap] = field(default_factory=list)


def _identities(iam: IamLists, cfg: Config, gaps: list[Gap]) -> list[Identity]:
    """Users with the tags that matter, in bulk; where that is denied, users with their
    tags unknown (the store keeps the last known ones) and a gap."""
    tag_keys = {*cfg.metrics.user_tags, cfg.metrics.exempt_tag.key}
    owner = owner_of(cfg)
    try:
        refs = list_strategy.list_users_with_tags(iam, tag_keys)
        known = True
    except Exception as e:
        code = error_code(e)
        # Only this operation being denied is a gap; a denied AssumeRole (the credentials
        # refresh inside the first call) fails the account.
        if (code not in DENIED
                or getattr(e, "operation_name", None) != "GetAccountAuthorizationDetails"):
            raise
        gaps.append(Gap("GetAccountAuthorizationDetails", code))
        refs = list_strategy.list_users(iam)
        known = False
    filters = cfg.collection.users
    out = []
    for ref in refs:
        if filters.active and not filters.matches(ref.name, ref.path):
            continue
        tags, exempt = owner(ref) if known else ((), False)
        out.append(Identity(ref.name, ref.path, tags, exempt, tags_known=known))
    return out


def list_account(target: Target, cfg: Config, strategy: str) -> Listing:
    """The account's users, the summary and (where wanted) the credential report.
    Raises when the users cannot be listed (the account fails, its data is kept)."""
    iam = target.iam()
    gaps: list[Gap] = []
    extras = AccountExtras()
    report = None
    wait = cfg.collection.credential_report.wait_seconds
    if strategy == "credential-report":
        got = credential_report.fetch(iam, wait)
        filters = cfg.collection.users
        kept = [u for u in got.users if not filters.active or filters.matches(u.name, u.path)]
        report = {u.name: u.keys for u in kept}
        if cfg.metrics.user_tags:
            # The report has no tags: read them in bulk only when labels are asked for.
            tagged = {i.name: i for i in _identities(iam, cfg, gaps)}
            users = [tagged.get(u.name) or Identity(u.name, u.path, tags_known=False)
                     for u in kept]
        else:
            users = [Identity(u.name, u.path) for u in kept]
        extras.report_generated, extras.root_keys = got.generated, got.root_keys
    else:
        if cfg.collection.last_used == "credential-report":
            # Dates are optional, counts are not: a report that fails is a gap.
            try:
                got = credential_report.fetch(iam, wait)
                report = {u.name: u.keys for u in got.users}
                extras.report_generated, extras.root_keys = got.generated, got.root_keys
            except Exception as e:
                raise_if_credentials(e)
                gaps.append(Gap("GetCredentialReport", error_code(e)))
        users = _identities(iam, cfg, gaps)
    try:
        extras.summary = account_summary(iam)
    except Exception as e:
        raise_if_credentials(e)
        gaps.append(Gap("GetAccountSummary", error_code(e)))
        extras.summary = AccountSummary()
    extras.gaps = {g.operation: g for g in gaps}
    return Listing(users, extras, report, gaps)


@dataclass(frozen=True, slots=True)
class Keys:
    """One user's keys as read, or None when the user no longer exists."""

    keys: tuple[AccessKey, ...] | None
    at: float
    dates_complete: bool = True
    gap: Gap | None = None  # a last-used date that could not be read


def read_keys(target: Target, cfg: Config, name: str,
              report: Mapping[str, tuple[AccessKey, ...]] | None) -> Keys:
    """ListAccessKeys, then last-used dates: from the credential report where it has the
    key (matched by creation time), else GetAccessKeyLastUsed (cached for hours)."""
    iam = target.iam()
    at = time.time()
    keys = list_strategy.list_keys(iam, name)
    if keys is None or cfg.collection.last_used == "off":
        return Keys(keys, at)
    slots = list(report.get(name, ())) if report is not None else []
    out: list[AccessKey] = []
    gap: Gap | None = None
    for key in keys:
        slot = (last_used.take_slot(slots, key.created)
                if cfg.collection.last_used == "credential-report" else None)
        if slot is not None:
            out.append(AccessKey(key.key_id, key.status, key.created, key.slot,
                                 slot.last_used))
            continue
        try:
            out.append(AccessKey(key.key_id, key.status, key.created, key.slot,
                                 last_used.cached_last_used(iam, key, target.last_used_cache)))
        except Exception as e:
            raise_if_credentials(e)
            gap = gap or Gap("GetAccessKeyLastUsed", error_code(e))
            out.append(key)
    return Keys(tuple(out), at, gap is None, gap)

