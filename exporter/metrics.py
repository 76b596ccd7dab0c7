"""Snapshot → Prometheus text exposition, rendered once per cycle.

A scrape never calls AWS and never re-renders the inventory: the poller renders the
snapshot here when a cycle ends, and the web app serves those bytes (and their gzip).
Only a few process self-metrics are rendered per scrape.
"""

from __future__ import annotations

import gzip
import io
import platform
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _go_float

from exporter import __version__
from exporter.aws.session import ApiCounts
from exporter.config import MetricsConfig
from exporter.inventory import AccessKey, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _cached(interval: float) -> str:
    return (f" Cached: collected by the exporter every {interval:g}s (plus jitter), "
            "not at scrape time.")


def key_label(key: AccessKey, mode: str, position: int) -> str:
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


# prometheus_client's own float formatting (so the output is byte for byte what it writes).
_fmt = cast(Callable[[float], str], _go_float)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_SMALL = {i: _fmt(i) for i in range(16)}


def _num(value: float) -> str:
    if type(value) is int and 0 <= value < 16:
        return _SMALL[value]
    return _fmt(value)


BATCH = 4096  # lines encoded at a time: bounds the temporary strings


def _family(out: Any, name: str, doc: str, lines: Iterable[str],
            kind: str = "gauge") -> None:
    """One metric family in the text format, as prometheus_client writes it (same help
    escaping, labels sorted by name, Go float formatting)."""
    doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode())
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == BATCH:
            out.append("".join(batch).encode())
            batch.clear()
    if batch:
        out.append("".join(batch).encode())


def gauge(name: str, doc: str, value: float) -> bytes:
    """One label-less gauge in the text format (for what is rendered per scrape)."""
    out: list[bytes] = []
    _family(out, name, doc, [f"{name} {_num(value)}\n"])
    return b"".join(out)


class _Inventory:
    """The per-account, per-user and per-key families, written directly.

    At 50,000 users these are hundreds of thousands of samples: building
    prometheus_client's Sample objects for them would cost far more time and memory
    than the text itself, so they are formatted here, one family at a time.
    """

    def __init__(self, data: RenderInput) -> None:
        self.data = data
        self.opts = data.options
        self.cached = _cached(data.interval)
        # (escaped account id, escaped user name, user) for every exported user.
        self.users = [
            (_esc(st.account_id), _esc(u.name), u)
            for st in data.snapshot.accounts if st.inventory is not None
            for u in st.inventory.users
        ] if self.opts.per_user else []

    def user_keys(self) -> Iterator[str]:
        for acct, name, user in self.users:
            active, inactive = user.count("Active"), user.count("Inactive")
            yield (f'iam_user_access_keys{{account_id="{acct}",status="Active",'
                   f'user_name="{name}"}} {_num(active)}\n'
                   f'iam_user_access_keys{{account_id="{acct}",status="Inactive",'
                   f'user_name="{name}"}} {_num(inactive)}\n')

    def user_info(self) -> Iterator[str]:
        tags = self.opts.user_tags
        names = sorted(["account_id", "exempt", "path", "user_name", *tags.values()])
        by_label = {label: key for key, label in tags.items()}
        for acct, name, user in self.users:
            values = {"account_id": acct, "user_name": name, "path": _esc(user.path),
                      "exempt": "true" if user.exempt else "false"}
            have = dict(user.tags)
            for label, key in by_label.items():
                values[label] = _esc(have.get(key, ""))
            labels = ",".join(f'{n}="{values[n]}"' for n in names)
            yield f"iam_user_info{{{labels}}} 1.0\n"

    def key_times(self, name: str, last_used: bool) -> Iterator[str]:
        mode = self.opts.access_key_id
        for acct, user_name, user in self.users:
            for i, key in enumerate(user.keys):
                value = key.last_used if last_used else key.created
                if value is None:
                    continue
                kid = _esc(key_label(key, mode, i))
                yield (f'{name}{{access_key_id="{kid}",account_id="{acct}",'
                       f'status="{key.status}",user_name="{user_name}"}} '
                       f"{_fmt(value)}\n")

    def write(self, out: Any) -> None:
        cached, per_key = self.cached, self.opts.per_user and self.opts.per_key
        _family(out, "iam_user_access_keys",
                "Access keys of the IAM user with this status (Active or Inactive); both "
                "statuses are always present, 0 where none." + cached, self.user_keys())
        _family(out, "iam_user_info",
                'IAM user; always 1. exempt is "true" for users with the exemption tag; '
                "further labels are the configured user tags (empty where the user has no "
                "such tag)." + cached, self.user_info())
        _family(out, "iam_access_key_created_timestamp_seconds",
                "Creation time of the access key (credential-report strategy: last "
                "rotation; access_key_id is slot1/slot2 there)." + cached,
                self.key_times("iam_access_key_created_timestamp_seconds", False)
                if per_key else ())
        _family(out, "iam_access_key_last_used_timestamp_seconds",
                "Last time the access key was used, where known; absent for a key never "
                "used." + cached,
                self.key_times("iam_access_key_last_used_timestamp_seconds", True)
                if per_key else ())
        self._accounts(out)

    def _accounts(self, out: Any) -> None:
        rows: dict[str, list[str]] = {name: [] for name, _, _ in _ACCOUNT_FAMILIES}

        def row(name: str, value: float, extra: str = "") -> None:
            # Further labels sort after account_id, as prometheus_client sorts them.
            rows[name].append(f'{name}{{account_id="{a}"{extra}}} {_num(value)}\n')

        for st in self.data.snapshot.accounts:
            a = _esc(st.account_id)
            row("iam_account_info", 1, f',account_name="{_esc(st.name)}"')
            row("iam_exporter_collection_success", 1 if st.success else 0)
            row("iam_exporter_collection_duration_seconds", st.duration)
            if st.last_success is not None:
                row("iam_exporter_last_success_timestamp_seconds", st.last_success)
            inv = st.inventory
            if inv is None:
                continue
            totals = inv.key_totals()
            row("iam_account_access_keys", totals.active, ',status="Active"')
            row("iam_account_access_keys", totals.inactive, ',status="Inactive"')
            row("iam_account_users_with_multiple_active_keys", totals.multi_active_users)
            row("iam_account_watched_users", len(inv.users))
            if inv.last_used_complete is not None:
                row("iam_exporter_last_used_complete", 1 if inv.last_used_complete else 0)
            for gap in inv.warnings:
                row("iam_exporter_collection_warnings", 1,
                    f',code="{_esc(gap.code)}",operation="{_esc(gap.operation)}"')
            if inv.summary.users is not None:
                row("iam_account_users", inv.summary.users)
            if inv.summary.root_access_keys_present is not None:
                row("iam_root_access_keys_present", inv.summary.root_access_keys_present)
            if inv.report_generated is not None:
                row("iam_credential_report_generated_timestamp_seconds", inv.report_generated)
        for name, doc, cached in _ACCOUNT_FAMILIES:
            _family(out, name, doc + (self.cached if cached else ""), rows[name])


# The per-account families, in exposition order: (name, help, whether the data is cached
# inventory — its help then says so — rather than the exporter's own health).
_ACCOUNT_FAMILIES: tuple[tuple[str, str, bool], ...] = (
    ("iam_account_access_keys", "Access keys of the account's watched users, by status.",
     True),
    ("iam_account_users_with_multiple_active_keys",
     "Watched users (not exempt) holding more than one active access key.", True),
    ("iam_account_watched_users",
     "IAM users collected in the account (after the user filters).", True),
    ("iam_account_users", "IAM users in the account (GetAccountSummary).", True),
    ("iam_root_access_keys_present",
     "1 if the account's root user has an access key (GetAccountSummary).", True),
    ("iam_credential_report_generated_timestamp_seconds",
     "When AWS generated the credential report last used (AWS regenerates it at most every "
     "4 hours).", True),
    ("iam_account_info", "Watched AWS account; always 1. account_name is the configured "
     "alias, empty where none.", True),
    ("iam_exporter_collection_success",
     "1 if the last collection cycle for the account succeeded, else 0 (the last good data "
     "is still served).", False),
    ("iam_exporter_last_success_timestamp_seconds",
     "Unix time of the last successful collection for the account.", False),
    ("iam_exporter_collection_duration_seconds",
     "Wall time of the last collection cycle for the account.", False),
    ("iam_exporter_last_used_complete",
     "1 if the last use (or no use) of every key of the account is known; where 0, a "
     "missing iam_access_key_last_used_timestamp_seconds does not mean never used.", False),
    ("iam_exporter_collection_warnings",
     "1 for each part the last successful cycle could not read (the rest was collected), "
     "by operation and error code.", False),
)


class _SelfCollector(Collector):
    def __init__(self, data: RenderInput) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
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


# Above this size only the gzip of the exposition is kept (Prometheus always asks for
# gzip); the rare plain scrape is decompressed on the fly (~70 ms at 30 MB). 50,000
# users give ~30 MB of plain text.
PLAIN_LIMIT = 64 << 20
# Pieces a plain scrape of a gzip-only exposition is decompressed into.
PLAIN_PIECE = 256 << 10


class _Sink:
    """Takes the rendered chunks: gzips them as they come, keeps them up to a limit."""

    def __init__(self, keep_up_to: int) -> None:
        self._buf = io.BytesIO()
        self._gz = gzip.GzipFile(fileobj=self._buf, mode="wb", compresslevel=6, mtime=0)
        self.kept: list[bytes] | None = []
        self.size = 0
        self._limit = keep_up_to

    def append(self, chunk: bytes) -> None:
        self._gz.write(chunk)
        self.size += len(chunk)
        if self.kept is not None:
            if self.size <= self._limit:
                self.kept.append(chunk)
            else:
                self.kept = None

    def gzipped(self) -> bytes:
        self._gz.close()
        return self._buf.getvalue()


def _render_into(data: RenderInput, out: Any) -> None:
    _Inventory(data).write(out)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SelfCollector(data))
    out.append(generate_latest(registry))


def render(data: RenderInput) -> bytes:
    out: list[bytes] = []
    _render_into(data, out)
    return b"".join(out)


@dataclass(frozen=True)
class Exposition:
    """Rendered bytes of one snapshot and their gzip, swapped in as one reference.

    ``chunks`` is the plain text in pieces (never joined: a joined copy would double the
    memory of a render), or None when it was larger than PLAIN_LIMIT.
    """

    chunks: tuple[bytes, ...] | None
    gzipped: bytes
    snapshot: Snapshot
    size: int  # bytes of the plain text

    @property
    def body(self) -> bytes:
        return b"".join(self.plain())

    def gzip_only(self) -> Exposition:
        """The same exposition without its plain copy."""
        if self.chunks is None:
            return self
        return Exposition(chunks=None, gzipped=self.gzipped, snapshot=self.snapshot,
                          size=self.size)

    def plain(self) -> Iterator[bytes]:
        """The plain text, piece by piece."""
        if self.chunks is not None:
            yield from self.chunks
            return
        inflate = zlib.decompressobj(wbits=31)  # gzip
        data = self.gzipped
        while data:
            piece = inflate.decompress(data, PLAIN_PIECE)
            data = inflate.unconsumed_tail
            if piece:
                yield piece
        rest = inflate.flush()
        if rest:
            yield rest

    @classmethod
    def of(cls, data: RenderInput, plain_limit: int = PLAIN_LIMIT) -> Exposition:
        sink = _Sink(plain_limit)
        _render_into(data, sink)
        gzipped = sink.gzipped()
        chunks = tuple(sink.kept) if sink.kept is not None else None
        return cls(chunks=chunks, gzipped=gzipped, snapshot=data.snapshot, size=sink.size)


_process_registry = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_process_registry)


def process_metrics() -> bytes:
    """Per-scrape process metrics (memory, CPU, file descriptors) of this process."""
    return generate_latest(_process_registry)
