"""API accounting and partial failures of one account's reads, over real HTTP (the core
against moto, through the counting, fault-injecting proxy)."""

from __future__ import annotations

from typing import Any

from exporter.aws.session import ApiStats, Target
from exporter.config import Config
from exporter.inventory import Snapshot
from tests.awsproxy import AwsProxy
from tests.daemon import sample
from tests.helpers import MOTO_ACCOUNT, add_user, free_port, make_config
from tests.passes import inventory, one_pass, polling, samples, state

A = MOTO_ACCOUNT


def config(endpoint: str, collection: dict[str, Any] | None = None, **aws: Any) -> Config:
    return make_config(aws={"endpoint_url": endpoint, **aws},
                       collection={"last_used": "off", **(collection or {})})


def collect(cfg: Config) -> tuple[Snapshot, ApiStats]:
    stats = ApiStats()
    with polling(cfg, [Target(cfg, stats)]) as poller:
        return one_pass(poller), stats


def test_retried_throttling_is_counted_and_the_counts_stay_exact(
        iam: Any, proxy: AwsProxy) -> None:
    for name in ("a", "b", "c"):
        add_user(iam, name, ("Active", "Active"))
    proxy.modes["ListAccessKeys"] = "throttle"
    proxy.fault_budget = 2
    cfg = config(proxy.url, max_attempts=5)
    snap, stats = collect(cfg)
    assert {u.name: u.count("Active") for u in inventory(snap).users} == {
        "a": 2, "b": 2, "c": 2}
    counts = stats.counts()
    assert counts.calls[(A, "iam", "ListAccessKeys")] == 3
    assert counts.retries == {(A, "iam", "ListAccessKeys"): 2}
    assert counts.errors == {}  # retried to success: not an error
    assert proxy.faults["ListAccessKeys"] == 2
    # Every attempt is an IAM request, and each throttled one is counted as such.
    assert counts.requests[(A, "ListAccessKeys")] == proxy.counts()["ListAccessKeys"] == 5
    assert counts.throttles == {(A, "ListAccessKeys"): 2}
    assert sum(counts.requests.values()) == proxy.service_counts()["iam"]
    s = samples(snap, cfg, stats)
    assert sample(s, "iam_exporter_iam_throttles_total", account_id=A,
                  operation="ListAccessKeys") == 2
    assert sample(s, "iam_exporter_collection_success", account_id=A) == 1


def test_denied_account_summary_is_a_gap_not_a_failure(iam: Any, proxy: AwsProxy) -> None:
    add_user(iam, "alice", ("Active",))
    proxy.modes["GetAccountSummary"] = "deny"
    snap, stats = collect(config(proxy.url))
    inv = inventory(snap)
    assert [u.name for u in inv.users] == ["alice"]
    assert inv.summary.users is None and inv.summary.root_access_keys_present is None
    assert [str(w) for w in inv.warnings] == ["GetAccountSummary: AccessDenied"]
    assert stats.counts().errors == {(A, "iam", "GetAccountSummary", "AccessDenied"): 1}
    assert state(snap).success and snap.error_counts == {}


def test_exhausted_retries_fail_the_account_with_the_error_counted(
        iam: Any, proxy: AwsProxy) -> None:
    add_user(iam, "alice", ("Active",))
    proxy.modes["GetAccountAuthorizationDetails"] = "http500"
    snap, stats = collect(config(proxy.url, max_attempts=2))
    st = state(snap)
    assert not st.success and st.error == "InternalFailure"
    assert st.inventory is None  # never listed: nothing to serve
    assert snap.error_counts == {(A, "InternalFailure"): 1}
    assert proxy.faults["GetAccountAuthorizationDetails"] == 2  # the first attempt, one retry
    assert stats.counts().errors == {
        (A, "iam", "GetAccountAuthorizationDetails", "InternalFailure"): 1}
    assert "ListAccessKeys" not in proxy.counts()


def test_connection_errors_are_counted_by_exception_class(aws_env: dict[str, str]) -> None:
    cfg = config(f"http://127.0.0.1:{free_port()}", max_attempts=2,
                 connect_timeout_seconds=1)
    snap, stats = collect(cfg)
    assert state(snap).error == "EndpointConnectionError"
    assert snap.error_counts == {("unknown", "EndpointConnectionError"): 1}
    counts = stats.counts()
    assert counts.errors == {("unknown", "sts", "GetCallerIdentity", "EndpointConnectionError"): 1}
    assert counts.retries == {("unknown", "sts", "GetCallerIdentity"): 1}


def test_credential_report_pass_costs_three_calls_once_a_report_exists(
        iam: Any, proxy: AwsProxy) -> None:
    for i in range(30):
        add_user(iam, f"user{i}", ("Active",))
    cfg = config(proxy.url, {"strategy": "credential-report"})
    with polling(cfg, [Target(cfg, ApiStats())]) as poller:
        one_pass(poller)  # the first report is generated here
        before = proxy.counts()
        snap = one_pass(poller)
        after = proxy.counts()
    assert len(inventory(snap).users) == 30
    assert all(u.count("Active") == 1 for u in inventory(snap).users)
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert spent == {"GenerateCredentialReport": 1, "GetCredentialReport": 1,
                     "GetAccountSummary": 1}
