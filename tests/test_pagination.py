"""The list strategy's paging and per-user error handling, on botocore's Stubber.

moto ignores MaxItems and never truncates, so every page boundary here is scripted: a real
boto3 IAM client whose responses come from a Stubber that also checks the exact request
parameters of each call (and fails on any call that was not expected).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from exporter.aws import list_strategy
from exporter.aws.errors import CollectionError, Deadline, DeadlineExceeded
from exporter.aws.list_strategy import KeysResult
from exporter.inventory import AccessKey, User

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
    got = list_strategy.list_users(client, Deadline(60))
    stub.assert_no_pending_responses()
    assert [(u.name, u.path, u.tags) for u in got] == [
        ("carol", "/", None), ("alice", "/division/team/", None), ("bob", "/", None),
        ("dave", "/ops/", None)]


def test_list_users_single_page_makes_one_call(client: Any, stub: Stubber) -> None:
    users_page(stub, [user("alice")], truncated=False)
    assert list_strategy.list_users(client, Deadline(60)) == [
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
        list_strategy.list_users(client, Deadline(60))
    assert info.value.code == "InvalidPagination"
    assert "Marker" in str(info.value)
    stub.assert_no_pending_responses()


def test_list_users_denied_raises_client_error(client: Any, stub: Stubber) -> None:
    stub.add_client_error("list_users", service_error_code="AccessDenied",
                          http_status_code=403, expected_params={"MaxItems": 1000})
    with pytest.raises(ClientError) as info:
        list_strategy.list_users(client, Deadline(60))
    assert info.value.response["Error"]["Code"] == "AccessDenied"


def test_list_users_checks_deadline_between_pages(client: Any, stub: Stubber) -> None:
    deadline = Deadline(60)

    def first_page_took_long(**_: Any) -> None:
        deadline.at = time.monotonic() - 1  # the deadline passes during the first page

    client.meta.events.register("after-call.iam.ListUsers", first_page_took_long)
    users_page(stub, [user("alice")], marker_out="m1")
    with pytest.raises(DeadlineExceeded):
        list_strategy.list_users(client, deadline)
    stub.assert_no_pending_responses()  # the second page was never asked for


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
# collect_users: the whole strategy (concurrency 1 keeps the Stubber's queue in order)


def test_collect_users_pages_skips_deleted_and_sorts(client: Any, stub: Stubber) -> None:
    users_page(stub, [user("zed"), user("Mallory", "/division/team/"), user("alice")],
               marker_out="u1")
    users_page(stub, [user("bob", "/ops/"), user("gone")], marker_in="u1")
    # per user, in ListUsers order
    keys_page(stub, "zed", [])
    keys_page(stub, "Mallory", [key("Mallory", kid("AKIAM2"), "Inactive", days=9),
                                key("Mallory", kid("AKIAM1"), days=3)])
    keys_page(stub, "alice", [key("alice", kid("AKIAA1"), days=5)])
    keys_page(stub, "bob", [key("bob", kid("AKIAB2"), days=7)], marker_out="k1")
    keys_page(stub, "bob", [key("bob", kid("AKIAB1"), days=6)], marker_in="k1")
    stub.add_client_error("list_access_keys", service_error_code="NoSuchEntity",
                          http_status_code=404, expected_params={"UserName": "gone"})

    result = list_strategy.collect_users(client, 1, Deadline(60))
    stub.assert_no_pending_responses()
    assert result.unread == ()  # a user deleted since ListUsers is left out, not unread
    users = result.users

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


def test_collect_users_access_denied_on_one_users_keys_exports_the_others(
        client: Any, stub: Stubber) -> None:
    """A permission boundary or SCP protecting one user: that user is tried once more
    after the others, then reported unread; the others are exported."""
    users_page(stub, [user("alice"), user("bob", "/ops/")])
    keys_page(stub, "alice", [key("alice", kid("AKIAA1"))])
    for _ in range(2):  # the first try, then once more after the others
        stub.add_client_error("list_access_keys", service_error_code="AccessDenied",
                              http_status_code=403, expected_params={"UserName": "bob"})
    result = list_strategy.collect_users(client, 1, Deadline(60))
    stub.assert_no_pending_responses()
    assert [u.name for u in result.users] == ["alice"]
    assert result.unread == (("bob", "/ops/", "AccessDenied"),)


def test_collect_users_access_denied_for_every_user_fails_the_account(
        client: Any, stub: Stubber) -> None:
    users_page(stub, [user("alice"), user("bob")])
    for name in ("alice", "bob", "alice", "bob"):
        stub.add_client_error("list_access_keys", service_error_code="AccessDenied",
                              http_status_code=403, expected_params={"UserName": name})
    with pytest.raises(ClientError) as info:
        list_strategy.collect_users(client, 1, Deadline(60))
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    stub.assert_no_pending_responses()


def test_collect_users_invalid_key_pagination_fails_the_account(client: Any,
                                                                stub: Stubber) -> None:
    users_page(stub, [user("alice")])
    for _ in range(2):  # the first try, then once more
        keys_page(stub, "alice", [key("alice", kid("AKIAA1"))], truncated=True)
    with pytest.raises(CollectionError) as info:
        list_strategy.collect_users(client, 1, Deadline(60))
    assert info.value.code == "InvalidPagination"


@pytest.mark.parametrize("seconds", [0, -5])
def test_collect_users_passed_deadline_makes_no_call(client: Any, stub: Stubber,
                                                     seconds: float) -> None:
    # Nothing is stubbed: any AWS call would raise botocore's UnStubbedResponseError.
    with pytest.raises(DeadlineExceeded):
        list_strategy.collect_users(client, 4, Deadline(seconds))
    with pytest.raises(DeadlineExceeded):
        list_strategy.list_users(client, Deadline(seconds))


def test_collect_users_empty_account(client: Any, stub: Stubber) -> None:
    users_page(stub, [])
    assert list_strategy.collect_users(client, 4, Deadline(60)) == KeysResult((), ())
    stub.assert_no_pending_responses()


# ---------------------------------------------------------------------------------------
# collect_users with real concurrency: a thread-safe fake (the Stubber's queue is ordered)


class FakeIam:
    """Answers ListUsers in one page and ListAccessKeys per user, recording every call."""

    def __init__(self, keys: dict[str, list[dict[str, Any]]],
                 fail: dict[str, str] | None = None,
                 times: dict[str, int] | None = None) -> None:
        self.keys = keys
        self.fail = fail or {}
        # How many times each failing user fails (absent: always).
        self.times = dict(times or {})
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def list_users(self, **kwargs: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("ListUsers", kwargs))
        return {"Users": [user(n) for n in self.keys], "IsTruncated": False}

    def list_access_keys(self, **kwargs: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("ListAccessKeys", kwargs))
            self.threads.add(threading.current_thread().name)
        name = kwargs["UserName"]
        with self.lock:
            failing = name in self.fail and self.times.get(name, 1) > 0
            if failing and name in self.times:
                self.times[name] -= 1
        if failing:
            code = self.fail[name]
            raise ClientError({"Error": {"Code": code, "Message": code}}, "ListAccessKeys")
        return {"AccessKeyMetadata": self.keys[name], "IsTruncated": False}


def test_collect_users_concurrent_exact_and_one_call_per_user() -> None:
    names = [f"user-{i:03d}" for i in range(199, -1, -1)]  # ListUsers order: descending
    # 0, 1 or 2 keys each, returned newest first, some Inactive
    keys = {n: [key(n, kid(f"AKIA{i:03d}B"), "Inactive" if i % 2 else "Active", days=10 + i % 5),
                key(n, kid(f"AKIA{i:03d}A"), days=i % 5)][: i % 3]
            for i, n in enumerate(names)}
    keys["gone"] = []
    fake = FakeIam(keys, fail={"gone": "NoSuchEntity"})
    result = list_strategy.collect_users(fake, 8, Deadline(60))  # type: ignore[arg-type]
    assert result.unread == ()
    users = result.users
    assert [u.name for u in users] == sorted(names)
    calls = [c for c in fake.calls if c[0] == "ListAccessKeys"]
    assert sorted(c[1]["UserName"] for c in calls) == sorted([*names, "gone"])
    assert all(set(c[1]) == {"UserName"} for c in calls)
    assert fake.calls.count(("ListUsers", {"MaxItems": 1000})) == 1
    for u in users:
        want = sorted(keys[u.name], key=lambda k: k["CreateDate"])
        assert [k.key_id for k in u.keys] == [k["AccessKeyId"] for k in want]
        assert [k.status for k in u.keys] == [k["Status"] for k in want]
    assert all(t.startswith("iam-keys") for t in fake.threads)


def test_collect_users_concurrent_one_failure_is_unread_the_rest_exact() -> None:
    keys: dict[str, list[dict[str, Any]]] = {
        f"u{i:02d}": [key(f"u{i:02d}", kid(f"AKIA{i:02d}"))] for i in range(50)}
    fake = FakeIam(keys, fail={"u07": "AccessDenied"})
    result = list_strategy.collect_users(fake, 4, Deadline(60))  # type: ignore[arg-type]
    assert [u.name for u in result.users] == sorted(n for n in keys if n != "u07")
    assert all(u.count("Active") == 1 for u in result.users)
    assert result.unread == (("u07", "/", "AccessDenied"),)
    tries = [c for c in fake.calls if c == ("ListAccessKeys", {"UserName": "u07"})]
    assert len(tries) == 2  # once with the others, once more after them


def test_collect_users_throttled_user_is_read_on_the_second_try() -> None:
    keys: dict[str, list[dict[str, Any]]] = {
        f"u{i}": [key(f"u{i}", kid(f"AKIA{i}"))] for i in range(10)}
    fake = FakeIam(keys, fail={"u3": "Throttling"}, times={"u3": 1})
    result = list_strategy.collect_users(fake, 4, Deadline(60))  # type: ignore[arg-type]
    assert [u.name for u in result.users] == sorted(keys)
    assert result.unread == ()


def test_collect_users_every_user_failing_raises_the_failure() -> None:
    keys: dict[str, list[dict[str, Any]]] = {f"u{i}": [] for i in range(5)}
    fake = FakeIam(keys, fail=dict.fromkeys(keys, "Throttling"))
    with pytest.raises(ClientError) as info:
        list_strategy.collect_users(fake, 4, Deadline(60))  # type: ignore[arg-type]
    assert info.value.response["Error"]["Code"] == "Throttling"


@pytest.mark.parametrize("code", ["ExpiredToken", "InvalidClientTokenId"])
def test_collect_users_credential_errors_fail_the_account(code: str) -> None:
    """Credentials are the account's, not one user's: one such error fails it."""
    keys: dict[str, list[dict[str, Any]]] = {f"u{i}": [] for i in range(20)}
    fake = FakeIam(keys, fail={"u5": code})
    with pytest.raises(ClientError) as info:
        list_strategy.collect_users(fake, 4, Deadline(60))  # type: ignore[arg-type]
    assert info.value.response["Error"]["Code"] == code


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
    got = list_strategy.list_users_with_tags(client, Deadline(60))
    stub.assert_no_pending_responses()
    assert got == [
        list_strategy.UserRef("alice", "/", {"Team": "payments",
                                             "iam-key-exporter/exempt": "true"}),
        list_strategy.UserRef("bob", "/ops/", {})]
