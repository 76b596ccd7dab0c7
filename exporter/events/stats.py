"""The event path's own metrics, rendered at every scrape."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

RESULTS = ("applied", "ignored", "invalid", "failed", "handed_over", "delete_failed")


class EventStats:
    """Thread-safe counters and gauges of the consumer (a prometheus_client collector)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._results: Counter[str] = Counter({r: 0 for r in RESULTS})
        self._errors: Counter[str] = Counter()
        self._delete_failures = 0
        # None until known: no sample rather than a made-up value.
        self.queue_up: bool | None = None
        self.last_applied: float | None = None
        self.last_delay: float | None = None
        self.dead_letter: float | None = None

    def received(self, n: int) -> None:
        with self._lock:
            self._received += n

    def results(self, counts: Counter[str]) -> None:
        with self._lock:
            self._results.update(counts)

    def delete_failed(self, n: int) -> None:
        with self._lock:
            self._delete_failures += n

    def receive_error(self, code: str) -> None:
        with self._lock:
            self._errors[code] += 1

    def applied(self, published: float, event_time: float) -> None:
        with self._lock:
            self.last_applied = published
            self.last_delay = max(published - event_time, 0.0)

    def count(self, result: str) -> int:
        with self._lock:
            return self._results[result]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            received, results = self._received, dict(self._results)
            errors = dict(self._errors)
            delete_failures = self._delete_failures
        total = CounterMetricFamily(
            "iam_exporter_events_received", "SQS messages received from the events queue.")
        total.add_metric([], received)
        by_result = CounterMetricFamily(
            "iam_exporter_events",
            "Received messages by result: applied (the user was re-read and published), "
            "ignored (not needed: another event, a failed call, an account not watched), "
            "invalid (unreadable; left for the dead-letter queue), failed (the re-read "
            "failed; the message comes back after a back-off), handed_over (the re-read "
            "failed on the last try: deleted, the user stays first in its account's queue "
            "until IAM answers), delete_failed (handled, but SQS did not delete it: it "
            "comes back).", labels=["result"])
        for result in RESULTS:
            by_result.add_metric([result], results[result])
        errs = CounterMetricFamily(
            "iam_exporter_events_receive_errors",
            "Failed SQS ReceiveMessage calls by error code.", labels=["code"])
        for code, n in sorted(errors.items()):
            errs.add_metric([code], n)
        deletes = CounterMetricFamily(
            "iam_exporter_events_delete_failures",
            "Handled messages SQS failed to delete (they come back and are handled again).")
        deletes.add_metric([], delete_failures)
        yield from (total, by_result, errs, deletes)
        gauges = (
            ("iam_exporter_events_queue_up",
             "1 if the last SQS ReceiveMessage succeeded, else 0.",
             None if self.queue_up is None else float(self.queue_up)),
            ("iam_exporter_events_last_applied_timestamp_seconds",
             "Unix time the newest applied event's change was published.",
             self.last_applied),
            ("iam_exporter_events_last_applied_delay_seconds",
             "Seconds from the newest applied event (CloudTrail eventTime, else the SQS "
             "sent time) to its publication.", self.last_delay),
            ("iam_exporter_events_dead_letter_messages",
             "Messages in the events queue's dead-letter queue (approximate); no sample "
             "when it cannot be read.", self.dead_letter),
        )
        for name, doc, value in gauges:
            fam = GaugeMetricFamily(name, doc)
            if value is not None:
                fam.add_metric([], value)
            yield fam
