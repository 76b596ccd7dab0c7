"""AWS faults against the real daemon: CLI → gunicorn → poller → fault proxy → moto.

Already covered elsewhere (not repeated here):
- AccessDenied on everything keeps the last good data, freezes last_success, recovers:
  test_daemon.test_aws_failure_keeps_last_good_data_and_recovers
- AWS down at start-up (/healthz 200, /readyz 503, self-metrics, ready later):
  test_daemon.test_aws_down_at_startup_then_ready_when_it_returns,
  test_daemon.test_readyz_is_503_until_the_first_cycle_ends
- retried throttling counted exactly for one account, denied GetAccountSummary as a gap,
  exhausted retries, connection errors by class: test_api_accounting
- one unusable answer (cut short, empty) on any call, retried and counted:
  test_bad_answers
- an exception inside a read, a crashing publish: test_poller; /healthz following the
  poller thread: test_web.test_healthz_follows_poller
- garbage, truncated and random credential reports, LimitExceeded on generation
  (Stubber): test_credential_report
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from werkzeug.test import Client

from exporter import web
from exporter.aws.session import ApiStats, Target
from exporter.inventory import Snapshot
from exporter.poller import Poller
from tests.awsproxy import AwsProxy
from tests.daemon import Daemon, sample
from tests.helpers import MOTO_ACCOUNT, add_user, daemon_config, make_config
from tests.test_web import exposition

pytestmark = pytest.mark.e2e

A = MOTO_ACCOUNT
Samples = dict[Any, float]


@pytest.fixture
def start(proxy: AwsProxy, daemons: Callable[..., Daemon]) -> Callable[..., Daemon]:
    def run(interval: float = 1, aws: dict[str, Any] | None = None, **extra: Any) -> Daemon:
        cfg = daemon_config(proxy.url, interval, **(aws or {}))
        # A test's own collection settings replace this default wholesale: the
        # credential-report tests get the exporter's default last_used that way.
        cfg.setdefault("collection", {"last_used": "off"})
        cfg.update(extra)
        return daemons(cfg)

    return run


def keys(s: Samples, user: str, status: str = "Active") -> float | None:
    return sample(s, "iam_user_access_keys", account_id=A, user_name=user, status=status)


def success(s: Samples) -> float | None:
    return sample(s, "iam_exporter_collection_success", account_id=A)


def last_success(s: Samples) -> float | None:
    return sample(s, "iam_exporter_last_success_timestamp_seconds", account_id=A)


def errors(s: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in s.items() if n == name}


def failures(s: Samples, code: str) -> float:
    """Account-wide failures of the account with that error class so far."""
    return sample(s, "iam_exporter_collection_errors_total", account_id=A, error=code) or 0


def seed(iam: Any) -> None:
    add_user(iam, "alice", ("Active",))
    add_user(iam, "bob", ("Active", "Active"))
    add_user(iam, "carol", ("Active", "Inactive"))


def assert_seeded(s: Samples) -> None:
    assert (keys(s, "alice"), keys(s, "bob"), keys(s, "carol"),
            keys(s, "carol", "Inactive")) == (1, 2, 1, 1)


def clear_faults(proxy: AwsProxy) -> None:
    """The proxy passes everything through again (mode, rule and rewrite reset)."""
    proxy.mode = proxy.rule = proxy.rewrite = None


def hang(proxy: AwsProxy, action: str, seconds: float) -> None:
    """Every request for action hangs for seconds, then the connection closes unanswered."""
    proxy.hang_seconds = seconds
    proxy.modes[action] = "hang"


def assert_fails_cleanly_and_recovers(d: Daemon, proxy: AwsProxy, code: str) -> Samples:
    """The failure is reported with its code; last good data, readiness and health stay;
    last_success stops advancing while the account keeps failing; clearing the proxy's
    fault recovers by itself."""
    s = d.wait_for(lambda s: success(s) == 0 and failures(s, code) >= 1, timeout=30)
    assert_seeded(s)  # the last good data is still served
    frozen = last_success(s)
    seen = failures(s, code)
    s = d.wait_for(lambda s: failures(s, code) >= seen + 1, timeout=30)  # tried again
    assert success(s) == 0 and last_success(s) == frozen
    assert_seeded(s)
    assert d.get("/healthz").status_code == 200 and d.get("/readyz").status_code == 200
    clear_faults(proxy)
    s = d.wait_for(lambda s: success(s) == 1 and (last_success(s) or 0) > (frozen or 0),
                   timeout=30)
    assert_seeded(s)
    assert d.proc.poll() is None
    return s


# --------------------------------------------------------------------------- throttling


def test_throttling_on_30_percent_of_requests_gives_exact_counts(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    for i in range(12):
        add_user(iam, f"user{i:02d}", ("Active",) * (i % 3))
    proxy.mode, proxy.rate = "throttle", 0.3
    d = start(interval=3600, aws={"max_attempts": 10})
    d.wait_ready(timeout=90)
    s = d.scrape()
    assert success(s) == 1
    for i in range(12):
        assert keys(s, f"user{i:02d}") == i % 3
        assert keys(s, f"user{i:02d}", "Inactive") == 0
    faults, actions = proxy.faults, proxy.counts()
    assert sum(faults.values()) >= 3, "the proxy hardly throttled: the test proves nothing"
    retries = errors(s, "iam_exporter_aws_api_retries_total")
    calls = errors(s, "iam_exporter_aws_api_calls_total")
    # Every throttled request was retried, and every retry is counted where it happened.
    assert sum(retries.values()) == sum(faults.values())
    for op in actions:
        service = "sts" if op == "GetCallerIdentity" else "iam"
        labels = (("account_id", A), ("operation", op), ("service", service))
        assert calls[labels] == actions[op] - faults[op], op  # logical calls
        assert retries.get(labels, 0) == faults[op], op
    assert errors(s, "iam_exporter_aws_api_errors_total") == {}
    # Every attempt sent to IAM is counted, the throttled ones as such.
    requests = errors(s, "iam_exporter_iam_requests_total")
    assert sum(requests.values()) == proxy.service_counts()["iam"]
    throttles = errors(s, "iam_exporter_iam_throttles_total")
    assert sum(throttles.values()) == sum(n for op, n in faults.items()
                                          if op != "GetCallerIdentity")


# --------------------------------------------------------------------------- 5xx, resets


def test_a_5xx_burst_is_absorbed_by_retries(iam: Any, proxy: AwsProxy,
                                            start: Callable[..., Daemon]) -> None:
    seed(iam)
    proxy.mode, proxy.fault_budget = "http503", 2
    d = start(interval=3600, aws={"max_attempts": 4})
    d.wait_ready()
    s = d.scrape()
    assert success(s) == 1
    assert_seeded(s)
    assert sum(errors(s, "iam_exporter_aws_api_retries_total").values()) == 2
    assert errors(s, "iam_exporter_collection_errors_total") == {}


SUSTAINED = [
    ("http500", "InternalFailure"),
    ("http503", "ServiceUnavailable"),
    ("reset", "ConnectionClosedError"),
    ("garbage", "UnusableResponseError"),  # a 200 whose body is not AWS's XML (retried)
]


def test_sustained_faults_fail_cleanly_and_recover(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    """One daemon through each fault in turn: each is reported by its own code."""
    seed(iam)
    d = start(aws={"max_attempts": 2})
    d.wait_ready()
    for fault, code in SUSTAINED:
        proxy.mode = fault
        s = assert_fails_cleanly_and_recovers(d, proxy, code)
        api_errors = errors(s, "iam_exporter_aws_api_errors_total")
        assert any(dict(k).get("code") == code for k in api_errors), (fault, api_errors)


# --------------------------------------------------------------------------- hangs


def test_hung_endpoint_is_cut_by_the_read_timeout(iam: Any, proxy: AwsProxy,
                                                  start: Callable[..., Daemon]) -> None:
    seed(iam)
    d = start(interval=1, aws={"read_timeout_seconds": 1})
    d.wait_ready()
    proxy.hang_seconds = 20
    proxy.mode = "hang"
    t0 = time.monotonic()
    d.wait_for(lambda s: success(s) == 0, timeout=15)
    assert time.monotonic() - t0 < 6  # one read timeout and a listing, not the 20 s hang
    for _ in range(5):  # scrapes never wait for AWS
        t1 = time.monotonic()
        assert d.get("/metrics").status_code == 200
        assert time.monotonic() - t1 < 1
    assert_fails_cleanly_and_recovers(d, proxy, "ReadTimeoutError")


def test_a_hung_read_holds_up_neither_the_other_users_nor_scrapes(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    """bob's ListAccessKeys hangs (longer than this test waits): the other users are read
    on, their changes served, and bob keeps his last known keys meanwhile."""
    seed(iam)
    d = start(interval=1, aws={"read_timeout_seconds": 60})
    d.wait_ready()
    proxy.hang_seconds = 40
    proxy.rule = lambda action, p: ("hang" if action == "ListAccessKeys"
                                    and p.get("UserName") == ["bob"] else None)
    deadline = time.monotonic() + 10
    while not proxy.faults["ListAccessKeys"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.faults["ListAccessKeys"] == 1, "bob's read never hung"
    alice_key = iam.list_access_keys(UserName="alice")["AccessKeyMetadata"][0]["AccessKeyId"]
    iam.update_access_key(UserName="alice", AccessKeyId=alice_key, Status="Inactive")
    s = d.wait_for(lambda s: keys(s, "alice") == 0, timeout=20)  # bob still hangs
    assert keys(s, "alice", "Inactive") == 1
    assert keys(s, "bob") == 2 and success(s) == 1
    assert proxy.faults["ListAccessKeys"] == 1  # bob is not asked twice at once
    for _ in range(3):  # scrapes never wait for AWS
        assert d.get("/metrics").status_code == 200
    assert d.get("/healthz").status_code == 200 and d.get("/readyz").status_code == 200


# --------------------------------------------------------------------------- credentials


def test_expired_or_revoked_credentials_fail_the_account_logged_once_per_failure(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    for i in range(10):
        add_user(iam, f"user{i}", ("Active",))
    d = start(interval=1)
    d.wait_ready()
    for fault, code in (("expired", "ExpiredToken"), ("invalid_token", "InvalidClientTokenId")):
        proxy.mode = fault
        s = d.wait_for(lambda s, code=code: failures(s, code) >= 2, timeout=30)
        assert success(s) == 0 and keys(s, "user0") == 1
        # The account's failure, not each user's: no user is marked unread.
        assert errors(s, "iam_user_unread") == {}
        proxy.mode = None

        def lines(code: str = code) -> list[str]:
            """The error lines about this failure."""
            return [ln for ln in d.logs().splitlines()
                    if " error exporter." in ln and f"error={code}" in ln]

        # Each failure counted is logged once, with its code (not once per user): once
        # reads in flight have ended and their failures are published, the two agree.
        d.wait_for(lambda s, code=code: success(s) == 1 and failures(s, code) == len(lines()))


def test_access_denied_on_account_summary_is_a_visible_gap(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    seed(iam)
    proxy.modes["GetAccountSummary"] = "deny"
    d = start(interval=1)
    d.wait_ready()

    def denied(s: Samples) -> float:
        return sample(s, "iam_exporter_aws_api_errors_total", account_id=A, service="iam",
                      operation="GetAccountSummary", code="AccessDenied") or 0

    s = d.wait_for(lambda s: denied(s) >= 3)  # three listings
    assert success(s) == 1
    assert_seeded(s)  # the rest is collected
    assert sample(s, "iam_account_users", account_id=A) is None
    assert sample(s, "iam_root_access_keys_present", account_id=A) is None
    assert sample(s, "iam_exporter_collection_warnings", account_id=A,
                  operation="GetAccountSummary", code="AccessDenied") == 1
    assert errors(s, "iam_exporter_collection_errors_total") == {}
    # Said in each pass's own log line, not once per user (at most once per listing).
    lines = [ln for ln in d.logs().splitlines() if "GetAccountSummary" in ln]
    assert lines and all("pass done" in ln for ln in lines), lines
    d.wait_for(lambda s: denied(s) >= len(lines))
    # Allowed again: the gap closes.
    proxy.modes.clear()
    s = d.wait_for(lambda s: sample(s, "iam_account_users", account_id=A) == 3)
    assert sample(s, "iam_exporter_collection_warnings", account_id=A,
                  operation="GetAccountSummary", code="AccessDenied") is None


def test_access_denied_on_one_users_keys_exports_the_others(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    """A permission boundary or SCP protecting one user: the others stay exact and fresh,
    that user keeps its last known keys, marked by iam_user_unread, and the account
    still succeeds."""
    seed(iam)
    d = start(interval=1)
    d.wait_ready()
    proxy.rule = lambda action, p: ("deny" if action == "ListAccessKeys"
                                    and p.get("UserName") == ["bob"] else None)
    unread = {"account_id": A, "user_name": "bob", "reason": "AccessDenied"}
    s = d.wait_for(lambda s: sample(s, "iam_user_unread", **unread) == 1)
    assert success(s) == 1
    assert keys(s, "bob") == 2  # the last known keys
    assert sample(s, "iam_account_unread_users", account_id=A) == 1
    iam.update_access_key(UserName="alice", Status="Inactive", AccessKeyId=iam.list_access_keys(
        UserName="alice")["AccessKeyMetadata"][0]["AccessKeyId"])
    s = d.wait_for(lambda s: keys(s, "alice") == 0)  # the others stay fresh
    assert (keys(s, "alice", "Inactive"), keys(s, "carol")) == (1, 1)
    assert sample(s, "iam_user_unread", **unread) == 1 and success(s) == 1
    proxy.rule = None
    s = d.wait_for(lambda s: sample(s, "iam_user_unread", **unread) is None)
    assert sample(s, "iam_account_unread_users", account_id=A) == 0
    assert keys(s, "bob") == 2


# --------------------------------------------------------------------------- data faults


def test_user_deleted_between_listing_and_read_is_dropped(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    """The listing still lists bob, but he is gone when his keys are asked for."""
    seed(iam)
    d = start(interval=1)
    d.wait_ready()
    proxy.rule = lambda action, p: ("no_such_entity" if action == "ListAccessKeys"
                                    and p.get("UserName") == ["bob"] else None)
    s = d.wait_for(lambda s: keys(s, "bob") is None)
    assert success(s) == 1
    assert not [k for k in s if ("user_name", "bob") in k[1]]
    assert (keys(s, "alice"), keys(s, "carol")) == (1, 1)
    proxy.rule = None
    d.wait_for(lambda s: keys(s, "bob") == 2)


def _report_rewriter(transform: Callable[[bytes], bytes]) -> Callable[[str, bytes], bytes]:
    def rewrite(action: str, body: bytes) -> bytes:
        if action != "GetCredentialReport":
            return body
        m = re.search(rb"<Content>([^<]*)</Content>", body)
        assert m, body[:300]
        content = base64.b64encode(transform(base64.b64decode(m.group(1))))
        return body[:m.start(1)] + content + body[m.end(1):]
    return rewrite


BAD_REPORTS: list[Callable[[bytes], bytes]] = [
    lambda csv: b"\x89PNG\r\n\x1a\n\x00\x00garbage",
    lambda csv: csv[: len(csv) * 2 // 3],  # truncated mid-row
    lambda csv: csv.split(b"\n", 1)[0] + b"\n" + b"x,y\n",  # a short row
]


def test_bad_credential_report_fails_cleanly_and_recovers(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    seed(iam)
    d = start(interval=1, collection={"strategy": "credential-report"})
    d.wait_ready()
    for transform in BAD_REPORTS:
        proxy.rewrite = _report_rewriter(transform)
        assert_fails_cleanly_and_recovers(d, proxy, "CredentialReportInvalid")


def test_limit_exceeded_on_report_generation_is_waited_out(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    seed(iam)
    proxy.modes["GenerateCredentialReport"] = "limit"
    proxy.fault_budget = 2
    d = start(interval=3600, collection={"strategy": "credential-report"})
    d.wait_ready(timeout=30)
    s = d.scrape()
    assert success(s) == 1
    assert_seeded(s)
    assert sample(s, "iam_exporter_aws_api_errors_total", account_id=A, service="iam",
                  operation="GenerateCredentialReport", code="LimitExceeded") == 2
    assert errors(s, "iam_exporter_collection_errors_total") == {}


# --------------------------------------------------------------------------- the process


def test_sigterm_during_an_in_flight_read_exits_0_within_the_grace(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    seed(iam)
    d = start(interval=1, aws={"read_timeout_seconds": 60})
    d.wait_ready()
    hang(proxy, "ListAccessKeys", 60)
    deadline = time.monotonic() + 10
    while not proxy.faults["ListAccessKeys"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.faults["ListAccessKeys"], "no read got stuck"
    code, took = d.terminate()
    assert code == 0, d.logs()
    assert took < 8 + 1  # web.shutdown_grace_seconds (default 8) and well under 10 s


def test_a_dead_poller_thread_fails_healthz(moto: str, aws_env: dict[str, str]) -> None:
    """Nothing inside a read can end a thread (test_poller); should the poller's publishing
    thread end anyway (here: a BaseException from publishing), /healthz reports it so
    Kubernetes restarts the pod."""
    cfg = make_config(interval_seconds=1, aws={"endpoint_url": moto},
                      collection={"last_used": "off"})
    published: list[Snapshot] = []

    def publish(snap: Snapshot) -> None:
        published.append(snap)
        if len(published) >= 2:
            raise SystemExit("simulated thread death")

    poller = Poller(cfg, [Target(cfg, ApiStats())], publish=publish)
    app = web.App(web.Store(exposition(Snapshot())), poller)
    client = Client(app)
    assert client.get("/healthz").status_code == 503  # not started yet
    died = threading.Event()
    original = threading.excepthook

    def hook(args: Any) -> None:
        if args.exc_type is SystemExit:
            died.set()
        else:
            original(args)

    threading.excepthook = hook
    try:
        poller.start()
        assert client.get("/healthz").status_code == 200
        assert died.wait(10) or not poller.alive()
        deadline = time.monotonic() + 5
        while poller.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/healthz").status_code == 503
        assert b"poller thread is not running" in client.get("/healthz").get_data()
    finally:
        threading.excepthook = original
        poller.stop(timeout=1)
