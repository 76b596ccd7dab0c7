"""Snapshot → Prometheus text exposition, with prometheus_client's own exposition code.

A scrape never calls AWS and never re-renders the inventory: each published snapshot is
rendered here once, plain and gzip side by side, and the web app serves those bytes with
the exporter's own small, per-scrape families appended (one gzip member: the compressor
is kept after the snapshot part and copied per scrape).

Accounts are rendered one at a time (``AccountCollector``) and their families merged by
name; an account whose state did not change since the last render is not rendered again
(an event that changes one user of one account re-renders that account only).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exporter.aws.session import ApiCounts
from exporter.collector.account import AccountCollector
from exporter.collector.account import key_label as key_label
from exporter.collector.exporter import ExporterCollector
from exporter.config import MetricsConfig
from exporter.inventory import AccountState, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GZIP_LEVEL = 6


@dataclass(frozen=True)
class RenderInput:
    snapshot: Snapshot
    api: ApiCounts
    interval: float
    options: MetricsConfig = field(default_factory=MetricsConfig)


class _One:
    """A registry of one family, for generate_latest."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


# One account rendered: (family name, header bytes, sample bytes) in collector order.
Blocks = tuple[tuple[str, bytes, bytes], ...]


def _blocks(state: AccountState, options: MetricsConfig, interval: float) -> Blocks:
    out = []
    for metric in AccountCollector(state, options, interval).collect():
        text = generate_latest(_One(metric))
        split = text.index(b"\n", text.index(b"\n") + 1) + 1  # after # HELP and # TYPE
        out.append((metric.name, text[:split], text[split:]))
    return tuple(out)


class AccountCache:
    """The last rendering of each account, reused while its state object is the same
    (states are immutable: a changed account is a new object)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[AccountState, Any, Blocks]] = {}

    def blocks(self, state: AccountState, options: MetricsConfig, interval: float) -> Blocks:
        how = (options, interval)
        with self._lock:
            hit = self._data.get(state.key)
        if hit is not None and hit[0] is state and hit[1] == how:
            return hit[2]
        blocks = _blocks(state, options, interval)
        with self._lock:
            self._data[state.key] = (state, how, blocks)
        return blocks

    def keep_only(self, keys: Iterable[str]) -> None:
        wanted = set(keys)
        with self._lock:
            for key in [k for k in self._data if k not in wanted]:
                del self._data[key]


def render_accounts(data: RenderInput, cache: AccountCache | None = None) -> list[bytes]:
    """The per-account families of every account, merged by family, as chunks."""
    cache = cache or AccountCache()
    rendered = [cache.blocks(st, data.options, data.interval) for st in data.snapshot.accounts]
    cache.keep_only(st.key for st in data.snapshot.accounts)
    # Every family's header, even with no account yet (from an account with no data).
    heads = rendered[0] if rendered else _blocks(_NO_ACCOUNT, data.options, data.interval)
    chunks: list[bytes] = []
    for i, (_, head, _) in enumerate(heads):
        chunks.append(head)
        chunks.extend(blocks[i][2] for blocks in rendered if blocks[i][2])
    return chunks


_NO_ACCOUNT = AccountState("", "", "", None, False, 0.0, None)


def exporter_registry(data: RenderInput) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExporterCollector(lambda: data.snapshot, lambda: data.api,
                                        lambda: data.interval))
    return registry


def render(data: RenderInput) -> bytes:
    """The whole exposition of data: the accounts, then the exporter's own families."""
    return b"".join(render_accounts(data)) + generate_latest(exporter_registry(data))


@dataclass(frozen=True)
class Exposition:
    """The rendered accounts of one snapshot, plain and as the start of a gzip stream,
    swapped in as one reference."""

    chunks: tuple[bytes, ...]
    gzip_head: bytes
    _compressor: Any  # zlib compressobj after gzip_head (flushed, not finished)
    snapshot: Snapshot
    size: int  # bytes of the plain text

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def gzip_with(self, tail: bytes) -> list[bytes]:
        """One gzip member of the accounts plus tail."""
        comp = self._compressor.copy()
        return [self.gzip_head, comp.compress(tail) + comp.flush()]

    def extend(self, data: bytes) -> Exposition:
        """This exposition with data appended, in both forms (the big part is not
        compressed again)."""
        comp = self._compressor.copy()
        more = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
        return Exposition((*self.chunks, data), self.gzip_head + more, comp, self.snapshot,
                          self.size + len(data))

    @property
    def gzipped(self) -> bytes:
        return b"".join(self.gzip_with(b""))

    @classmethod
    def of(cls, data: RenderInput, cache: AccountCache | None = None) -> Exposition:
        chunks = render_accounts(data, cache)
        comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip framing
        head = [comp.compress(c) for c in chunks]
        head.append(comp.flush(zlib.Z_SYNC_FLUSH))
        return cls(tuple(chunks), b"".join(head), comp, data.snapshot,
                   sum(len(c) for c in chunks))


class Live:
    """What is rendered per scrape: the exporter's own families, process metrics and any
    other registered collector (reload state, events)."""

    def __init__(self, *collectors: Collector, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for c in collectors:
            self.registry.register(c)
        if process:
            ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
