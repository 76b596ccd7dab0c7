"""The store (exporter/store.py): the newest read of each user wins, whatever order the
reads, listings and deletions arrive in. Times are plain numbers: the store never looks
at the clock."""

from __future__ import annotations

from exporter.inventory import AccessKey, AccountInventory, User
from exporter.store import AccountStore, Freshness, Identity
from tests.passes import read_at

ACCOUNT = "111111111111"


def keys(*statuses: str, prefix: str = "AKIA") -> tuple[AccessKey, ...]:
    return tuple(AccessKey(f"{prefix}{i}", s, 0.0) for i, s in enumerate(statuses))


def store() -> AccountStore:
    return AccountStore(ACCOUNT, "list")


def users(inv: AccountInventory) -> dict[str, User]:
    return {u.name: u for u in inv.users}


# --------------------------------------------------------------------------- observe


def test_an_older_read_arriving_later_is_ignored() -> None:
    s = store()
    assert s.observe("alice", keys("Active", "Active"), at=2.0)
    v = s.version
    assert not s.observe("alice", keys("Inactive"), at=1.0)
    assert s.version == v  # nothing changed
    assert [k.status for k in users(s.inventory())["alice"].keys] == ["Active", "Active"]
    assert read_at(s, "alice") == 2.0


def test_a_newer_read_replaces_an_older_one() -> None:
    s = store()
    assert s.observe("alice", keys("Inactive"), at=1.0)
    assert s.observe("alice", keys("Active", "Active"), at=2.0)
    assert [k.status for k in users(s.inventory())["alice"].keys] == ["Active", "Active"]
    assert read_at(s, "alice") == 2.0


def test_a_read_at_the_same_time_does_not_replace() -> None:
    s = store()
    assert s.observe("alice", keys("Active"), at=2.0)
    assert not s.observe("alice", keys("Inactive"), at=2.0)
    assert [k.status for k in users(s.inventory())["alice"].keys] == ["Active"]


def test_names_are_one_user_whatever_their_case() -> None:
    s = store()
    s.observe("Alice", keys("Active"), at=2.0)
    assert not s.observe("ALICE", keys(), at=1.0)
    assert [u.name for u in s.inventory().users] == ["Alice"]


def test_identity_of_a_read_is_kept_only_when_newer() -> None:
    s = store()
    s.listed_users([Identity("alice", path="/a/")], started=1.0)
    s.observe("alice", keys(), at=3.0, identity=Identity("alice", path="/b/"))
    assert s.identity("alice") == Identity("alice", path="/b/")
    # A listing that began before that read does not bring the old path back.
    s.listed_users([Identity("alice", path="/a/")], started=2.0)
    assert users(s.inventory())["alice"].path == "/b/"


# --------------------------------------------------------------------------- tombstones


def test_a_deleted_user_is_gone_and_an_older_read_cannot_bring_it_back() -> None:
    s = store()
    s.observe("bob", keys("Active"), at=1.0)
    assert s.observe("bob", None, at=5.0)  # IAM said: no such user
    assert "bob" not in users(s.inventory())
    assert not s.observe("bob", keys("Active"), at=4.0)
    assert "bob" not in users(s.inventory())


def test_a_tombstone_beats_an_older_listing() -> None:
    s = store()
    s.listed_users([Identity("alice"), Identity("bob")], started=1.0)
    s.observe("alice", keys(), at=2.0)
    s.observe("bob", keys("Active"), at=2.0)
    s.observe("bob", None, at=5.0)
    # A listing that began before the deletion still names bob: he stays gone.
    new, gone = s.listed_users([Identity("alice"), Identity("bob")], started=4.0)
    assert (new, gone) == ([], [])
    assert set(users(s.inventory())) == {"alice"}
    assert [n for n, _ in s.members()] == ["alice"]


def test_a_user_created_again_after_its_deletion_comes_back() -> None:
    s = store()
    s.observe("bob", keys("Active"), at=1.0)
    s.observe("bob", None, at=5.0)
    new, _ = s.listed_users([Identity("bob")], started=6.0)
    assert new == ["bob"]
    assert s.observe("bob", keys("Inactive"), at=7.0)
    assert [k.status for k in users(s.inventory())["bob"].keys] == ["Inactive"]


# --------------------------------------------------------------------------- listings


def test_a_listing_adds_new_users_unread() -> None:
    s = store()
    assert not s.listed
    new, gone = s.listed_users([Identity("alice"), Identity("bob")], started=1.0)
    assert (new, gone) == (["alice", "bob"], [])
    assert s.listed
    assert s.members() == [("alice", None), ("bob", None)]
    assert s.inventory().users == ()  # nothing read yet: nothing served
    assert s.freshness() == Freshness(None, 2, 2)


def test_a_listing_drops_users_not_read_since_it_began_and_keeps_those_read_after() -> None:
    s = store()
    s.listed_users([Identity("alice"), Identity("bob"), Identity("carol")], started=1.0)
    s.observe("alice", keys(), at=2.0)
    s.observe("bob", keys(), at=2.0)
    s.observe("carol", keys(), at=6.0)  # read after the next listing began
    # The listing began at 5 and found only alice: bob is gone, carol was read (so
    # exists) after the listing began: created while it ran, it stays.
    new, gone = s.listed_users([Identity("alice"), Identity("dave")], started=5.0)
    assert new == ["dave"]
    assert gone == ["bob"]
    assert set(users(s.inventory())) == {"alice", "carol"}
    assert {n for n, _ in s.members()} == {"alice", "carol", "dave"}


def test_a_listing_without_tags_keeps_the_last_known_tags_and_exemption() -> None:
    s = store()
    tagged = Identity("alice", path="/a/", tags=(("Team", "ops"),), exempt=True)
    s.listed_users([tagged], started=1.0)
    s.observe("alice", keys("Active", "Active"), at=2.0)
    # Tags denied this time: the path is new, the tags and exemption are the last known.
    s.listed_users([Identity("alice", path="/b/", tags_known=False)], started=3.0)
    alice = users(s.inventory())["alice"]
    assert (alice.path, alice.tags, alice.exempt) == ("/b/", (("Team", "ops"),), True)
    assert s.identity("alice") == Identity("alice", "/b/", (("Team", "ops"),), True, True)
    # A listing that could read the tags and found none clears them.
    s.listed_users([Identity("alice", path="/b/")], started=4.0)
    alice = users(s.inventory())["alice"]
    assert (alice.tags, alice.exempt) == ((), False)


def test_a_new_user_listed_without_tags_is_untagged_and_not_exempt() -> None:
    s = store()
    s.listed_users([Identity("alice", tags_known=False)], started=1.0)
    s.observe("alice", keys("Active", "Active"), at=2.0)
    alice = users(s.inventory())["alice"]
    assert (alice.tags, alice.exempt) == ((), False)
    assert s.inventory().key_totals().multi_active_users == 1


# --------------------------------------------------------------------------- failures


def test_a_failed_read_keeps_the_last_keys_with_the_reason() -> None:
    s = store()
    s.listed_users([Identity("alice")], started=1.0)
    s.observe("alice", keys("Active", "Active"), at=2.0)
    s.failed("alice", "Throttling", at=3.0)
    alice = users(s.inventory())["alice"]
    assert alice.stale == "Throttling"
    assert [k.status for k in alice.keys] == ["Active", "Active"]
    assert read_at(s, "alice") == 2.0  # the keys are still those read at 2
    assert s.untried_since(3.0) == 0  # but the user was tried
    # The next good read clears the reason.
    s.observe("alice", keys("Active"), at=4.0)
    alice = users(s.inventory())["alice"]
    assert alice.stale == "" and len(alice.keys) == 1


def test_a_user_never_read_whose_read_fails_is_listed_as_unread() -> None:
    s = store()
    s.listed_users([Identity("bob", path="/ops/")], started=1.0)
    s.failed("bob", "AccessDenied", at=2.0)
    inv = s.inventory()
    assert inv.users == ()
    assert inv.unread == (("bob", "/ops/", "AccessDenied"),)
    assert s.freshness().never_read == 1  # failed is not read


def test_a_failure_of_a_user_not_in_the_store_is_ignored() -> None:
    s = store()
    v = s.version
    s.failed("ghost", "NoSuchEntity", at=1.0)
    assert s.version == v and s.members() == []


# --------------------------------------------------------------------------- freshness


def test_freshness_is_the_oldest_read_and_the_users_never_read() -> None:
    s = store()
    assert s.freshness() == Freshness(None, 0, 0)
    s.listed_users([Identity("alice"), Identity("bob"), Identity("carol")], started=1.0)
    assert s.freshness() == Freshness(None, 3, 3)
    s.observe("alice", keys(), at=10.0)
    assert s.freshness() == Freshness(10.0, 2, 3)
    s.observe("bob", keys(), at=5.0)
    assert s.freshness() == Freshness(5.0, 1, 3)
    s.observe("bob", keys(), at=20.0)  # bob read again: alice is now the oldest
    s.observe("carol", keys(), at=15.0)
    assert s.freshness() == Freshness(10.0, 0, 3)
    s.failed("alice", "Throttling", at=30.0)  # a failed read does not refresh
    assert s.freshness() == Freshness(10.0, 0, 3)


def test_untried_since_counts_users_no_read_of_which_ended_since() -> None:
    s = store()
    s.listed_users([Identity("alice"), Identity("bob"), Identity("carol")], started=1.0)
    s.observe("alice", keys(), at=5.0)
    s.failed("bob", "Throttling", at=6.0)
    assert s.untried_since(4.0) == 1  # carol
    # An out-of-date read still counts as tried then.
    assert not s.observe("alice", keys(), at=4.5)
    assert s.untried_since(5.0) == 1
    s.observe("carol", keys(), at=7.0)
    assert s.untried_since(4.0) == 0
    assert s.untried_since(6.5) == 2


def test_inventory_is_sorted_and_carries_the_account_extras() -> None:
    s = AccountStore(ACCOUNT, "list", dates=True)
    s.listed_users([Identity("zed"), Identity("amy")], started=1.0)
    s.observe("zed", keys("Active"), at=2.0)
    s.observe("amy", keys("Active"), at=2.0, dates_complete=False)
    inv = s.inventory()
    assert [u.name for u in inv.users] == ["amy", "zed"]
    assert inv.account_id == ACCOUNT and inv.strategy == "list"
    assert inv.last_used_complete is False
    assert AccountStore(ACCOUNT, "list", dates=False).inventory().last_used_complete is None
