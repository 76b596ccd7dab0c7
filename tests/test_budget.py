"""The IAM request budget (issue 13): pacing, yielding to a shared quota, and the
counters that show what is spent.

The budget is tested alone with a fake clock, then end to end: the exporter's real
reads (AccountSet, Poller, its account loops, botocore) against moto behind a proxy that
throttles IAM by rate, as IAM does (a token bucket per account).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from exporter.aws import budget as budget_mod
from exporter.aws.accounts import AccountSet
from exporter.aws.budget import Budget
from exporter.aws.session import ApiStats
from exporter.config import Config
from exporter.inventory import Snapshot
from exporter.metrics import RenderInput
from exporter.poller import Poller
from tests.awsproxy import AwsProxy, TokenBucket
from tests.helpers import MOTO_ACCOUNT, add_user, make_config

# --------------------------------------------------------------------------- Budget alone


class Clock:
    """A fake monotonic clock; sleep() moves it on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def budget(rate: float) -> tuple[Budget, Clock]:
    clock = Clock()
    return Budget(rate, clock=clock, sleep=clock.sleep), clock


def test_budget_paces_evenly_without_burst() -> None:
    b, clock = budget(10)
    start = clock.now
    stamps = []
    for _ in range(21):
        b.acquire()
        stamps.append(clock.now)
    # The first goes at once, then one every 1/rate: 21 requests take exactly 2 s.
    assert stamps[0] == start
    assert stamps[-1] - start == pytest.approx(2.0)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(g == pytest.approx(0.1) for g in gaps)
    assert b.rate() == 10


def test_budget_idle_time_is_not_saved_up_as_a_burst() -> None:
    b, clock = budget(10)
    b.acquire()
    clock.now += 60  # a minute idle
    before = clock.now
    for _ in range(5):
        b.acquire()
    # No burst after idling: still one every 0.1 s.
    assert clock.now - before == pytest.approx(0.4)


def test_budget_paces_threads_too() -> None:
    """Real clock, several threads: over any window of w seconds at most w*rate+1."""
    b = Budget(50)
    stamps: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(10):
            b.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert stamps[-1] - stamps[0] >= 49 / 50 - 0.02
    assert max_in_window(stamps, 0.5) <= 0.5 * 50 + 1


def test_throttle_halves_the_rate_at_most_once_a_second() -> None:
    b, clock = budget(40)
    b.throttled()
    assert b.rate() == pytest.approx(20)
    # Answers to requests already in flight say nothing new: no second halving.
    clock.now += 0.5
    b.throttled()
    b.throttled()
    assert b.rate() == pytest.approx(20 + 0.5 / 60 * 20)
    clock.now += 0.6  # 1.1 s after the first cut
    expected = (20 + 1.1 / 60 * 20) / 2
    b.throttled()
    assert b.rate() == pytest.approx(expected)


def test_rate_climbs_back_linearly_to_the_cap() -> None:
    b, clock = budget(40)
    b.throttled()
    low = b.rate()
    assert low == pytest.approx(20)
    clock.now += budget_mod.RECOVER_SECONDS / 4
    assert b.rate() == pytest.approx(25)
    clock.now += budget_mod.RECOVER_SECONDS / 4
    assert b.rate() == pytest.approx(30)
    clock.now += budget_mod.RECOVER_SECONDS / 2
    assert b.rate() == pytest.approx(40)
    clock.now += 1000
    assert b.rate() == 40  # never above the cap


def test_rate_never_falls_below_the_floor() -> None:
    b, clock = budget(100)
    for _ in range(20):
        b.throttled()
        clock.now += 1.0
    assert b.rate() >= 100 * budget_mod.MIN_SHARE
    # Right at a cut the rate is exactly the floor.
    b.throttled()
    assert b.rate() == pytest.approx(100 * budget_mod.MIN_SHARE)


def test_a_throttle_spreads_requests_already_paced() -> None:
    b, clock = budget(10)
    b.acquire()  # next may go at +0.1
    b.throttled()  # rate 5: the next goes no sooner than 1/5 s from now
    before = clock.now
    b.acquire()
    assert clock.now - before == pytest.approx(0.2)
    b.acquire()
    # The rate climbs back a little in 0.2 s, so slightly less than 0.2 s.
    assert clock.now - before == pytest.approx(0.2 + 1 / (5 + 0.2 / 60 * 5), rel=1e-6)


# --------------------------------------------------------------------------- end to end


def max_in_window(stamps: list[float], window: float) -> int:
    """The most stamps (sorted) within any closed window of that many seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


USERS = 150


def seed(iam: Any, n: int = USERS) -> dict[str, tuple[int, int]]:
    """n users in moto itself (its in-process backend: not through the proxy, and fast),
    one through tests.helpers.add_user over HTTP; returns name → (active, inactive)."""
    from moto.iam.models import iam_backends

    backend = iam_backends[MOTO_ACCOUNT]["global"]
    want = {"user-http": (1, 1)}
    add_user(iam, "user-http", ("Active", "Inactive"))
    for i in range(n - 1):
        statuses = (("Active",), ("Active", "Inactive"), (), ("Active", "Active"))[i % 4]
        name = f"user-{i:04d}"
        backend.create_user("us-east-1", name)
        for status in statuses:
            backend.create_access_key(name, status=status)
        want[name] = (statuses.count("Active"), statuses.count("Inactive"))
    listed = iam.get_account_summary()["SummaryMap"]["Users"]
    assert listed == n
    return want


def config(proxy: AwsProxy, rate: float, **extra: Any) -> Config:
    collection = {"last_used": "off", "concurrency": 8, **extra.pop("collection", {})}
    return make_config(aws={"endpoint_url": proxy.url, "max_requests_per_second": rate,
                            **extra.pop("aws", {})},
                       collection=collection, **extra)


def run_once(cfg: Config) -> tuple[Snapshot, ApiStats]:
    """A pass on demand: the account listed and each user read once; then stopped, so
    that no later read adds to what the test counts."""
    stats = ApiStats()
    poller = Poller(cfg, AccountSet(cfg, stats))
    try:
        snap = poller.run_once(timeout=60)
    finally:
        poller.stop()
    assert snap.ready, snap.accounts
    return snap, stats


def counts_of(snap: Snapshot) -> dict[str, tuple[int, int]]:
    (st,) = snap.accounts
    assert st.success, st.error
    assert st.inventory is not None
    return {u.name: (u.count("Active"), u.count("Inactive")) for u in st.inventory.users}


def iam_stamps(bucket: TokenBucket) -> tuple[list[float], int]:
    reqs = bucket.requests()
    return sorted(t for t, _, _ in reqs), sum(1 for _, _, thr in reqs if thr)


def test_budget_under_the_quota_never_throttles_nor_exceeds_the_budget(
        iam: Any, proxy: AwsProxy) -> None:
    want = seed(iam)
    proxy.bucket = TokenBucket(rate=80, burst=5)
    snap, _ = run_once(config(proxy, 60))
    assert counts_of(snap) == want
    stamps, throttled = iam_stamps(proxy.bucket)
    assert throttled == 0
    assert sum(proxy.faults.values()) == 0
    assert len(stamps) >= USERS + 2  # bulk user list, a ListAccessKeys each, the summary
    assert max_in_window(stamps, 2.0) <= 2 * 60 + 1
    assert max_in_window(stamps, 1.0) <= 60 + 1
    # Paced, not merely lucky: the requests took about as long as the budget says.
    assert stamps[-1] - stamps[0] >= (len(stamps) - 1) / 60 * 0.95


def test_budget_above_the_quota_yields_and_stays_exact(iam: Any, proxy: AwsProxy) -> None:
    want = seed(iam)
    proxy.bucket = TokenBucket(rate=20, burst=5)
    snap, stats = run_once(config(proxy, 60))
    assert counts_of(snap) == want
    stamps, throttled = iam_stamps(proxy.bucket)
    assert throttled > 0  # the budget really was above the quota
    assert throttled / len(stamps) < 0.10, (throttled, len(stamps))
    # And the budget in effect was lowered by the throttles.
    assert stats.counts().budget[MOTO_ACCOUNT] < 60


def families(snap: Snapshot, stats: ApiStats) -> dict[str, Any]:
    text = metrics.render(RenderInput(snap, stats.counts(), 300)).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for f in fams.values()
            for s in f.samples if s.name == name}


IAM_ACTIONS = {"GetAccountAuthorizationDetails", "ListUsers", "ListAccessKeys",
               "GetAccountSummary", "GenerateCredentialReport", "GetCredentialReport",
               "GetAccessKeyLastUsed"}


def test_request_and_throttle_counters_count_what_iam_saw(iam: Any, proxy: AwsProxy) -> None:
    want = seed(iam, 60)
    proxy.bucket = TokenBucket(rate=25, burst=3)
    # The credential report too: every IAM operation is counted, not only ListAccessKeys.
    snap, stats = run_once(config(proxy, 50, collection={"last_used": "credential-report"}))
    assert counts_of(snap) == want
    fams = families(snap, stats)

    sent = {a: n for a, n in proxy.counts().items() if a in IAM_ACTIONS}
    assert set(proxy.counts()) - IAM_ACTIONS == {"GetCallerIdentity"}  # only STS besides
    requests = samples(fams, "iam_exporter_iam_requests_total")
    assert requests == {(("account_id", MOTO_ACCOUNT), ("operation", op)): float(n)
                        for op, n in sent.items()}
    assert sent["ListAccessKeys"] >= 60

    throttled = {a: n for a, n in proxy.faults.items()}
    assert sum(throttled.values()) > 0
    assert sum(throttled.values()) == sum(1 for _, _, thr in proxy.bucket.requests() if thr)
    assert samples(fams, "iam_exporter_iam_throttles_total") == {
        (("account_id", MOTO_ACCOUNT), ("operation", op)): float(n)
        for op, n in throttled.items()}

    gauge = samples(fams, "iam_exporter_iam_request_budget")
    (rate,) = gauge.values()
    assert list(gauge) == [(("account_id", MOTO_ACCOUNT),)]
    assert rate < 50  # lowered after the throttles, still climbing back

    # Without throttling the gauge is the configured budget.
    proxy.bucket = None
    snap, stats = run_once(config(proxy, 50))
    fams = families(snap, stats)
    assert samples(fams, "iam_exporter_iam_request_budget") == {
        (("account_id", MOTO_ACCOUNT),): 50.0}
    assert samples(fams, "iam_exporter_iam_throttles_total") == {}


def test_budget_serves_in_order_and_urgent_calls_first() -> None:
    """Waiting calls go first come, first served, except that an urgent one (an event's
    re-read) overtakes every waiting poll: it never waits behind a pass."""
    b = Budget(20)
    b.acquire()  # the next slot is 50 ms away: everything below waits
    order: list[str] = []
    lock = threading.Lock()

    def call(name: str, urgent: bool = False) -> None:
        if urgent:
            with b.urgent():
                b.acquire()
        else:
            b.acquire()
        with lock:
            order.append(name)

    polls = []
    for i in range(6):
        t = threading.Thread(target=call, args=(f"poll{i}",))
        t.start()
        polls.append(t)
        time.sleep(0.005)  # arrive in this order
    event = threading.Thread(target=call, args=("event", True))
    event.start()
    for t in [*polls, event]:
        t.join()
    # The event went at the first slot it could get, at most one poll before it (one
    # whose slot had come while the event was being started).
    assert order.index("event") <= 1
    polls_order = [n for n in order if n != "event"]
    assert polls_order == [f"poll{i}" for i in range(6)]
