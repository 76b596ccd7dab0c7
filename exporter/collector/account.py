"""One account's inventory as metric families: per user, per key and per account."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.config import MetricsConfig
from exporter.inventory import STATUSES, AccessKey, AccountState


def key_label(key: AccessKey, mode: str, position: int) -> str:
    """The access_key_id label: the key id (full or its last 4 characters), or its
    position (none); the report slot where no id is known (credential-report strategy)."""
    if mode == "none":
        return f"key{position + 1}"
    if not key.key_id:
        return f"slot{key.slot}"
    return key.key_id if mode == "full" else key.key_id[-4:]


def cached_note(interval: float) -> str:
    return (f" Cached: each user is read every {interval:g}s and at once after an event, "
            "not at scrape time.")


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class AccountCollector:
    """The families of one account, always all of them and in the same order (possibly
    without samples), so that accounts rendered one by one can be merged by family."""

    def __init__(self, state: AccountState, options: MetricsConfig, interval: float) -> None:
        self.state = state
        self.opts = options
        self.cached = cached_note(interval)

    def collect(self) -> Iterator[Metric]:
        yield from self._users()
        yield from self._account()

    def _users(self) -> Iterator[Metric]:
        c, opts, st = self.cached, self.opts, self.state
        tag_labels = list(opts.user_tags.values())
        keys = _gauge("iam_user_access_keys",
                      "Access keys of the IAM user with this status (Active or Inactive); both "
                      "statuses are always present, 0 where none; a key in another status "
                      "AWS reports (Expired) is counted under that status." + c,
                      ["account_id", "user_name", "status"])
        info = _gauge("iam_user_info",
                      'IAM user; always 1. exempt is "true" for users with the exemption tag; '
                      "further labels are the configured user tags (empty where the user has "
                      "no such tag)." + c,
                      ["account_id", "user_name", "path", "exempt", *tag_labels])
        key_labels = ["account_id", "user_name", "access_key_id", "status"]
        created = _gauge("iam_access_key_created_timestamp_seconds",
                         "Creation time of the access key (credential-report strategy: last "
                         "rotation; access_key_id is slot1/slot2 there)." + c, key_labels)
        used = _gauge("iam_access_key_last_used_timestamp_seconds",
                      "Last time the access key was used, where known; absent for a key never "
                      "used." + c, key_labels)
        unread = _gauge("iam_user_unread",
                        "1 for a user whose last read failed (reason: the error code, e.g. "
                        "AccessDenied, Throttling): its last known keys are served, or none "
                        "if it was never read; absent for users whose last read succeeded."
                        + c, ["account_id", "user_name", "reason"])
        inv = st.inventory
        if inv is not None and opts.per_user:
            acct, mode = st.account_id, opts.access_key_id
            by_label = [(label, key) for key, label in opts.user_tags.items()]
            for user in inv.users:
                name = user.name
                counts = {s: 0 for s in STATUSES}
                for k in user.keys:
                    counts[k.status] = counts.get(k.status, 0) + 1
                for status, n in counts.items():
                    keys.add_metric([acct, name, status], n)
                have = dict(user.tags)
                info.add_metric([acct, name, user.path, "true" if user.exempt else "false",
                                 *(have.get(key, "") for _, key in by_label)], 1)
                if user.stale:
                    unread.add_metric([acct, name, user.stale], 1)
                if not opts.per_key:
                    continue
                for i, k in enumerate(user.keys):
                    labels = [acct, name, key_label(k, mode, i), k.status]
                    if k.created is not None:
                        created.add_metric(labels, k.created)
                    if k.last_used is not None:
                        used.add_metric(labels, k.last_used)
            for name, _, reason in inv.unread:
                unread.add_metric([acct, name, reason], 1)
        yield from (keys, info, created, used, unread)

    def _account(self) -> Iterator[Metric]:
        c, st = self.cached, self.state
        a = [st.account_id]
        fam = {name: _gauge(name, doc + (c if cached else ""), ["account_id", *extra])
               for name, doc, cached, extra in _ACCOUNT_FAMILIES}
        fam["iam_account_info"].add_metric([*a, st.name], 1)
        fam["iam_exporter_collection_success"].add_metric(a, 1 if st.success else 0)
        fam["iam_exporter_collection_duration_seconds"].add_metric(a, st.duration)
        if st.last_success is not None:
            fam["iam_exporter_last_success_timestamp_seconds"].add_metric(a, st.last_success)
        if st.withdrawn:
            fam["iam_exporter_inventory_withdrawn"].add_metric(a, 1)
        if st.oldest_read is not None:
            fam["iam_exporter_oldest_user_read_timestamp_seconds"].add_metric(a, st.oldest_read)
        fam["iam_exporter_iam_request_rate_needed"].add_metric(a, st.needed_rate)
        inv = st.inventory
        if inv is not None:
            totals = inv.key_totals()
            for status, n in totals.by_status.items():
                fam["iam_account_access_keys"].add_metric([*a, status], n)
            fam["iam_account_users_with_multiple_active_keys"].add_metric(
                a, totals.multi_active_users)
            fam["iam_account_watched_users"].add_metric(a, len(inv.users))
            fam["iam_account_unread_users"].add_metric(
                a, sum(1 for u in inv.users if u.stale) + len(inv.unread))
            fam["iam_account_never_read_users"].add_metric(a, st.never_read)
            if inv.last_used_complete is not None:
                fam["iam_exporter_last_used_complete"].add_metric(
                    a, 1 if inv.last_used_complete else 0)
            for gap in inv.warnings:
                fam["iam_exporter_collection_warnings"].add_metric(
                    [*a, gap.operation, gap.code], 1)
            if inv.summary.users is not None:
                fam["iam_account_users"].add_metric(a, inv.summary.users)
            if inv.summary.root_access_keys_present is not None:
                fam["iam_root_access_keys_present"].add_metric(
                    a, inv.summary.root_access_keys_present)
            if inv.report_generated is not None:
                fam["iam_credential_report_generated_timestamp_seconds"].add_metric(
                    a, inv.report_generated)
        yield from fam.values()


# The per-account families, in exposition order: (name, help, whether the data is cached
# inventory — its help then says so — rather than the exporter's own health, extra labels).
_ACCOUNT_FAMILIES: tuple[tuple[str, str, bool, tuple[str, ...]], ...] = (
    ("iam_account_access_keys", "Access keys of the account's watched users, by status.",
     True, ("status",)),
    ("iam_account_users_with_multiple_active_keys",
     "Watched users (not exempt) holding more than one active access key.", True, ()),
    ("iam_account_watched_users",
     "IAM users collected in the account (after the user filters).", True, ()),
    ("iam_account_unread_users",
     "Watched users whose last read failed (see iam_user_unread).", True, ()),
    ("iam_account_never_read_users",
     "Watched users listed but not read yet (after a start, or new users while the request "
     "budget is behind).", True, ()),
    ("iam_account_users", "IAM users in the account (GetAccountSummary).", True, ()),
    ("iam_root_access_keys_present",
     "1 if the account's root user has an access key (GetAccountSummary).", True, ()),
    ("iam_credential_report_generated_timestamp_seconds",
     "When AWS generated the credential report last used (AWS regenerates it at most every "
     "4 hours).", True, ()),
    ("iam_account_info", "Watched AWS account; always 1. account_name is the configured "
     "alias, empty where none.", True, ("account_name",)),
    ("iam_exporter_collection_success",
     "1 if the account's last listing and every read since went without an account-wide "
     "failure (listing, credentials), else 0 (every user's last good read is still "
     "served).", False, ()),
    ("iam_exporter_last_success_timestamp_seconds",
     "Unix time the account's last successful pass ended.", False, ()),
    ("iam_exporter_collection_duration_seconds",
     "Wall time of the account's last pass: from its listing until each user it listed was "
     "read once.", False, ()),
    ("iam_exporter_oldest_user_read_timestamp_seconds",
     "Unix time of the least recent read among the account's users (its freshness floor; "
     "credential-report strategy: the report's generation time).", False, ()),
    ("iam_exporter_iam_request_rate_needed",
     "IAM requests per second that reading every user of the account once per "
     "interval_seconds takes; compare with iam_exporter_iam_request_budget.", False, ()),
    ("iam_exporter_inventory_withdrawn",
     "1 if the account's per-user series were withdrawn because no pass has succeeded for "
     "longer than collection.max_stale_seconds.", False, ()),
    ("iam_exporter_last_used_complete",
     "1 if the last use (or no use) of every key of the account is known; where 0, a "
     "missing iam_access_key_last_used_timestamp_seconds does not mean never used.", False,
     ()),
    ("iam_exporter_collection_warnings",
     "1 for each part of the account that could not be read since its last listing (the "
     "rest was), by operation and error code.", False, ("operation", "code")),
)
