"""Snapshot → Prometheus text exposition, rendered once per cycle.

A scrape never calls AWS and never re-renders the inventory: the poller renders the
snapshot here when a cycle ends, and the web app serves those bytes (and their gzip).
Only a few process self-metrics are rendered per scrape.
"""

from __future__ import annotations

import gzip
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.aws.session import ApiCounts
from exporter.config import MetricsConfig
from exporter.inventory import STATUSES, AccessKey, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _cached(interval: float) -> str:
    return (f" Cached: collected by the exporter every {interval:g}s (plus jitter), "
            "not at scrape time.")


def key_label(key: AccessKey, mode: str = "full", position: int = 0) -> str:
    """The access_key_id label: the key id (full or its last 4 characters), or its
    position (none); the report slot where no id is known (credential-report strategy)."""
    if mode == "none":
        return f"key{position + 1}"
    if not key.key_id:
        return f"slot{key.slot}"
    return key.key_id if mode == "full" else key.key_id[-4:]


@dataclass(frozen=True)
class RenderInput:
    snapshot: Snapshot
    api: ApiCounts
    interval: float
    options: MetricsConfig = field(default_factory=MetricsConfig)


class _InventoryCollector(Collector):
    def __init__(self, data: RenderInput) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
        snap, cached = self.data.snapshot, _cached(self.data.interval)
        keys = GaugeMetricFamily(
            "iam_user_access_keys",
            "Access keys of the IAM user with this status (Active or Inactive); both statuses "
            "are always present, 0 where none." + cached,
            labels=["account_id", "user_name", "status"])
        created = GaugeMetricFamily(
            "iam_access_key_created_timestamp_seconds",
            "Creation time of the access key (credential-report strategy: last rotation; "
            "access_key_id is slot1/slot2 there)." + cached,
            labels=["account_id", "user_name", "access_key_id", "status"])
        last_used = GaugeMetricFamily(
            "iam_access_key_last_used_timestamp_seconds",
            "Last time the access key was used, where known; absent for a key never used."
            + cached,
            labels=["account_id", "user_name", "access_key_id", "status"])
        users = GaugeMetricFamily(
            "iam_account_users", "IAM users in the account (GetAccountSummary)." + cached,
            labels=["account_id"])
        root = GaugeMetricFamily(
            "iam_root_access_keys_present",
            "1 if the account's root user has an access key (GetAccountSummary)." + cached,
            labels=["account_id"])
        report = GaugeMetricFamily(
            "iam_credential_report_generated_timestamp_seconds",
            "When AWS generated the credential report last used (AWS regenerates it at most "
            "every 4 hours)." + cached, labels=["account_id"])
        info = GaugeMetricFamily(
            "iam_account_info", "Watched AWS account; always 1. account_name is the "
            "configured alias, empty where none." + cached,
            labels=["account_id", "account_name"])
        success = GaugeMetricFamily(
            "iam_exporter_collection_success",
            "1 if the last collection cycle for the account succeeded, else 0 (the last good "
            "data is still served).", labels=["account_id"])
        last_ok = GaugeMetricFamily(
            "iam_exporter_last_success_timestamp_seconds",
            "Unix time of the last successful collection for the account.",
            labels=["account_id"])
        duration = GaugeMetricFamily(
            "iam_exporter_collection_duration_seconds",
            "Wall time of the last collection cycle for the account.", labels=["account_id"])

        opts = self.data.options
        tag_labels = list(opts.user_tags.values())
        tag_keys = list(opts.user_tags)
        user_info = GaugeMetricFamily(
            "iam_user_info", "IAM user; always 1. exempt is \"true\" for users with the "
            "exemption tag; further labels are the configured user tags (empty where the "
            "user has no such tag)." + cached,
            labels=["account_id", "user_name", "path", "exempt", *tag_labels])
        acct_keys = GaugeMetricFamily(
            "iam_account_access_keys", "Access keys of the account's watched users, by "
            "status." + cached, labels=["account_id", "status"])
        multi = GaugeMetricFamily(
            "iam_account_users_with_multiple_active_keys",
            "Watched users (not exempt) holding more than one active access key." + cached,
            labels=["account_id"])
        watched = GaugeMetricFamily(
            "iam_account_watched_users",
            "IAM users collected in the account (after the user filters)." + cached,
            labels=["account_id"])
        complete = GaugeMetricFamily(
            "iam_exporter_last_used_complete",
            "1 if the last use (or no use) of every key of the account is known; where 0, "
            "a missing iam_access_key_last_used_timestamp_seconds does not mean never "
            "used.", labels=["account_id"])
        gaps = GaugeMetricFamily(
            "iam_exporter_collection_warnings",
            "1 for each part the last successful cycle could not read (the rest was "
            "collected), by operation and error code.",
            labels=["account_id", "operation", "code"])
        mode = opts.access_key_id

        for st in snap.accounts:
            acct = st.account_id
            info.add_metric([acct, st.name], 1)
            success.add_metric([acct], 1 if st.success else 0)
            duration.add_metric([acct], st.duration)
            if st.last_success is not None:
                last_ok.add_metric([acct], st.last_success)
            inv = st.inventory
            if inv is None:
                continue
            totals = dict.fromkeys(STATUSES, 0)
            n_multi = 0
            for user in inv.users:
                active, inactive = user.count("Active"), user.count("Inactive")
                totals["Active"] += active
                totals["Inactive"] += inactive
                if active > 1 and not user.exempt:
                    n_multi += 1
                if not opts.per_user:
                    continue
                keys.add_metric([acct, user.name, "Active"], active)
                keys.add_metric([acct, user.name, "Inactive"], inactive)
                tags = dict(user.tags)
                user_info.add_metric(
                    [acct, user.name, user.path, "true" if user.exempt else "false",
                     *(tags.get(k, "") for k in tag_keys)], 1)
                if not opts.per_key:
                    continue
                for i, key in enumerate(user.keys):
                    labels = [acct, user.name, key_label(key, mode, i), key.status]
                    if key.created is not None:
                        created.add_metric(labels, key.created)
                    if key.last_used is not None:
                        last_used.add_metric(labels, key.last_used)
            for status in STATUSES:
                acct_keys.add_metric([acct, status], totals[status])
            multi.add_metric([acct], n_multi)
            watched.add_metric([acct], len(inv.users))
            if inv.last_used_complete is not None:
                complete.add_metric([acct], 1 if inv.last_used_complete else 0)
            for gap in inv.warnings:
                gaps.add_metric([acct, gap.operation, gap.code], 1)
            if inv.summary.users is not None:
                users.add_metric([acct], inv.summary.users)
            if inv.summary.root_access_keys_present is not None:
                root.add_metric([acct], inv.summary.root_access_keys_present)
            if inv.report_generated is not None:
                report.add_metric([acct], inv.report_generated)

        yield from (keys, user_info, created, last_used, acct_keys, multi, watched, users,
                    root, report, info, success, last_ok, duration, complete, gaps)
        yield from self._self_metrics()

    def _self_metrics(self) -> Iterator[Metric]:
        snap, api = self.data.snapshot, self.data.api
        errors = CounterMetricFamily(
            "iam_exporter_collection_errors",
            "Failed collection cycles by account and error class.",
            labels=["account_id", "error"])
        for (acct, code), n in sorted(snap.error_counts.items()):
            errors.add_metric([acct, code], n)
        calls = CounterMetricFamily(
            "iam_exporter_aws_api_calls", "AWS API calls made (after botocore's retries).",
            labels=["account_id", "service", "operation"])
        for k, n in sorted(api.calls.items()):
            calls.add_metric(list(k), n)
        errs = CounterMetricFamily(
            "iam_exporter_aws_api_errors", "AWS API calls that failed, by error code.",
            labels=["account_id", "service", "operation", "code"])
        for ke, n in sorted(api.errors.items()):
            errs.add_metric(list(ke), n)
        retries = CounterMetricFamily(
            "iam_exporter_aws_api_retries", "Retried AWS API requests (throttling, 5xx, "
            "network errors).", labels=["account_id", "service", "operation"])
        for k, n in sorted(api.retries.items()):
            retries.add_metric(list(k), n)
        cycles = CounterMetricFamily("iam_exporter_cycles", "Completed collection cycles.")
        cycles.add_metric([], snap.cycles)
        interval = GaugeMetricFamily(
            "iam_exporter_poll_interval_seconds",
            "Configured time between collection cycles (before jitter).")
        interval.add_metric([], self.data.interval)
        build = GaugeMetricFamily(
            "iam_exporter_build_info", "Build information; always 1.",
            labels=["version", "python_version"])
        build.add_metric([__version__, platform.python_version()], 1)
        index, total = snap.shard
        shard = GaugeMetricFamily(
            "iam_exporter_shard_info", "This replica's shard of the accounts; always 1.",
            labels=["shard_index", "shard_total"])
        shard.add_metric([str(index), str(total)], 1)
        yield from (errors, calls, errs, retries, cycles, interval, build, shard)
        disc = snap.discovery
        if disc is not None:
            found = GaugeMetricFamily(
                "iam_exporter_discovered_accounts",
                "Accounts AWS Organizations listed at the last discovery (after the "
                "include/exclude filters, before sharding).")
            found.add_metric([], disc.accounts)
            ok = GaugeMetricFamily(
                "iam_exporter_discovery_success",
                "1 if the last AWS Organizations discovery succeeded, else 0 (the accounts "
                "found before are kept).")
            ok.add_metric([], 1 if disc.success else 0)
            yield from (found, ok)


def render(data: RenderInput) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_InventoryCollector(data))
    return generate_latest(registry)


@dataclass(frozen=True)
class Exposition:
    """Rendered bytes of one snapshot and their gzip, swapped in as one reference."""

    body: bytes
    gzipped: bytes
    snapshot: Snapshot

    @classmethod
    def of(cls, data: RenderInput) -> Exposition:
        body = render(data)
        return cls(body=body, gzipped=gzip.compress(body, compresslevel=6, mtime=0),
                   snapshot=data.snapshot)


_process_registry = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_process_registry)


def process_metrics() -> bytes:
    """Per-scrape process metrics (memory, CPU, file descriptors) of this process."""
    return generate_latest(_process_registry)
