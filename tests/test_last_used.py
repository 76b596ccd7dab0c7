"""Last-used dates for the list strategy: matched from the credential report by creation
time, GetAccessKeyLastUsed only for what the report cannot match, answers cached."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import Stubber

from exporter.aws import collect, last_used
from exporter.aws.session import ApiStats, Target
from exporter.inventory import AccessKey, AccountInventory
from exporter.poller import Poller
from tests.awsproxy import AwsProxy
from tests.helpers import add_user, free_port, make_config
from tests.passes import inventory, one_pass

T = 1_700_000_000.0
REPORT_CALLS = {"GenerateCredentialReport", "GetCredentialReport"}


def key(kid: str | None, created: float | None, last: float | None = None,
        slot: int = 0) -> AccessKey:
    return AccessKey(kid, "Active", created, slot=slot, last_used=last)


def kid(short: str) -> str:
    """A key id of the real length (the Stubber checks the 16-character minimum)."""
    return short.ljust(20, "0")


# ---------------------------------------------------------------------------------------
# Matching report slots to keys: collect.read_keys on a real Target whose IAM client
# answers from botocore's Stubber (any call not expected fails the test)


@pytest.fixture
def target(aws_env: dict[str, str]) -> Target:
    cfg = make_config(aws={"endpoint_url": f"http://127.0.0.1:{free_port()}"})
    assert cfg.collection.last_used == "credential-report"
    return Target(cfg, ApiStats(), account_id="123456789012")


def listed(stub: Stubber, name: str, *keys: tuple[str, float | None]) -> None:
    meta = []
    for key_id, created in keys:
        m: dict[str, Any] = {"UserName": name, "AccessKeyId": key_id, "Status": "Active"}
        if created is not None:
            m["CreateDate"] = datetime.fromtimestamp(created, UTC)
        meta.append(m)
    stub.add_response("list_access_keys", {"AccessKeyMetadata": meta, "IsTruncated": False},
                      {"UserName": name})


def asked(stub: Stubber, key_id: str, when: float | None) -> None:
    used: dict[str, Any] = {"ServiceName": "iam", "Region": "us-east-1"}
    if when is not None:
        used["LastUsedDate"] = datetime.fromtimestamp(when, UTC)
    stub.add_response("get_access_key_last_used",
                      {"UserName": "x", "AccessKeyLastUsed": used}, {"AccessKeyId": key_id})


def test_report_slots_match_keys_by_creation_time(target: Target) -> None:
    report = {"alice": (key(None, T + 86400, T + 90000, slot=1),  # order differs
                        key(None, T, None, slot=2)),
              "bob": (key(None, T + 5.4, T + 100, slot=1),)}  # within rounding
    with Stubber(target.iam()) as stub:
        listed(stub, "alice", (kid("AKIA1"), T), (kid("AKIA2"), T + 86400))
        listed(stub, "bob", (kid("AKIA3"), T + 5))
        alice = collect.read_keys(target, target._cfg, "alice", report)
        bob = collect.read_keys(target, target._cfg, "bob", report)
        stub.assert_no_pending_responses()  # and no GetAccessKeyLastUsed was asked
    assert alice.keys is not None and bob.keys is not None
    assert [k.last_used for k in alice.keys] == [None, T + 90000]  # AKIA1 never used
    assert bob.keys[0].last_used == T + 100
    assert [k.key_id for k in alice.keys] == [kid("AKIA1"), kid("AKIA2")]  # ids kept
    assert alice.dates_complete and bob.dates_complete


def test_keys_the_report_does_not_know_cost_one_call_each(target: Target) -> None:
    report = {"alice": (key(None, T, T + 60, slot=1),),
              "carol": (key(None, T, T, slot=1),)}
    with Stubber(target.iam()) as stub:
        listed(stub, "alice", (kid("AKIA1"), T), (kid("AKIA2"), T + 7200))  # AKIA2 is new
        asked(stub, kid("AKIA2"), T + 7300)
        listed(stub, "new-user", (kid("AKIA3"), T + 7300))  # created after the report
        asked(stub, kid("AKIA3"), None)
        listed(stub, "carol", (kid("AKIA4"), None))  # no creation time: cannot match
        asked(stub, kid("AKIA4"), T + 5)
        got = {n: collect.read_keys(target, target._cfg, n, report)
               for n in ("alice", "new-user", "carol")}
        stub.assert_no_pending_responses()
    assert [k.last_used for k in got["alice"].keys or ()] == [T + 60, T + 7300]
    assert [k.last_used for k in got["new-user"].keys or ()] == [None]
    assert [k.last_used for k in got["carol"].keys or ()] == [T + 5]
    assert all(g.dates_complete and g.gap is None for g in got.values())


def test_one_report_slot_matches_one_key_only() -> None:
    # Two keys created in the same second: each slot is used once.
    slots = [key(None, T, T + 1, slot=1)]
    assert last_used.take_slot(slots, T) == key(None, T, T + 1, slot=1)
    assert last_used.take_slot(slots, T) is None
    assert last_used.take_slot([key(None, T + 2, None, slot=1)], T) is None  # 2 s apart
    assert last_used.take_slot([key(None, T, None, slot=1)], None) is None


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
# Over real HTTP: the core against moto behind the counting proxy, one pass at a time


class Account:
    """The default credentials' account polled through the proxy, pass by pass (one
    worker: the listing, then the users, in order); each pass returns the inventory and
    the calls it cost."""

    def __init__(self, proxy: AwsProxy, **collection: Any) -> None:
        self.proxy = proxy
        self.cfg = make_config(aws={"endpoint_url": proxy.url, "max_attempts": 1},
                               collection={"concurrency": 1, **collection})
        self.target = Target(self.cfg, ApiStats())
        self.poller = Poller(self.cfg, [self.target])

    def run(self) -> tuple[AccountInventory, dict[str, int]]:
        before = self.proxy.counts()
        inv = inventory(one_pass(self.poller))
        after = self.proxy.counts()
        return inv, {k: after[k] - before.get(k, 0) for k in after
                     if after[k] != before.get(k, 0)}


@pytest.fixture
def account(proxy: AwsProxy) -> Iterator[Callable[..., Account]]:
    made: list[Account] = []

    def make(**collection: Any) -> Account:
        made.append(Account(proxy, **collection))
        return made[-1]

    yield make
    for a in made:
        a.poller.stop()


def seed(iam: Any) -> int:
    add_user(iam, "alice", ("Active", "Inactive"))
    add_user(iam, "bob", ("Active",))
    add_user(iam, "carol")
    return 3


def test_report_covers_every_key_without_per_key_calls(
        iam: Any, account: Callable[..., Account]) -> None:
    seed(iam)
    inv, calls = account().run()
    assert inv.last_used_complete is True and inv.warnings == ()
    assert "GetAccessKeyLastUsed" not in calls
    assert calls["ListAccessKeys"] == 3
    assert calls["GetCredentialReport"] == 1
    assert inv.report_generated is not None


def test_denied_report_falls_back_to_the_api_once_then_the_cache(
        iam: Any, proxy: AwsProxy, account: Callable[..., Account]) -> None:
    seed(iam)
    proxy.modes["GenerateCredentialReport"] = "deny"
    acct = account()
    inv, calls = acct.run()
    assert calls["GetAccessKeyLastUsed"] == 3  # one per key, on its first read only
    assert inv.last_used_complete is True
    assert [str(w) for w in inv.warnings] == ["GetCredentialReport: AccessDenied"]
    inv2, calls2 = acct.run()
    assert calls2["ListAccessKeys"] == 3  # every user read again...
    assert "GetAccessKeyLastUsed" not in calls2  # ...its dates answered from the cache
    assert inv2.last_used_complete is True
    # A key created since is the only one asked about.
    add_user(iam, "dave", ("Active",))
    _, calls3 = acct.run()
    assert calls3["GetAccessKeyLastUsed"] == 1


def test_everything_denied_marks_last_used_incomplete(
        iam: Any, proxy: AwsProxy, account: Callable[..., Account]) -> None:
    seed(iam)
    proxy.modes["GenerateCredentialReport"] = "deny"
    proxy.modes["GetAccessKeyLastUsed"] = "deny"
    inv, _ = account().run()
    # Those keys have no date: iam_exporter_last_used_complete and the warning say so.
    assert inv.last_used_complete is False
    assert [str(w) for w in inv.warnings] == ["GetCredentialReport: AccessDenied",
                                              "GetAccessKeyLastUsed: AccessDenied"]
    assert sum(u.count("Active") for u in inv.users) == 2  # the counts are still exact
    assert all(k.last_used is None for u in inv.users for k in u.keys)
    assert inv.unread == () and not any(u.stale for u in inv.users)


def test_one_denied_last_used_keeps_the_others_and_the_cache(
        iam: Any, proxy: AwsProxy, account: Callable[..., Account]) -> None:
    """One GetAccessKeyLastUsed denied leaves only that key without a date; what was
    read, in this pass or before (cached), is kept."""
    seed(iam)
    ids = {k["AccessKeyId"] for u in ("alice", "bob")
           for k in iam.list_access_keys(UserName=u)["AccessKeyMetadata"]}
    bob_key = iam.list_access_keys(UserName="bob")["AccessKeyMetadata"][0]["AccessKeyId"]
    acct = account(last_used="api")
    target = acct.target
    inv, calls = acct.run()
    assert calls["GetAccessKeyLastUsed"] == 3 and inv.last_used_complete is True
    add_user(iam, "dave", ("Active",))
    dave_key = iam.list_access_keys(UserName="dave")["AccessKeyMetadata"][0]["AccessKeyId"]
    target.last_used_cache.keep_only(ids - {bob_key})  # bob's date is to be read again
    proxy.rule = lambda action, params: ("deny" if action == "GetAccessKeyLastUsed"
                                         and params.get("AccessKeyId") == [bob_key]
                                         else None)
    inv2, calls2 = acct.run()
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


def test_api_mode_asks_each_key_once_then_the_cache(
        iam: Any, account: Callable[..., Account]) -> None:
    """api mode is live for a key's first read, then reuses the answer (up to
    last_used.CACHE_SECONDS): the second read of a user costs no GetAccessKeyLastUsed."""
    seed(iam)
    acct = account(last_used="api")
    for want in (3, 0):
        inv, calls = acct.run()
        assert calls["ListAccessKeys"] == 3
        assert calls.get("GetAccessKeyLastUsed", 0) == want
        assert not REPORT_CALLS & set(calls)
        assert inv.last_used_complete is True
        cache, now = acct.target.last_used_cache, time.time()
        assert all(cache.get(k.key_id or "", now) for u in inv.users for k in u.keys)


def test_off_makes_no_last_used_calls(iam: Any, account: Callable[..., Account]) -> None:
    seed(iam)
    inv, calls = account(last_used="off").run()
    assert inv.last_used_complete is None
    assert set(calls) == {"GetCallerIdentity", "GetAccountAuthorizationDetails",
                          "ListAccessKeys", "GetAccountSummary"}
