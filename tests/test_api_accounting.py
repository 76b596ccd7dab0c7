"""API accounting and partial failures of one account's collection, over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.aws.collect import collect_account
from exporter.aws.errors import Deadline
from exporter.aws.session import ApiStats, Target
from tests.awsproxy import AwsProxy
from tests.helpers import MOTO_ACCOUNT, add_user, make_config

A = MOTO_ACCOUNT


def collect(proxy: AwsProxy, **aws: Any) -> tuple[Any, ApiStats]:
    cfg = make_config(aws={"endpoint_url": proxy.url, **aws})
    stats = ApiStats()
    return collect_account(Target(cfg, stats), cfg, Deadline(60)), stats


def test_retried_throttling_is_counted_and_the_counts_stay_exact(
        iam: Any, proxy: AwsProxy) -> None:
    for name in ("a", "b", "c"):
        add_user(iam, name, ("Active", "Active"))
    proxy.modes["ListAccessKeys"] = "throttle"
    proxy.fault_budget = 2
    inv, stats = collect(proxy, max_attempts=5)
    assert {u.name: u.count("Active") for u in inv.users} == {"a": 2, "b": 2, "c": 2}
    counts = stats.counts()
    assert counts.calls[(A, "iam", "ListAccessKeys")] == 3
    assert counts.retries == {(A, "iam", "ListAccessKeys"): 2}
    assert counts.errors == {}  # retried to success: not an error
    assert proxy.faults["ListAccessKeys"] == 2


def test_denied_account_summary_is_a_gap_not_a_failure(iam: Any, proxy: AwsProxy) -> None:
    add_user(iam, "alice", ("Active",))
    proxy.modes["GetAccountSummary"] = "deny"
    inv, stats = collect(proxy)
    assert [u.name for u in inv.users] == ["alice"]
    assert inv.summary.users is None and inv.summary.root_access_keys_present is None
    assert [str(w) for w in inv.warnings] == ["GetAccountSummary: AccessDenied"]
    assert stats.counts().errors == {(A, "iam", "GetAccountSummary", "AccessDenied"): 1}


def test_exhausted_retries_fail_the_account_with_the_error_counted(
        iam: Any, proxy: AwsProxy) -> None:
    add_user(iam, "alice", ("Active",))
    proxy.modes["GetAccountAuthorizationDetails"] = "http500"
    with pytest.raises(Exception) as info:
        collect(proxy, max_attempts=2)
    assert "InternalFailure" in str(info.value)
    assert proxy.faults["GetAccountAuthorizationDetails"] == 2  # the first attempt, one retry


def test_connection_errors_are_counted_by_exception_class(aws_env: dict[str, str]) -> None:
    from tests.helpers import free_port

    cfg = make_config(aws={"endpoint_url": f"http://127.0.0.1:{free_port()}",
                           "max_attempts": 2, "connect_timeout_seconds": 1})
    stats = ApiStats()
    with pytest.raises(Exception, match="Could not connect"):
        collect_account(Target(cfg, stats), cfg, Deadline(60))
    counts = stats.counts()
    assert counts.errors == {("unknown", "sts", "GetCallerIdentity", "EndpointConnectionError"): 1}
    assert counts.retries == {("unknown", "sts", "GetCallerIdentity"): 1}


def test_credential_report_cycle_costs_three_calls_once_a_report_exists(
        iam: Any, proxy: AwsProxy) -> None:
    for i in range(30):
        add_user(iam, f"user{i}", ("Active",))
    cfg = make_config(aws={"endpoint_url": proxy.url},
                      collection={"strategy": "credential-report"})
    target = Target(cfg, ApiStats())
    collect_account(target, cfg, Deadline(60))  # the first report is generated here
    before = proxy.counts()
    inv = collect_account(target, cfg, Deadline(60))
    after = proxy.counts()
    assert len(inv.users) == 30
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert spent == {"GenerateCredentialReport": 1, "GetCredentialReport": 1,
                     "GetAccountSummary": 1}
