"""The outcome of the last config reload (SIGHUP)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric


class ReloadState:
    """Like Prometheus' own ``prometheus_config_last_reload_*``: the config loaded at start
    counts as the first successful load."""

    def __init__(self) -> None:
        self.successful = True
        self.success_timestamp = time.time()

    def record(self, ok: bool) -> None:
        self.successful = ok
        if ok:
            self.success_timestamp = time.time()

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily(
            "iam_exporter_config_last_reload_successful",
            "1 if the last config reload (SIGHUP) succeeded, 0 if it was rejected and the "
            "previous config is still in use.")
        ok.add_metric([], 1 if self.successful else 0)
        when = GaugeMetricFamily(
            "iam_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load (start-up or SIGHUP).")
        when.add_metric([], self.success_timestamp)
        yield from (ok, when)
