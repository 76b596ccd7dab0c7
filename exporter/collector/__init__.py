"""Metric collectors, one class per concern; each ``collect()`` yields prometheus_client
metric families.

- ``account.AccountCollector``: one account's inventory (per user, per key, per account).
- ``exporter.ExporterCollector``: the exporter's own health (account failures, AWS calls).
- ``config_reload.ReloadState``: the outcome of the last config reload.
- ``exporter.events.stats.EventStats``: the event path (kept beside the consumer that
  counts into it).

A new metric goes into the collector of its concern; ``exporter.metrics`` renders them.
"""
