"""Last-used dates for the list strategy: matched from the credential report by creation
time, GetAccessKeyLastUsed only for what the report cannot match, answers cached."""

from __future__ import annotations

import time
from typing import Any

from exporter.aws import last_used
from exporter.aws.collect import collect_account
from exporter.aws.errors import Deadline
from exporter.aws.session import ApiStats, Target
from exporter.inventory import AccessKey, User
from tests.awsproxy import AwsProxy
from tests.helpers import add_user, make_config

T = 1_700_000_000.0
REPORT_CALLS = {"GenerateCredentialReport", "GetCredentialReport"}


def key(kid: str, created: float, last: float | None = None, slot: int = 0) -> AccessKey:
    return AccessKey(kid, "Active", created, slot=slot, last_used=last)


# ---------------------------------------------------------------------------------------
# Matching report slots to keys


def test_report_slots_match_keys_by_creation_time() -> None:
    users = (User("alice", keys=(key("AKIA1", T), key("AKIA2", T + 86400))),
             User("bob", keys=(key("AKIA3", T + 5),)))
    report = (User("alice", keys=(key(None, T + 86400, T + 90000, slot=1),  # order differs
                                  key(None, T, None, slot=2))),
              User("bob", keys=(key(None, T + 5.4, T + 100, slot=1),)))  # within rounding
    got, unmatched = last_used.match_report(users, report)
    assert unmatched == []
    assert [k.last_used for k in got[0].keys] == [None, T + 90000]  # AKIA1 never used
    assert got[1].keys[0].last_used == T + 100
    assert [k.key_id for k in got[0].keys] == ["AKIA1", "AKIA2"]  # ids kept


def test_keys_the_report_does_not_know_are_unmatched() -> None:
    users = (User("alice", keys=(key("AKIA1", T), key("AKIA2", T + 7200))),  # AKIA2 is new
             User("new-user", keys=(key("AKIA3", T + 7300),)),  # created after the report
             User("carol", keys=(key("AKIA4", None),)))
    report = (User("alice", keys=(key(None, T, T + 60, slot=1),)),
              User("carol", keys=(key(None, T, T, slot=1),)))
    got, unmatched = last_used.match_report(users, report)
    assert unmatched == [(0, 1), (1, 0), (2, 0)]
    assert got[0].keys[0].last_used == T + 60
    assert got[0].keys[1].last_used is None


def test_one_report_slot_matches_one_key_only() -> None:
    # Two keys created in the same second: each slot is used once.
    users = (User("alice", keys=(key("AKIA1", T), key("AKIA2", T))),)
    report = (User("alice", keys=(key(None, T, T + 1, slot=1),)),)
    _, unmatched = last_used.match_report(users, report)
    assert unmatched == [(0, 1)]


def test_cache_expires_and_forgets_deleted_keys() -> None:
    cache = last_used.LastUsedCache(ttl=100)
    cache.put("AKIA1", T, now=0)
    cache.put("AKIA2", None, now=0)
    assert cache.get("AKIA1", now=10) is not None
    assert cache.get("AKIA1", now=101) is None  # past the TTL (less jitter) at the latest
    cache.keep_only({"AKIA2"})
    assert cache.get("AKIA1", now=10) is None
    hit = cache.get("AKIA2", now=10)
    assert hit is not None and hit.last_used is None


# ---------------------------------------------------------------------------------------
# Over real HTTP (moto behind the counting proxy)


def run(proxy: AwsProxy, target: Target | None = None, **collection: Any) -> tuple[Any, Any]:
    cfg = make_config(aws={"endpoint_url": proxy.url, "max_attempts": 1},
                      collection=collection)
    target = target or Target(cfg, ApiStats())
    before = proxy.counts()
    inv = collect_account(target, cfg, Deadline(60))
    after = proxy.counts()
    return inv, {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def seed(iam: Any) -> int:
    add_user(iam, "alice", ("Active", "Inactive"))
    add_user(iam, "bob", ("Active",))
    add_user(iam, "carol")
    return 3


def test_report_covers_every_key_without_per_key_calls(iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    inv, calls = run(proxy)
    assert inv.last_used_complete is True and inv.warnings == ()
    assert "GetAccessKeyLastUsed" not in calls
    assert calls["ListAccessKeys"] == 3
    assert calls["GetCredentialReport"] == 1
    assert inv.report_generated is not None


def test_denied_report_falls_back_to_the_api_once_then_the_cache(
        iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    proxy.modes["GenerateCredentialReport"] = "deny"
    cfg = make_config(aws={"endpoint_url": proxy.url, "max_attempts": 1})
    target = Target(cfg, ApiStats())
    inv, calls = run(proxy, target)
    assert calls["GetAccessKeyLastUsed"] == 3  # one per key, this cycle only
    assert inv.last_used_complete is True
    assert [str(w) for w in inv.warnings] == ["GetCredentialReport: AccessDenied"]
    inv2, calls2 = run(proxy, target)
    assert "GetAccessKeyLastUsed" not in calls2  # answered from the cache
    assert inv2.last_used_complete is True
    # A key created since is the only one asked about.
    add_user(iam, "dave", ("Active",))
    _, calls3 = run(proxy, target)
    assert calls3["GetAccessKeyLastUsed"] == 1


def test_everything_denied_marks_last_used_incomplete(iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    proxy.modes["GenerateCredentialReport"] = "deny"
    proxy.modes["GetAccessKeyLastUsed"] = "deny"
    inv, _ = run(proxy)
    # Those keys have no date: iam_exporter_last_used_complete and the warning say so.
    assert inv.last_used_complete is False
    assert [str(w) for w in inv.warnings] == ["GetCredentialReport: AccessDenied",
                                              "GetAccessKeyLastUsed: AccessDenied"]
    assert sum(u.count("Active") for u in inv.users) == 2  # the counts are still exact
    assert all(k.last_used is None for u in inv.users for k in u.keys)


def test_one_denied_last_used_keeps_the_others_and_the_cache(iam: Any,
                                                             proxy: AwsProxy) -> None:
    """One GetAccessKeyLastUsed denied leaves only that key without a date; what was
    read, this cycle or before (cached), is kept."""
    seed(iam)
    ids = {k["AccessKeyId"] for u in ("alice", "bob")
           for k in iam.list_access_keys(UserName=u)["AccessKeyMetadata"]}
    bob_key = iam.list_access_keys(UserName="bob")["AccessKeyMetadata"][0]["AccessKeyId"]
    cfg = make_config(aws={"endpoint_url": proxy.url}, collection={"last_used": "api"})
    target = Target(cfg, ApiStats())
    inv, calls = run(proxy, target, last_used="api")
    assert calls["GetAccessKeyLastUsed"] == 3 and inv.last_used_complete is True
    add_user(iam, "dave", ("Active",))
    dave_key = iam.list_access_keys(UserName="dave")["AccessKeyMetadata"][0]["AccessKeyId"]
    target.last_used_cache.keep_only(ids - {bob_key})  # bob's date is to be read again
    proxy.rule = lambda action, params: ("deny" if action == "GetAccessKeyLastUsed"
                                         and params.get("AccessKeyId") == [bob_key]
                                         else None)
    inv2, calls2 = run(proxy, target, last_used="api")
    assert calls2["GetAccessKeyLastUsed"] == 2  # bob's (denied) and dave's (new)
    assert inv2.last_used_complete is False
    assert [str(w) for w in inv2.warnings] == ["GetAccessKeyLastUsed: AccessDenied"]
    counts = {u.name: (u.count("Active"), u.count("Inactive")) for u in inv2.users}
    assert counts == {"alice": (1, 1), "bob": (1, 0), "carol": (0, 0), "dave": (1, 0)}
    assert {k.key_id for u in inv2.users for k in u.keys} == ids | {dave_key}
    now = time.time()
    assert target.last_used_cache.get(bob_key, now) is None  # a failure is not cached
    assert target.last_used_cache.get(dave_key, now) is not None  # read and kept
    assert all(target.last_used_cache.get(k, now) is not None for k in ids - {bob_key})


def test_api_mode_asks_each_key_once_then_the_cache(iam: Any, proxy: AwsProxy) -> None:
    """api mode is live for a key's first cycle, then reuses the answer (up to
    last_used.CACHE_SECONDS), like the report's fallback."""
    seed(iam)
    cfg = make_config(aws={"endpoint_url": proxy.url}, collection={"last_used": "api"})
    target = Target(cfg, ApiStats())
    for want in (3, 0):
        inv, calls = run(proxy, target, last_used="api")
        assert calls.get("GetAccessKeyLastUsed", 0) == want
        assert not REPORT_CALLS & set(calls)
        assert inv.last_used_complete is True


def test_off_makes_no_last_used_calls(iam: Any, proxy: AwsProxy) -> None:
    seed(iam)
    inv, calls = run(proxy, last_used="off")
    assert inv.last_used_complete is None
    assert set(calls) == {"GetCallerIdentity", "GetAccountAuthorizationDetails",
                          "ListAccessKeys", "GetAccountSummary"}
