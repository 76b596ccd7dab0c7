"""The exporter's own health: account failures, AWS calls, placement, build."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import __version__
from exporter.aws.session import ApiCounts
from exporter.inventory import Snapshot


class ExporterCollector:
    """Rendered off the scrape path, every few seconds and at each publish (the web
    store's refresh), so counters move between publishes."""

    def __init__(self, snapshot: Callable[[], Snapshot], api: Callable[[], ApiCounts],
                 interval: Callable[[], float]) -> None:
        self._snapshot, self._api, self._interval = snapshot, api, interval

    def collect(self) -> Iterator[Metric]:
        snap, api = self._snapshot(), self._api()
        errors = CounterMetricFamily(
            "iam_exporter_collection_errors",
            "Account-wide failures (listing, credentials) by account and error class.",
            labels=["account_id", "error"])
        for (acct, code), n in sorted(snap.error_counts.items()):
            errors.add_metric([acct, code], n)
        yield errors
        yield from _api_families(api)
        interval = GaugeMetricFamily(
            "iam_exporter_poll_interval_seconds",
            "interval_seconds: the target age of each user's read (the resync period).")
        interval.add_metric([], self._interval())
        build = GaugeMetricFamily(
            "iam_exporter_build_info", "Build information; always 1.",
            labels=["version", "python_version"])
        build.add_metric([__version__, platform.python_version()], 1)
        index, total = snap.shard
        shard = GaugeMetricFamily(
            "iam_exporter_shard_info", "This replica's shard of the accounts; always 1.",
            labels=["shard_index", "shard_total"])
        shard.add_metric([str(index), str(total)], 1)
        yield from (interval, build, shard)
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


def _api_families(api: ApiCounts) -> Iterator[Metric]:
    labels = ["account_id", "service", "operation"]
    tables: tuple[tuple[str, str, list[str], Mapping[Any, int]], ...] = (
        ("iam_exporter_aws_api_calls", "AWS API calls made (after botocore's retries).",
         labels, api.calls),
        ("iam_exporter_aws_api_errors", "AWS API calls that failed, by error code.",
         [*labels, "code"], api.errors),
        ("iam_exporter_aws_api_retries",
         "Retried AWS API requests (throttling, 5xx, network errors).", labels,
         api.retries),
        ("iam_exporter_iam_requests",
         "HTTP requests sent to IAM, every attempt counted (what the request budget "
         "limits).", ["account_id", "operation"], api.requests),
        ("iam_exporter_iam_throttles",
         "IAM requests answered with a throttling error.", ["account_id", "operation"],
         api.throttles),
    )
    for name, doc, names, data in tables:
        fam = CounterMetricFamily(name, doc, labels=names)
        for key, n in sorted(data.items()):
            fam.add_metric(list(key), n)
        yield fam
    budget = GaugeMetricFamily(
        "iam_exporter_iam_request_budget",
        "IAM requests per second the exporter allows itself in the account now: "
        "aws.max_requests_per_second, lowered while IAM throttles.", labels=["account_id"])
    for acct, rate in sorted(api.budget.items()):
        budget.add_metric([acct], rate)
    yield budget
