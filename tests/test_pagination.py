"""The list strategy's paging (botocore's Stubber) and per-user error handling (moto).

moto ignores MaxItems and never truncates, so every page boundary here is scripted: a real
boto3 IAM client whose responses come from a Stubber that also checks the exact request
parameters of each call (and fails on any call that was not expected). How the reads of
an account go (one ListAccessKeys per user, per-user failures, credential failures) is
shown over real HTTP: the core (Poller) against moto through the fault proxy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from exporter.aws import collect, list_strategy
from exporter.aws.errors import CollectionError
from exporter.aws.session import ApiStats, Target
from exporter.inventory import AccessKey, Gap, User
from exporter.store import AccountStore
from tests.awsproxy import AwsProxy
from tests.events_helpers import wait_until
from tests.helpers import MOTO_ACCOUNT, add_user, free_port, make_config
from tests.passes import inventory, one_pass, polling, state

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ACCOUNT = "123456789012"


def user(name: str, path: str = "/") -> dict[str, Any]:
    return {"Path": path, "UserName": name, "UserId": "AIDA" + name.upper().ljust(17, "X"),
            "Arn": f"arn:aws:iam::{ACCOUNT}:user{path}{name}", "CreateDate": T0}


def kid(short: str) -> str:
    """A key id of the real length (the Stubber checks the 16-character minimum)."""
    return short.ljust(20, "0")


def key(user_name: str, key_id: str, status: str = "Active", days: int = 0) -> dict[str, Any]:
    return {"UserName": user_name, "AccessKeyId": key_id, "Status": status,
            "CreateDate": T0 + timedelta(days=days)}


def _page(stub: Stubber, method: str, items_key: str, items: list[dict[str, Any]],
          expected: dict[str, Any], marker_in: str | None, marker_out: str | None,
          truncated: bool | None) -> None:
    if marker_in is not None:
        expected["Marker"] = marker_in
    resp: dict[str, Any] = {items_key: items,
                            "IsTruncated": marker_out is not None if truncated is None
                            else truncated}
    if marker_out is not None:
        resp["Marker"] = marker_out
    stub.add_response(method, resp, expected)


def users_page(stub: Stubber, users: list[dict[str, Any]], marker_in: str | None = None,
               marker_out: str | None = None, truncated: bool | None = None) -> None:
    _page(stub, "list_users", "Users", users, {"MaxItems": 1000}, marker_in, marker_out,
          truncated)


def keys_page(stub: Stubber, name: str, keys: list[dict[str, Any]],
              marker_in: str | None = None, marker_out: str | None = None,
              truncated: bool | None = None) -> None:
    _page(stub, "list_access_keys", "AccessKeyMetadata", keys, {"UserName": name},
          marker_in, marker_out, truncated)


def ts(days: int) -> float:
    return (T0 + timedelta(days=days)).timestamp()


# ---------------------------------------------------------------------------------------
# ListUsers


def test_list_users_follows_markers_and_sends_max_items_each_time(client: Any,
                                                                 stub: Stubber) -> None:
    users_page(stub, [user("carol"), user("alice", "/division/team/")], marker_out="m1")
    users_page(stub, [user("bob")], marker_in="m1", marker_out="m2")
    users_page(stub, [], marker_in="m2", marker_out="m3")  # an empty page mid-way
    users_page(stub, [user("dave", "/ops/")], marker_in="m3")
    got = list_strategy.list_users(client)
    stub.assert_no_pending_responses()
    assert [(u.name, u.path, u.tags) for u in got] == [
        ("carol", "/", None), ("alice", "/division/team/", None), ("bob", "/", None),
        ("dave", "/ops/", None)]


def test_list_users_single_page_makes_one_call(client: Any, stub: Stubber) -> None:
    users_page(stub, [user("alice")], truncated=False)
    assert list_strategy.list_users(client) == [
        list_strategy.UserRef("alice", "/")]
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("marker", [None, ""])
def test_list_users_truncated_without_marker_is_invalid_pagination(
        client: Any, stub: Stubber, marker: str | None) -> None:
    resp: dict[str, Any] = {"Users": [user("alice")], "IsTruncated": True}
    if marker is not None:
        resp["Marker"] = marker
    stub.add_response("list_users", resp, {"MaxItems": 1000})
    with pytest.raises(CollectionError) as info:
        list_strategy.list_users(client)
    assert info.value.code == "InvalidPagination"
    assert "Marker" in str(info.value)
    stub.assert_no_pending_responses()


def test_list_users_denied_raises_client_error(client: Any, stub: Stubber) -> None:
    stub.add_client_error("list_users", service_error_code="AccessDenied",
                          http_status_code=403, expected_params={"MaxItems": 1000})
    with pytest.raises(ClientError) as info:
        list_strategy.list_users(client)
    assert info.value.response["Error"]["Code"] == "AccessDenied"


# ---------------------------------------------------------------------------------------
# ListAccessKeys


def test_list_keys_pages_always_pass_user_name_and_sort_by_creation(client: Any,
                                                                   stub: Stubber) -> None:
    keys_page(stub, "bob", [key("bob", kid("AKIAB3"), "Inactive", days=30)], marker_out="p1")
    keys_page(stub, "bob", [key("bob", kid("AKIAB1"), days=1)], marker_in="p1", marker_out="p2")
    keys_page(stub, "bob", [key("bob", kid("AKIAB2"), days=2)], marker_in="p2")
    got = list_strategy.list_keys(client, "bob")
    stub.assert_no_pending_responses()
    assert got == (
        AccessKey(key_id=kid("AKIAB1"), status="Active", created=ts(1)),
        AccessKey(key_id=kid("AKIAB2"), status="Active", created=ts(2)),
        AccessKey(key_id=kid("AKIAB3"), status="Inactive", created=ts(30)),
    )


def test_list_keys_no_keys_is_empty_tuple_not_none(client: Any, stub: Stubber) -> None:
    keys_page(stub, "alice", [])
    assert list_strategy.list_keys(client, "alice") == ()


def test_list_keys_no_such_entity_means_deleted(client: Any, stub: Stubber) -> None:
    stub.add_client_error("list_access_keys", service_error_code="NoSuchEntity",
                          http_status_code=404, expected_params={"UserName": "gone"})
    assert list_strategy.list_keys(client, "gone") is None


def test_list_keys_no_such_entity_on_second_page_means_deleted(client: Any,
                                                               stub: Stubber) -> None:
    keys_page(stub, "gone", [key("gone", kid("AKIAG1"))], marker_out="p1")
    stub.add_client_error("list_access_keys", service_error_code="NoSuchEntity",
                          http_status_code=404,
                          expected_params={"UserName": "gone", "Marker": "p1"})
    assert list_strategy.list_keys(client, "gone") is None
    stub.assert_no_pending_responses()


def test_list_keys_truncated_without_marker_is_invalid_pagination(client: Any,
                                                                  stub: Stubber) -> None:
    keys_page(stub, "bob", [key("bob", kid("AKIAB1"))], truncated=True)
    with pytest.raises(CollectionError) as info:
        list_strategy.list_keys(client, "bob")
    assert info.value.code == "InvalidPagination"


def test_list_keys_other_status_is_counted_under_its_status(client: Any,
                                                            stub: Stubber) -> None:
    """botocore's model lists Expired: such a key is counted under that status (contract
    in DESIGN.md), never an error."""
    keys_page(stub, "bob", [key("bob", kid("AKIAB1"), status="Expired"),
                            key("bob", kid("AKIAB2"), days=1)])
    keys = list_strategy.list_keys(client, "bob")
    assert keys is not None
    assert [k.status for k in keys] == ["Expired", "Active"]
    bob = User("bob", keys=keys)
    assert (bob.count("Active"), bob.count("Inactive"), bob.count("Expired")) == (1, 0, 1)


# ---------------------------------------------------------------------------------------
# GetAccountAuthorizationDetails: users with their tags, a page at a time


def gaad_page(stub: Stubber, users: list[dict[str, Any]], marker_in: str | None = None,
              marker_out: str | None = None) -> None:
    _page(stub, "get_account_authorization_details", "UserDetailList", users,
          {"Filter": ["User"], "MaxItems": 1000}, marker_in, marker_out, None)


def test_users_with_tags_follow_markers(client: Any, stub: Stubber) -> None:
    alice = {**user("alice"), "Tags": [{"Key": "Team", "Value": "payments"},
                                       {"Key": "iam-key-exporter/exempt", "Value": "true"}]}
    gaad_page(stub, [alice], marker_out="m1")
    gaad_page(stub, [user("bob", "/ops/")], marker_in="m1")
    got = list_strategy.list_users_with_tags(client)
    stub.assert_no_pending_responses()
    assert got == [
        list_strategy.UserRef("alice", "/", {"Team": "payments",
                                             "iam-key-exporter/exempt": "true"}),
        list_strategy.UserRef("bob", "/ops/", {})]


def test_users_with_tags_keep_only_the_wanted_tags(client: Any, stub: Stubber) -> None:
    alice = {**user("alice"), "Tags": [{"Key": "Team", "Value": "payments"},
                                       {"Key": "Secret", "Value": "x"}]}
    gaad_page(stub, [alice])
    assert list_strategy.list_users_with_tags(client, {"Team"}) == [
        list_strategy.UserRef("alice", "/", {"Team": "payments"})]


# ---------------------------------------------------------------------------------------
# An account's listing and its users' reads (collect.list_account / read_keys) on a real
# Target whose IAM client answers from the Stubber (nothing is sent anywhere)


@pytest.fixture
def target(aws_env: dict[str, str]) -> Target:
    cfg = make_config(aws={"endpoint_url": f"http://127.0.0.1:{free_port()}"},
                      collection={"last_used": "off"})
    return Target(cfg, ApiStats(), account_id=ACCOUNT)


def summary(stub: Stubber, users: int) -> None:
    stub.add_response("get_account_summary",
                      {"SummaryMap": {"Users": users, "AccountAccessKeysPresent": 0}}, {})


def test_listing_pages_and_reads_skip_the_deleted_and_sort(target: Target) -> None:
    cfg = target._cfg
    with Stubber(target.iam()) as stub:
        gaad_page(stub, [user("zed"), user("Mallory", "/division/team/"), user("alice")],
                  marker_out="u1")
        gaad_page(stub, [user("bob", "/ops/"), user("gone")], marker_in="u1")
        summary(stub, 5)
        listing = collect.list_account(target, cfg, "list")
        stub.assert_no_pending_responses()
        assert [(i.name, i.path) for i in listing.users] == [
            ("zed", "/"), ("Mallory", "/division/team/"), ("alice", "/"), ("bob", "/ops/"),
            ("gone", "/")]
        assert listing.gaps == [] and listing.extras.summary.users == 5
        # per user, in listing order (the queue's order for users never read)
        keys_page(stub, "zed", [])
        keys_page(stub, "Mallory", [key("Mallory", kid("AKIAM2"), "Inactive", days=9),
                                    key("Mallory", kid("AKIAM1"), days=3)])
        keys_page(stub, "alice", [key("alice", kid("AKIAA1"), days=5)])
        keys_page(stub, "bob", [key("bob", kid("AKIAB2"), days=7)], marker_out="k1")
        keys_page(stub, "bob", [key("bob", kid("AKIAB1"), days=6)], marker_in="k1")
        stub.add_client_error("list_access_keys", service_error_code="NoSuchEntity",
                              http_status_code=404, expected_params={"UserName": "gone"})
        reads = {i.name: collect.read_keys(target, cfg, i.name, listing.report)
                 for i in listing.users}
        stub.assert_no_pending_responses()
    assert reads["gone"].keys is None  # deleted since the listing: gone, not unread
    store = AccountStore(ACCOUNT, "list", dates=False)
    store.listed_users(listing.users, started=0.0)
    for name, got in reads.items():
        store.observe(name, got.keys, got.at)
    inv = store.inventory()
    assert inv.unread == ()
    users = inv.users
    assert [u.name for u in users] == ["Mallory", "alice", "bob", "zed"]
    by_name = {u.name: u for u in users}
    assert by_name["Mallory"].path == "/division/team/"
    assert by_name["bob"].path == "/ops/"
    assert [k.key_id for k in by_name["Mallory"].keys] == [kid("AKIAM1"), kid("AKIAM2")]
    assert (by_name["Mallory"].count("Active"), by_name["Mallory"].count("Inactive")) == (1, 1)
    assert [k.key_id for k in by_name["bob"].keys] == [kid("AKIAB1"), kid("AKIAB2")]
    assert [k.created for k in by_name["bob"].keys] == [ts(6), ts(7)]
    assert by_name["bob"].count("Active") == 2
    assert by_name["alice"].keys == (AccessKey(kid("AKIAA1"), "Active", ts(5)),)
    assert by_name["zed"].keys == ()


def test_listing_without_the_bulk_permission_pages_list_users(target: Target) -> None:
    """GetAccountAuthorizationDetails denied: ListUsers (paged) instead, tags unknown, and
    a gap that says so."""
    with Stubber(target.iam()) as stub:
        stub.add_client_error("get_account_authorization_details",
                              service_error_code="AccessDenied", http_status_code=403,
                              expected_params={"Filter": ["User"], "MaxItems": 1000})
        users_page(stub, [user("alice")], marker_out="m1")
        users_page(stub, [user("bob", "/ops/")], marker_in="m1")
        summary(stub, 2)
        listing = collect.list_account(target, target._cfg, "list")
        stub.assert_no_pending_responses()
    assert [(i.name, i.path, i.tags_known) for i in listing.users] == [
        ("alice", "/", False), ("bob", "/ops/", False)]
    assert listing.gaps == [Gap("GetAccountAuthorizationDetails", "AccessDenied")]


def test_listing_of_an_empty_account(target: Target) -> None:
    with Stubber(target.iam()) as stub:
        gaad_page(stub, [])
        summary(stub, 0)
        listing = collect.list_account(target, target._cfg, "list")
        stub.assert_no_pending_responses()
    assert listing.users == [] and listing.gaps == []


def test_read_keys_invalid_pagination_is_the_users_error(target: Target) -> None:
    with Stubber(target.iam()) as stub:
        keys_page(stub, "alice", [key("alice", kid("AKIAA1"))], truncated=True)
        with pytest.raises(CollectionError) as info:
            collect.read_keys(target, target._cfg, "alice", None)
    assert info.value.code == "InvalidPagination"


# ---------------------------------------------------------------------------------------
# The reads of a whole account over real HTTP: the core against moto, through the proxy


A = MOTO_ACCOUNT


def listed_keys(proxy: AwsProxy) -> list[str]:
    """Records the UserName of every ListAccessKeys the proxy sees (and lets it pass)."""
    seen: list[str] = []

    def rule(action: str, params: dict[str, list[str]]) -> None:
        if action == "ListAccessKeys":
            seen.extend(params.get("UserName", ["?"]))

    proxy.rule = rule
    return seen


def counts(inv: Any) -> dict[str, tuple[int, int]]:
    return {u.name: (u.count("Active"), u.count("Inactive")) for u in inv.users}


def test_every_user_is_read_once_concurrently_and_exactly(iam: Any, proxy: AwsProxy) -> None:
    want = {}
    for i in range(30):
        statuses = ("Active", "Inactive", "Active")[: i % 3]
        add_user(iam, f"user-{i:02d}", statuses)
        want[f"user-{i:02d}"] = (statuses.count("Active"), statuses.count("Inactive"))
    seen = listed_keys(proxy)
    cfg = make_config(aws={"endpoint_url": proxy.url},
                      collection={"last_used": "off", "concurrency": 4})
    with polling(cfg, [Target(cfg, ApiStats())]) as poller:
        snap = one_pass(poller)
    inv = inventory(snap)
    assert counts(inv) == want
    assert sorted(seen) == sorted(want)  # one ListAccessKeys per user, no more
    assert proxy.counts()["GetAccountAuthorizationDetails"] == 1
    assert "ListUsers" not in proxy.counts()
    assert state(snap).success and inv.unread == ()


def test_access_denied_on_one_users_keys_exports_the_others(iam: Any,
                                                             proxy: AwsProxy) -> None:
    """A permission boundary or SCP protecting one user: that user is reported unread
    (tried again an interval later: denied is not transient); the others are exported
    and the account succeeds."""
    add_user(iam, "alice", ("Active",))
    add_user(iam, "bob", ("Active",), path="/ops/")
    seen = listed_keys(proxy)
    recorder = proxy.rule
    assert recorder is not None
    proxy.rule = lambda a, p: ("deny" if a == "ListAccessKeys" and p.get("UserName") == ["bob"]
                               else recorder(a, p))
    cfg = make_config(aws={"endpoint_url": proxy.url}, collection={"last_used": "off"})
    with polling(cfg, [Target(cfg, ApiStats())]) as poller:
        snap = one_pass(poller)
    inv = inventory(snap)
    assert counts(inv) == {"alice": (1, 0)}
    assert inv.unread == (("bob", "/ops/", "AccessDenied"),)
    assert state(snap).success
    assert sorted(seen) == ["alice"] and proxy.faults["ListAccessKeys"] == 1


def test_a_failed_read_keeps_the_last_keys_and_the_next_pass_reads_the_user(
        iam: Any, proxy: AwsProxy) -> None:
    add_user(iam, "alice", ("Active",))
    add_user(iam, "bob", ("Active", "Active"))
    # One worker: each pass reads the listing, then the users, in that order.
    cfg = make_config(aws={"endpoint_url": proxy.url, "max_attempts": 1},
                      collection={"last_used": "off", "concurrency": 1})
    with polling(cfg, [Target(cfg, ApiStats())]) as poller:
        assert counts(inventory(one_pass(poller))) == {"alice": (1, 0), "bob": (2, 0)}
        proxy.rule = lambda a, p: ("throttle" if a == "ListAccessKeys"
                                   and p.get("UserName") == ["bob"] else None)
        proxy.fault_budget = 1
        snap = one_pass(poller)
        inv = inventory(snap)
        assert counts(inv) == {"alice": (1, 0), "bob": (2, 0)}  # bob's last known keys
        assert {u.name: u.stale for u in inv.users} == {"alice": "", "bob": "Throttling"}
        assert state(snap).success
        snap = one_pass(poller)
    assert {u.name: u.stale for u in inventory(snap).users} == {"alice": "", "bob": ""}
    assert proxy.faults["ListAccessKeys"] == 1


@pytest.mark.parametrize(("fault", "code"), [("expired", "ExpiredToken"),
                                             ("invalid_token", "InvalidClientTokenId")])
def test_credential_errors_on_one_users_keys_fail_the_account(
        iam: Any, proxy: AwsProxy, fault: str, code: str) -> None:
    """Credentials are the account's, not one user's: one such error fails it (its data
    is kept, the user is not marked unread)."""
    for i in range(6):
        add_user(iam, f"u{i}", ("Active",))
    cfg = make_config(aws={"endpoint_url": proxy.url, "max_attempts": 1},
                      collection={"last_used": "off", "concurrency": 1})
    with polling(cfg, [Target(cfg, ApiStats())]) as poller:
        proxy.rule = lambda a, p: (fault if a == "ListAccessKeys"
                                   and p.get("UserName") == ["u3"] else None)
        poller.start()
        snap = wait_until(lambda: (s := poller.publish()).accounts
                          and state(s).error == code and s, what=f"{code} failing the account")
    st = state(snap)
    assert not st.success and snap.error_counts == {(A, code): 1}
    assert st.inventory is not None and not any(u.stale for u in st.inventory.users)
    assert "u3" not in {u.name for u in st.inventory.users}
