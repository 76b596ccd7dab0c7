"""Both collection strategies end to end, over HTTP against a real moto server.

One account is seeded with every key state a user can be in, users under nested paths,
tagged users and user names made of every character IAM allows (commas included, which
moto writes unquoted into the credential report). Each strategy must report exactly what
was seeded, and the two must agree.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any

import pytest

from exporter.aws import credential_report
from exporter.aws.session import ApiStats
from exporter.inventory import AccountInventory
from tests.awsproxy import AwsProxy
from tests.helpers import MOTO_ACCOUNT, add_user, make_config
from tests.passes import collect as one_pass_of

NAME_CHARS = string.ascii_letters + string.digits + "+=,.@_-"
LONG_NAME = ("svc+deploy=prod,eu.west@example.com_" + string.ascii_letters)[:64]


@dataclass(frozen=True)
class Seeded:
    path: str
    statuses: tuple[str, ...]  # in creation order (= credential-report slot order)
    key_ids: tuple[str, ...]


# name → (path, key statuses in creation order, tags)
SEED: dict[str, tuple[str, tuple[str, ...], dict[str, str] | None]] = {
    "zero-keys": ("/", (), None),
    "one-active": ("/", ("Active",), None),
    "two-active": ("/", ("Active", "Active"), None),
    "active-then-inactive": ("/", ("Active", "Inactive"), None),
    "inactive-then-active": ("/", ("Inactive", "Active"), None),
    "two-inactive": ("/", ("Inactive", "Inactive"), None),
    "one-inactive": ("/", ("Inactive",), None),
    "team-member": ("/division/team/", ("Active", "Active"), None),
    "deep.path": ("/a/b/c/d/", ("Inactive",), None),
    "tagged@example.com": ("/", ("Active", "Inactive"),
                           {"team": "payments", "cost-center": "4711", "owner": "a@b.c"}),
    "tagged-no-keys": ("/service/", (), {"env": "prod"}),
    # every allowed character, split over two names (IAM names are at most 64 long)
    string.ascii_uppercase + string.digits + "+=,.@_-": ("/", ("Active",), None),
    string.ascii_lowercase + "+=.@_-": ("/chars/", ("Active", "Active"), None),
    LONG_NAME: ("/", ("Active", "Inactive"), None),
    "x" * 64: ("/long/path/", ("Inactive", "Inactive"), None),
    "last,first": ("/", ("Active", "Active"), None),
    "a,b,c": ("/division/team/", ("Inactive", "Active"), None),
    ",leading": ("/", ("Active",), None),
    "trailing,": ("/", (), None),
    "comma,,double": ("/x/", ("Inactive",), None),
    "1": ("/", ("Active",), None),
    "A=B": ("/", ("Active", "Active"), None),
}


def seed(iam: Any) -> dict[str, Seeded]:
    assert len(LONG_NAME) == 64
    assert set("".join(SEED)) == set(NAME_CHARS)  # every allowed character is used
    out = {}
    for name, (path, statuses, tags) in SEED.items():
        ids = add_user(iam, name, statuses, path=path, tags=tags)
        out[name] = Seeded(path, statuses, tuple(ids))
    # the seeding really happened as described
    listed = {u["UserName"]: u["Path"] for u in iam.list_users(MaxItems=1000)["Users"]}
    assert listed == {n: s.path for n, s in out.items()}
    return out


def collect(moto: str, strategy: str, stats: ApiStats | None = None) -> AccountInventory:
    """One pass of the exporter's core over moto's account."""
    cfg = make_config(aws={"endpoint_url": moto}, collection={"strategy": strategy})
    assert cfg.collection.strategy == strategy
    return one_pass_of(cfg, stats)


def counts(inv: AccountInventory) -> dict[str, tuple[int, int]]:
    return {u.name: (u.count("Active"), u.count("Inactive")) for u in inv.users}


def calls(stats: ApiStats, service: str = "iam") -> dict[str, int]:
    got = stats.counts().calls
    return {op: n for (acct, svc, op), n in got.items() if svc == service and acct == MOTO_ACCOUNT}


def expected_counts(seeded: dict[str, Seeded]) -> dict[str, tuple[int, int]]:
    return {n: (s.statuses.count("Active"), s.statuses.count("Inactive"))
            for n, s in seeded.items()}


@pytest.fixture
def seeded(iam: Any) -> dict[str, Seeded]:
    return seed(iam)


def test_list_strategy_exact(moto: str, seeded: dict[str, Seeded]) -> None:
    stats = ApiStats()
    inv = collect(moto, "list", stats)

    assert inv.account_id == MOTO_ACCOUNT
    assert inv.strategy == "list"
    assert inv.report_generated is not None  # read for the last-used dates
    assert inv.warnings == ()
    assert inv.last_used_complete is True
    assert [u.name for u in inv.users] == sorted(seeded)
    assert counts(inv) == expected_counts(seeded)
    for user in inv.users:
        want = seeded[user.name]
        assert user.path == want.path, user.name
        assert {k.key_id: k.status for k in user.keys} == dict(
            zip(want.key_ids, want.statuses, strict=True)), user.name
        assert all(k.slot == 0 and k.created is not None for k in user.keys)
        assert [k.created for k in user.keys] == sorted(k.created or 0 for k in user.keys)

    assert inv.summary.users == len(SEED)
    assert inv.summary.root_access_keys_present == 0

    iam_calls = calls(stats)
    # Users and tags in one bulk call, one ListAccessKeys per user, and the credential
    # report for last-used dates (moto answers STARTED, then COMPLETE): every key matched,
    # so no GetAccessKeyLastUsed.
    assert iam_calls == {"GetAccountAuthorizationDetails": 1, "ListAccessKeys": len(SEED),
                         "GetAccountSummary": 1, "GenerateCredentialReport": 2,
                         "GetCredentialReport": 1}
    assert stats.counts().errors == {}
    assert stats.counts().retries == {}


def test_credential_report_strategy_exact(moto: str, seeded: dict[str, Seeded]) -> None:
    stats = ApiStats()
    inv = collect(moto, "credential-report", stats)  # moto says STARTED first: one 1 s pause

    assert inv.account_id == MOTO_ACCOUNT
    assert inv.strategy == "credential-report"
    assert inv.report_generated == 1422907322.0  # moto's fixed GeneratedTime, 2015-02-02T20:02:02Z
    assert [u.name for u in inv.users] == sorted(seeded)
    assert counts(inv) == expected_counts(seeded)
    for user in inv.users:
        want = seeded[user.name]
        assert user.path == want.path, user.name
        # moto fills the slots in creation order
        assert [(k.slot, k.status) for k in user.keys] == [
            (i + 1, s) for i, s in enumerate(want.statuses)], user.name
        assert all(k.key_id is None and k.created is not None for k in user.keys)
        assert all(k.last_used is None for k in user.keys)  # moto records no use

    assert inv.summary.users == len(SEED)
    assert inv.summary.root_access_keys_present == 0

    # no per-user calls: the same few calls whatever the number of users
    assert calls(stats) == {"GenerateCredentialReport": 2, "GetCredentialReport": 1,
                            "GetAccountSummary": 1}
    assert stats.counts().errors == {}


def test_strategies_agree(moto: str, seeded: dict[str, Seeded], iam: Any) -> None:
    iam.generate_credential_report()  # already COMPLETE: no back-off pause
    by_list = collect(moto, "list")
    by_report = collect(moto, "credential-report")
    assert counts(by_list) == counts(by_report) == expected_counts(seeded)
    assert {u.name: u.path for u in by_list.users} == {u.name: u.path for u in by_report.users}
    assert by_list.summary == by_report.summary
    for a, b in zip(by_list.users, by_report.users, strict=True):
        # the report's dates are whole seconds; the list's have sub-second precision
        assert [math.floor(k.created or 0) for k in a.keys] == sorted(
            k.created or 0 for k in b.keys), a.name


def test_moto_report_really_has_unquoted_commas(iam: Any, seeded: dict[str, Seeded]) -> None:
    """The repair path is exercised for real: moto's CSV is too wide on those rows."""
    iam.generate_credential_report()
    content = iam.get_credential_report()["Content"].decode()
    lines = content.splitlines()
    width = len(lines[0].split(","))
    wide = {ln.split(",arn:", 1)[0] for ln in lines[1:] if len(ln.split(",")) > width}
    assert wide == {n for n in seeded if "," in n}
    assert '"' not in content
    report = credential_report.parse(content)
    assert {u.name for u in report.users} == set(seeded)
    assert {u.name: u.path for u in report.users}["a,b,c"] == "/division/team/"


def test_user_deleted_between_the_listing_and_its_read(
        iam: Any, proxy: AwsProxy, seeded: dict[str, Seeded]) -> None:
    victim = "team-member"
    deleted: list[str] = []

    def delete_first(action: str, params: dict[str, list[str]]) -> None:
        """Just before the victim's ListAccessKeys reaches moto, the user is deleted."""
        if action == "ListAccessKeys" and params.get("UserName") == [victim] and not deleted:
            for meta in iam.list_access_keys(UserName=victim)["AccessKeyMetadata"]:
                iam.delete_access_key(UserName=victim, AccessKeyId=meta["AccessKeyId"])
            iam.delete_user(UserName=victim)
            deleted.append(victim)

    proxy.rule = delete_first
    stats = ApiStats()
    cfg = make_config(aws={"endpoint_url": proxy.url}, collection={"strategy": "list"})
    inv = one_pass_of(cfg, stats)

    assert deleted == [victim]
    want = expected_counts(seeded)
    del want[victim]
    assert counts(inv) == want
    assert victim not in {u.name for u in inv.users}
    assert inv.unread == ()  # gone, not unread
    assert inv.summary.users == len(SEED)  # the summary was read with the listing, before
    # the victim's call was really made, and moto really answered NoSuchEntity
    assert calls(stats)["ListAccessKeys"] == len(SEED)
    assert stats.counts().errors == {(MOTO_ACCOUNT, "iam", "ListAccessKeys", "NoSuchEntity"): 1}


def test_empty_account(moto: str, iam: Any) -> None:
    iam.generate_credential_report()
    for strategy in ("list", "credential-report"):
        stats = ApiStats()
        inv = collect(moto, strategy, stats)
        assert inv.users == ()
        assert inv.account_id == MOTO_ACCOUNT
        assert inv.summary.users == 0
        assert inv.summary.root_access_keys_present == 0
        assert "ListAccessKeys" not in calls(stats)
