"""The daemon end to end: CLI → gunicorn → poller → moto server (through a counting proxy)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.awsproxy import AwsProxy
from tests.daemon import Daemon, sample
from tests.helpers import MOTO_ACCOUNT, add_user, daemon_config, promtool_check_metrics

pytestmark = pytest.mark.e2e

A = MOTO_ACCOUNT


@pytest.fixture
def start_daemon(proxy: AwsProxy, daemons: Callable[..., Daemon]) -> Callable[..., Daemon]:
    def start(interval: float = 1, **extra: Any) -> Daemon:
        return daemons({**daemon_config(proxy.url, interval), **extra})

    return start


def keys(samples: dict[Any, float], user: str, status: str) -> float | None:
    return sample(samples, "iam_user_access_keys", account_id=A, user_name=user, status=status)


def test_serves_exact_counts_and_follows_changes(iam: Any, start_daemon: Callable[..., Daemon]
                                                 ) -> None:
    add_user(iam, "alice", ("Active",))
    add_user(iam, "bob", ("Active", "Active"))
    add_user(iam, "carol", ("Active", "Inactive"))
    add_user(iam, "dave")
    d = start_daemon(interval=1)
    d.wait_ready()
    s = d.scrape()
    expected = {"alice": (1, 0), "bob": (2, 0), "carol": (1, 1), "dave": (0, 0)}
    for user, (active, inactive) in expected.items():
        assert keys(s, user, "Active") == active, user
        assert keys(s, user, "Inactive") == inactive, user
    assert sample(s, "iam_exporter_collection_success", account_id=A) == 1
    assert sample(s, "iam_account_users", account_id=A) == 4
    body = d.get("/metrics").text
    check = promtool_check_metrics(body)
    assert check.returncode == 0 and check.stdout + check.stderr == "", check

    # A second active key for alice shows within a few intervals.
    add_user_key = iam.create_access_key(UserName="alice")["AccessKey"]["AccessKeyId"]
    t0 = time.monotonic()
    d.wait_for(lambda s: keys(s, "alice", "Active") == 2, timeout=15)
    assert time.monotonic() - t0 < 10
    # Deactivating it moves it to Inactive.
    iam.update_access_key(UserName="alice", AccessKeyId=add_user_key, Status="Inactive")
    d.wait_for(lambda s: keys(s, "alice", "Active") == 1 and keys(s, "alice", "Inactive") == 1)

    # A deleted user's series disappear (no lingering series).
    for k in iam.list_access_keys(UserName="bob")["AccessKeyMetadata"]:
        iam.delete_access_key(UserName="bob", AccessKeyId=k["AccessKeyId"])
    iam.delete_user(UserName="bob")
    s = d.wait_for(lambda s: keys(s, "bob", "Active") is None)
    assert not [k for k in s if ("user_name", "bob") in k[1]]
    assert keys(s, "alice", "Active") == 1


def test_scrapes_never_call_aws(iam: Any, proxy: AwsProxy,
                                start_daemon: Callable[..., Daemon]) -> None:
    for i in range(5):
        add_user(iam, f"user{i}", ("Active",))
    d = start_daemon(interval=3600)
    d.wait_ready()
    before = proxy.counts()
    # One cycle: a page of users with tags, one ListAccessKeys per user, the credential
    # report for last-used dates, the account summary, and the caller identity once.
    assert before["ListAccessKeys"] == 5
    assert before["GetAccountAuthorizationDetails"] == 1
    assert before["GetCredentialReport"] == 1
    assert before["GetAccountSummary"] == 1
    assert before["GetCallerIdentity"] == 1
    for _ in range(50):
        assert d.get("/metrics").status_code == 200
    assert d.get("/metrics", headers={"Accept-Encoding": "gzip"}).status_code == 200
    assert d.get("/").status_code == 200
    assert proxy.counts() == before
    s = d.scrape()
    assert sample(s, "iam_exporter_aws_api_calls_total", account_id=A, service="iam",
                  operation="ListAccessKeys") == 5
    # The identity call made before the account id was known is counted under it too.
    assert sample(s, "iam_exporter_aws_api_calls_total", account_id=A, service="sts",
                  operation="GetCallerIdentity") == 1
    assert not [k for k in s if ("account_id", "unknown") in k[1]]


def test_aws_failure_keeps_last_good_data_and_recovers(
        iam: Any, proxy: AwsProxy, start_daemon: Callable[..., Daemon]) -> None:
    add_user(iam, "alice", ("Active", "Active"))
    d = start_daemon(interval=1)
    d.wait_ready()
    proxy.mode = "deny"
    s = d.wait_for(lambda s: sample(s, "iam_exporter_collection_success", account_id=A) == 0)
    # Last good data still served, and the failure is counted by error class.
    assert keys(s, "alice", "Active") == 2
    assert (sample(s, "iam_exporter_collection_errors_total", account_id=A,
                   error="AccessDenied") or 0) >= 1
    frozen = sample(s, "iam_exporter_last_success_timestamp_seconds", account_id=A)
    time.sleep(2.5)
    s = d.scrape()
    assert sample(s, "iam_exporter_last_success_timestamp_seconds", account_id=A) == frozen
    assert d.get("/healthz").status_code == 200
    assert d.get("/readyz").status_code == 200
    assert "the last known data is kept" in d.logs() and "AccessDenied" in d.logs()

    proxy.mode = None
    s = d.wait_for(lambda s: sample(s, "iam_exporter_collection_success", account_id=A) == 1)
    assert (sample(s, "iam_exporter_last_success_timestamp_seconds", account_id=A) or 0) > (
        frozen or 0)
    assert d.proc.poll() is None


def test_aws_down_at_startup_then_ready_when_it_returns(
        iam: Any, proxy: AwsProxy, start_daemon: Callable[..., Daemon]) -> None:
    add_user(iam, "alice", ("Active",))
    proxy.mode = "http500"
    d = start_daemon(interval=1)
    d.wait_listening()
    time.sleep(1.5)
    assert d.get("/healthz").status_code == 200
    assert d.get("/readyz").status_code == 503  # no data yet: not ready
    s = d.scrape()
    assert sample(s, "iam_exporter_collection_success", account_id="unknown") == 0
    assert sample(s, "iam_exporter_build_info", version=__import__("exporter").__version__,
                  python_version=__import__("platform").python_version()) == 1
    proxy.mode = None
    s = d.wait_for(lambda s: keys(s, "alice", "Active") == 1)
    assert d.get("/readyz").status_code == 200
    assert sample(s, "iam_exporter_collection_success", account_id=A) == 1
    # The placeholder account label is gone once the real id is known, and the failures
    # from before then are counted under the real id.
    assert not [k for k in s if ("account_id", "unknown") in k[1]]
    assert (sample(s, "iam_exporter_collection_errors_total", account_id=A,
                   error="InternalFailure") or 0) >= 1


def test_readyz_is_503_until_the_first_pass_ends(
        iam: Any, proxy: AwsProxy, start_daemon: Callable[..., Daemon]) -> None:
    add_user(iam, "alice", ("Active",))
    proxy.hang_seconds = 4
    proxy.modes["ListUsers"] = "hang"
    d = start_daemon(interval=2, aws={"endpoint_url": proxy.url, "max_attempts": 1,
                                      "read_timeout_seconds": 10})
    d.wait_listening()
    assert d.get("/readyz").status_code == 503
    assert d.get("/healthz").status_code == 200
    proxy.modes.clear()
    d.wait_ready(timeout=20)


def test_sigterm_exits_zero_promptly(iam: Any, start_daemon: Callable[..., Daemon]) -> None:
    add_user(iam, "alice", ("Active",))
    d = start_daemon(interval=1)
    d.wait_ready()
    code, took = d.terminate()
    assert code == 0, d.logs()
    assert took < 6  # far below the 8 s grace: nothing holds the worker up


def test_json_logs_one_line_per_pass_and_no_secrets(
        iam: Any, start_daemon: Callable[..., Daemon]) -> None:
    import json

    add_user(iam, "alice", ("Active",))
    d = start_daemon(interval=1, log_format="json")
    d.wait_ready()

    def last_success(s: dict[Any, float]) -> float:
        return sample(s, "iam_exporter_last_success_timestamp_seconds", account_id=A) or 0

    first = last_success(d.wait_for(last_success))
    d.wait_for(lambda s: last_success(s) > first)  # a second pass ended
    d.terminate()
    lines = [json.loads(line) for line in d.logs().splitlines() if line.startswith("{")]
    passes = [x for x in lines if x["msg"] == "pass done"]
    assert len(passes) >= 2
    assert {"account_id", "users", "keys_active", "keys_inactive", "duration_s"} <= set(passes[0])
    assert passes[0]["account_id"] == A and passes[0]["users"] == 1
    assert passes[0]["keys_active"] == 1
    text = d.logs()
    assert "wJalrXUtnFEMI" not in text  # the secret key of FAKE_ENV
    assert "AKIAIOSFODNN7EXAMPLE" not in text
