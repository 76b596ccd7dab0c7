"""EventBridge-shaped bodies of IAM's CloudTrail events and the SQS queues they land in
(from bench/events.py, shared with the benchmark), and what a consumer and its poller
made of them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

# Re-exported for the tests (the benchmark has the same bodies and queues).
from bench.events import Queues as Queues
from bench.events import body as body
from bench.events import event as event
from bench.events import make_queues as make_queues
from exporter.aws.accounts import AccountSet
from exporter.aws.session import ApiStats
from exporter.config import Config
from exporter.events.consumer import Consumer
from exporter.events.stats import RESULTS
from exporter.inventory import User
from exporter.poller import Poller
from tests.awsproxy import AwsProxy
from tests.daemon import parse_samples
from tests.helpers import MOTO_ACCOUNT, make_config

A = MOTO_ACCOUNT


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, every: float = 0.05,
               what: str | Callable[[], str] = "condition") -> Any:
    """predicate()'s first truthy value; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what if isinstance(what, str) else what()} "
                                 f"not met in {timeout}s")
        time.sleep(every)


# --- an in-process poller and consumer on the (proxied) moto server ---------------------


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config(endpoint: str, queues: Queues, **extra: Any) -> Config:
    return make_config(**merge({
        "aws": {"endpoint_url": endpoint, "max_attempts": 1},
        "collection": {"last_used": "off"},
        "events": {"queue_url": queues.url, "wait_seconds": 1,
                   "visibility_timeout_seconds": 1},
    }, extra))


class Runner:
    """Builds a poller (every user read once; its loops keep running) and its consumer
    (started unless start=False); counts the IAM calls of this process (ApiStats: immune
    to other processes' traffic through a reused proxy port). ``close()`` stops them."""

    def __init__(self, proxy: AwsProxy, queues: Queues) -> None:
        self.proxy, self.queues = proxy, queues
        self.consumers: list[Consumer] = []
        self.pollers: list[Poller] = []
        self.stats = ApiStats()

    def __call__(self, start: bool = True, **extra: Any) -> tuple[Poller, Consumer]:
        cfg = config(self.proxy.url, self.queues, **extra)
        poller = Poller(cfg, AccountSet(cfg, self.stats))
        self.pollers.append(poller)
        snap = poller.run_once(timeout=30)
        assert snap.ready and all(a.success for a in snap.accounts), snap.accounts
        consumer = Consumer(cfg, poller, dead_letter_every=0.5)
        self.consumers.append(consumer)
        if start:
            consumer.start()
        return poller, consumer

    def close(self) -> None:
        for c in self.consumers:
            c.stop(timeout=0)
        for p in self.pollers:
            p.stop()

    def iam_calls(self) -> Counter[str]:
        """IAM calls so far by operation (after retries)."""
        out: Counter[str] = Counter()
        for (_, service, operation), n in self.stats.counts().calls.items():
            if service == "iam":
                out[operation] += n
        return out


# --- what a consumer and its poller did --------------------------------------------


def keys(poller: Poller, user: str, account: str = A) -> dict[str, int] | None:
    """{status: keys} of the user as served, None when it is not served."""
    u = served(poller, user, account)
    return None if u is None else {s: u.count(s) for s in ("Active", "Inactive") if u.count(s)}


def served(poller: Poller, user: str, account: str = A) -> User | None:
    for st in poller.snapshot.accounts:
        if st.account_id == account and st.inventory is not None:
            for u in st.inventory.users:
                if u.name == user:
                    return u
    return None


def the(poller: Poller, user: str) -> User:
    u = served(poller, user)
    assert u is not None, f"{user} is not served"
    return u


def results(c: Consumer) -> dict[str, int]:
    """Every result's count (applied, ignored, invalid, failed, handed_over,
    delete_failed)."""
    return {r: c.stats.count(r) for r in RESULTS}


def settled(c: Consumer, queues: Queues, **want: int) -> Callable[[], bool]:
    """The consumer counted at least these results and the queue is empty."""
    return lambda: all(c.stats.count(r) >= n for r, n in want.items()) and not queues.depth()


def metrics(c: Consumer) -> dict[Any, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(c.stats)
    return parse_samples(generate_latest(registry).decode())
