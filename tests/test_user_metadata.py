"""Tags as labels, the exemption tag, user filters, the per-account strategy and the
metrics options (per_user, per_key, access_key_id), over real HTTP to moto."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.aws.session import ApiStats, Target
from exporter.config import Config
from tests.awsproxy import AwsProxy
from tests.daemon import parse_samples
from tests.helpers import MOTO_ACCOUNT, add_user, make_config, promtool_check_metrics
from tests.passes import inventory, one_pass, polling
from tests.passes import render as exposition

EXEMPT = {"iam-key-exporter/exempt": "true"}


def seed(iam: Any) -> dict[str, list[str]]:
    return {
        "alice": add_user(iam, "alice", ("Active", "Active"), path="/eng/",
                          tags={"Team": "payments", "Owner": "a@example.com"}),
        "bob": add_user(iam, "bob", ("Active", "Active"), tags={"Team": "data", **EXEMPT}),
        "svc-ci": add_user(iam, "svc-ci", ("Active", "Inactive"), path="/svc/"),
        "carol": add_user(iam, "carol", ("Active",), path="/eng/contractors/",
                          tags={"Team": 'we "quote", \\ and\nbreak'}),
    }


def render(cfg: Config, proxy: AwsProxy, stats: ApiStats | None = None) -> dict[str, Any]:
    """One pass of the core over the proxied account, rendered (and checked by promtool)."""
    with polling(cfg, [Target(cfg, stats or ApiStats())]) as poller:
        snap = one_pass(poller)
    body = exposition(snap, cfg)
    check = promtool_check_metrics(body)
    assert check.returncode == 0, check.stdout + check.stderr
    return {"samples": parse_samples(body.decode()), "inv": inventory(snap), "body": body}


def series(samples: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def cfg_for(proxy: AwsProxy, **kw: Any) -> Config:
    return make_config(aws={"endpoint_url": proxy.url}, **kw)


def test_tags_become_labels_and_exempt_users_are_marked(iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    out = render(cfg_for(proxy, metrics={"user_tags": {"Team": "team"}}), proxy)
    info = {dict(k)["user_name"]: dict(k) for k in series(out["samples"], "iam_user_info")}
    assert info["alice"] == {"account_id": MOTO_ACCOUNT, "user_name": "alice", "path": "/eng/",
                             "exempt": "false", "team": "payments"}
    assert info["bob"]["exempt"] == "true" and info["bob"]["team"] == "data"
    assert info["svc-ci"]["team"] == ""  # no such tag: empty, the label set stays the same
    assert info["carol"]["team"] == 'we "quote", \\ and\nbreak'  # escaped, not mangled
    assert "Owner" not in str(info) and "a@example.com" not in out["body"].decode()
    multi = series(out["samples"], "iam_account_users_with_multiple_active_keys")
    assert list(multi.values()) == [1.0]  # alice; bob is exempt


def test_exemption_needs_the_exact_value(iam: Any, proxy: AwsProxy) -> None:
    add_user(iam, "dora", ("Active", "Active"), tags={"iam-key-exporter/exempt": "yes"})
    out = render(cfg_for(proxy), proxy)
    (labels,) = series(out["samples"], "iam_user_info")
    assert dict(labels)["exempt"] == "false"
    out = render(cfg_for(proxy, metrics={"exempt_tag": {"value": "yes"}}), proxy)
    (labels,) = series(out["samples"], "iam_user_info")
    assert dict(labels)["exempt"] == "true"


def test_without_the_bulk_permission_users_are_listed_without_tags(
        iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    proxy.modes["GetAccountAuthorizationDetails"] = "deny"
    out = render(cfg_for(proxy, metrics={"user_tags": {"Team": "team"}}), proxy)
    inv = out["inv"]
    assert [str(w) for w in inv.warnings] == ["GetAccountAuthorizationDetails: AccessDenied"]
    assert {u.name: u.count("Active") for u in inv.users} == {
        "alice": 2, "bob": 2, "svc-ci": 1, "carol": 1}
    assert all(u.tags == () and not u.exempt for u in inv.users)
    warn = series(out["samples"], "iam_exporter_collection_warnings")
    assert list(warn) == [(("account_id", MOTO_ACCOUNT), ("code", "AccessDenied"),
                           ("operation", "GetAccountAuthorizationDetails"))]


def test_user_filters_skip_the_key_calls_too(iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    before = proxy.counts()["ListAccessKeys"]
    out = render(cfg_for(proxy, collection={"users": {
        "include_paths": ["/eng/", "/svc/"], "exclude_paths": ["/eng/contractors/"],
        "exclude_names": ["svc-.*"]}}), proxy)
    assert [u.name for u in out["inv"].users] == ["alice"]
    assert proxy.counts()["ListAccessKeys"] - before == 1
    assert series(out["samples"], "iam_account_watched_users") == {
        (("account_id", MOTO_ACCOUNT),): 1.0}


def test_filters_apply_to_the_credential_report_strategy(iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    out = render(cfg_for(proxy, collection={"strategy": "credential-report",
                                            "users": {"include_names": ["alice|bob"]}}), proxy)
    assert [u.name for u in out["inv"].users] == ["alice", "bob"]


def test_credential_report_strategy_reads_tags_only_when_labels_are_asked(
        iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    before = proxy.counts()["GetAccountAuthorizationDetails"]
    render(cfg_for(proxy, collection={"strategy": "credential-report"}), proxy)
    assert proxy.counts()["GetAccountAuthorizationDetails"] == before
    out = render(cfg_for(proxy, collection={"strategy": "credential-report"},
                         metrics={"user_tags": {"Team": "team"}}), proxy)
    assert proxy.counts()["GetAccountAuthorizationDetails"] == before + 1
    info = {dict(k)["user_name"]: dict(k) for k in series(out["samples"], "iam_user_info")}
    assert info["alice"]["team"] == "payments" and info["bob"]["exempt"] == "true"


@pytest.mark.parametrize(("mode", "expect"), [
    ("full", lambda ids: set(ids)),
    ("suffix", lambda ids: {i[-4:] for i in ids}),
    ("none", lambda ids: {"key1", "key2"}),
])
def test_access_key_id_label_modes(iam: Any, proxy: AwsProxy, mode: str, expect: Any) -> None:
    ids = add_user(iam, "alice", ("Active", "Inactive"))
    out = render(cfg_for(proxy, metrics={"access_key_id": mode}), proxy)
    got = {dict(k)["access_key_id"]
           for k in series(out["samples"], "iam_access_key_created_timestamp_seconds")}
    assert got == expect(ids)
    if mode != "full":
        assert not any(i in out["body"].decode() for i in ids)


def test_per_key_and_per_user_off(iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    out = render(cfg_for(proxy, metrics={"per_key": False}), proxy)
    names = {n for n, _ in out["samples"]}
    assert "iam_access_key_created_timestamp_seconds" not in names
    assert "iam_user_access_keys" in names and "iam_user_info" in names
    out = render(cfg_for(proxy, metrics={"per_user": False}), proxy)
    names = {n for n, _ in out["samples"]}
    assert not {"iam_user_access_keys", "iam_user_info"} & names
    assert series(out["samples"], "iam_account_access_keys") == {
        (("account_id", MOTO_ACCOUNT), ("status", "Active")): 6.0,
        (("account_id", MOTO_ACCOUNT), ("status", "Inactive")): 1.0}
    assert list(series(out["samples"],
                       "iam_account_users_with_multiple_active_keys").values()) == [1.0]


def test_per_account_strategy_overrides_the_default(iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    cfg = cfg_for(proxy, accounts=[{"role_arn": f"arn:aws:iam::{MOTO_ACCOUNT}:role/x",
                                    "strategy": "credential-report"}])
    before = proxy.counts()
    with polling(cfg, [Target(cfg, ApiStats(), account=cfg.accounts[0])]) as poller:
        inv = inventory(one_pass(poller))
    assert inv.strategy == "credential-report"
    assert cfg.collection.strategy == "list"
    assert {u.name: u.count("Active") for u in inv.users} == {
        "alice": 2, "bob": 2, "svc-ci": 1, "carol": 1}
    spent = proxy.counts() - before
    assert spent["GetCredentialReport"] == 1 and "ListAccessKeys" not in spent
    assert spent["AssumeRole"] == 1


def test_an_expired_key_is_counted_under_its_own_status(iam: Any, proxy: AwsProxy) -> None:
    """moto cannot make an Expired key (botocore's model lists the status): the proxy
    rewrites carol's ListAccessKeys answer. It is counted as Expired, never an error,
    for the user and the account."""
    seed(iam)

    def expire(action: str, body: bytes) -> bytes:
        if action == "ListAccessKeys" and b"<UserName>carol</UserName>" in body:
            assert body.count(b"<Status>Active</Status>") == 1
            return body.replace(b"<Status>Active</Status>", b"<Status>Expired</Status>")
        return body

    proxy.rewrite = expire
    out = render(cfg_for(proxy), proxy)
    s = out["samples"]
    carol = {dict(k)["status"]: v for k, v in series(s, "iam_user_access_keys").items()
             if dict(k)["user_name"] == "carol"}
    assert carol == {"Active": 0.0, "Inactive": 0.0, "Expired": 1.0}
    assert series(s, "iam_account_access_keys") == {
        (("account_id", MOTO_ACCOUNT), ("status", "Active")): 5.0,
        (("account_id", MOTO_ACCOUNT), ("status", "Inactive")): 1.0,
        (("account_id", MOTO_ACCOUNT), ("status", "Expired")): 1.0}
    assert series(s, "iam_exporter_collection_success") == {
        (("account_id", MOTO_ACCOUNT),): 1.0}
    assert series(s, "iam_user_unread") == {}
    (key,) = [labels for labels in series(s, "iam_access_key_created_timestamp_seconds")
              if dict(labels)["user_name"] == "carol"]
    assert dict(key)["status"] == "Expired"
