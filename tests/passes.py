"""The exporter's core in process, one pass at a time: a Poller over real targets (moto,
through the fault proxy or not), whose snapshot is read after each pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from exporter import metrics
from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats, Target
from exporter.config import Config
from exporter.inventory import AccountInventory, AccountState, Snapshot
from exporter.metrics import RenderInput
from exporter.poller import Poller
from exporter.store import AccountStore
from tests.daemon import parse_samples

PASS_TIMEOUT = 60.0

# Builds a Poller on the real AccountSet (keyword arguments passed on: publish=); the
# conftest fixture `poller_for` stops every one after the test.
PollerFor = Callable[..., tuple[Poller, ApiStats]]


def one_pass(poller: Poller, timeout: float = PASS_TIMEOUT) -> Snapshot:
    """A pass (Poller.run_once: every account listed, or failed, and each user tried
    once since the call); the snapshot then. The poller's loops run on afterwards."""
    return poller.run_once(timeout)


@contextmanager
def polling(cfg: Config, targets: Sequence[Target] | AccountSet) -> Iterator[Poller]:
    """A Poller over targets, stopped afterwards (its loops run between passes)."""
    poller = Poller(cfg, targets)
    try:
        yield poller
    finally:
        poller.stop()


def collect(cfg: Config, stats: ApiStats | None = None,
            target: Target | None = None) -> AccountInventory:
    """One pass over one account (the default credentials' unless target is given);
    its inventory."""
    target = target or Target(cfg, stats or ApiStats())
    with polling(cfg, [target]) as poller:
        return inventory(one_pass(poller))


def state(snap: Snapshot) -> AccountState:
    (st,) = snap.accounts
    return st


def inventory(snap: Snapshot) -> AccountInventory:
    inv = state(snap).inventory
    assert inv is not None, state(snap)
    return inv


def render(snap: Snapshot, cfg: Config, stats: ApiStats | None = None) -> bytes:
    api = (stats or ApiStats()).counts()
    return metrics.render(RenderInput(snap, api, cfg.interval_seconds, cfg.metrics))


def samples(snap: Snapshot, cfg: Config, stats: ApiStats | None = None) -> dict[Any, float]:
    """The exposition of snap (and stats' API counts) as {(name, labels): value}."""
    return parse_samples(render(snap, cfg, stats).decode())


def read_at(store: AccountStore, name: str) -> float | None:
    """When the store's read of a user was taken (None: never read)."""
    return dict(store.members()).get(name)
