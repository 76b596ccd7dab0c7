"""Organizations discovery against a real moto server (Stubber only where moto cannot act).

The Organization is built once per module (discovery only reads it). Tests that need
another world use another moto account instead of resetting the server: credentials from
sts:AssumeRole into account X make moto act as account X (see
test_assumed_role_credentials_reach_the_member_account).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber

from exporter.aws.errors import CollectionError, error_code
from exporter.aws.organizations import OrgAccount, OrganizationsError, discover
from exporter.config import OrganizationsConfig
from tests.helpers import MOTO_ACCOUNT, aws, creds_in, free_port


def record_calls(client: Any) -> list[str]:
    """Names of the API operations the client sends, in order."""
    calls: list[str] = []
    client.meta.events.register("before-call.organizations",
                                lambda model, **_: calls.append(model.name))
    return calls


def create_account(org: Any, name: str, parent: str, root: str) -> str:
    status = org.create_account(AccountName=name, Email=f"{name}@example.com")
    account_id = status["CreateAccountStatus"].get("AccountId")  # moto: created at once
    if account_id is None:
        account_id = org.describe_create_account_status(CreateAccountRequestId=status[
            "CreateAccountStatus"]["Id"])["CreateAccountStatus"]["AccountId"]
    if parent != root:
        org.move_account(AccountId=account_id, SourceParentId=root, DestinationParentId=parent)
    return str(account_id)


@dataclass
class Org:
    """root ─┬─ mgmt (123456789012), top
             ├─ eng ─┬─ eng1
             │       └─ eng-prod ─┬─ prod1, prod2
             │                    └─ closed (SUSPENDED)
             └─ sales ── sales1
    """

    client: Any
    root: str
    eng: str
    eng_prod: str
    sales: str
    top: str
    eng1: str
    prod1: str
    prod2: str
    closed: str
    sales1: str

    @property
    def active(self) -> list[str]:
        return sorted([MOTO_ACCOUNT, self.top, self.eng1, self.prod1, self.prod2, self.sales1])


@pytest.fixture(scope="module")
def org(endpoint: str) -> Org:
    client = aws("organizations", endpoint)
    client.create_organization(FeatureSet="ALL")
    root = client.list_roots()["Roots"][0]["Id"]

    def ou(parent: str, name: str) -> str:
        return str(client.create_organizational_unit(
            ParentId=parent, Name=name)["OrganizationalUnit"]["Id"])

    eng = ou(root, "eng")
    eng_prod = ou(eng, "eng-prod")
    sales = ou(root, "sales")
    ids = {name: create_account(client, name, parent, root) for name, parent in [
        ("top", root), ("eng1", eng), ("prod1", eng_prod), ("prod2", eng_prod),
        ("closed", eng_prod), ("sales1", sales)]}
    client.close_account(AccountId=ids["closed"])
    return Org(client=client, root=root, eng=eng, eng_prod=eng_prod, sales=sales, **ids)


def ids(accounts: list[OrgAccount]) -> list[str]:
    return [a.account_id for a in accounts]


def test_all_active_accounts_including_the_management_account(org: Org) -> None:
    calls = record_calls(org.client)
    accounts = discover(org.client, OrganizationsConfig(enabled=True))
    assert ids(accounts) == org.active  # sorted by id; the SUSPENDED account is left out
    assert org.closed not in ids(accounts)
    by_id = {a.account_id: a for a in accounts}
    assert by_id[MOTO_ACCOUNT] == OrgAccount(MOTO_ACCOUNT, "master", management=True)
    assert by_id[org.prod1] == OrgAccount(org.prod1, "prod1", management=False)
    assert [a.account_id for a in accounts if a.management] == [MOTO_ACCOUNT]
    assert calls == ["ListAccounts"]  # one listing, nothing per account
    assert not hasattr(accounts[0], "email") and not hasattr(accounts[0], "__dict__")


def test_include_accounts(org: Org, caplog: pytest.LogCaptureFixture) -> None:
    cfg = OrganizationsConfig(include_accounts=(org.prod2, org.top, "999999999999"))
    assert ids(discover(org.client, cfg)) == sorted([org.prod2, org.top])
    [record] = [r for r in caplog.records if r.name == "exporter.organizations"]
    assert record.levelname == "WARNING" and vars(record)["accounts"] == "999999999999"


def test_include_accounts_never_brings_back_an_inactive_account(org: Org) -> None:
    cfg = OrganizationsConfig(include_accounts=(org.closed, org.prod1))
    assert ids(discover(org.client, cfg)) == [org.prod1]


def test_exclude_accounts(org: Org) -> None:
    cfg = OrganizationsConfig(exclude_accounts=(MOTO_ACCOUNT, org.sales1))
    assert ids(discover(org.client, cfg)) == sorted(
        set(org.active) - {MOTO_ACCOUNT, org.sales1})


def test_include_ous_walks_the_subtree(org: Org) -> None:
    calls = record_calls(org.client)
    accounts = discover(org.client, OrganizationsConfig(include_ous=(org.eng,)))
    assert ids(accounts) == sorted([org.eng1, org.prod1, org.prod2])
    assert {a.account_id: a.parent_id for a in accounts} == {
        org.eng1: org.eng, org.prod1: org.eng_prod, org.prod2: org.eng_prod}
    # One listing of accounts and one of child OUs per OU in the subtree (eng, eng-prod).
    assert sorted(calls) == sorted(["ListAccountsForParent", "ListOrganizationalUnitsForParent"]
                                   * 2)


def test_include_the_root_is_every_active_account(org: Org) -> None:
    accounts = discover(org.client, OrganizationsConfig(include_ous=(org.root,)))
    assert ids(accounts) == org.active
    assert {a.account_id for a in accounts if a.management} == {MOTO_ACCOUNT}


def test_overlapping_include_ous_give_each_account_once(org: Org) -> None:
    cfg = OrganizationsConfig(include_ous=(org.eng_prod, org.eng, org.sales))
    assert ids(discover(org.client, cfg)) == sorted([org.eng1, org.prod1, org.prod2,
                                                     org.sales1])


def test_exclude_ous_drops_the_subtree(org: Org) -> None:
    assert ids(discover(org.client, OrganizationsConfig(exclude_ous=(org.eng,)))) == sorted(
        [MOTO_ACCOUNT, org.top, org.sales1])
    assert ids(discover(org.client, OrganizationsConfig(exclude_ous=(org.eng_prod,)))) == sorted(
        [MOTO_ACCOUNT, org.top, org.eng1, org.sales1])


def test_exclude_wins_over_include(org: Org) -> None:
    cfg = OrganizationsConfig(include_ous=(org.eng,), exclude_ous=(org.eng_prod,))
    assert ids(discover(org.client, cfg)) == [org.eng1]
    cfg = OrganizationsConfig(include_accounts=(org.prod1, org.prod2),
                              exclude_accounts=(org.prod1,))
    assert ids(discover(org.client, cfg)) == [org.prod2]
    cfg = OrganizationsConfig(include_accounts=(org.prod1, org.sales1),
                              exclude_ous=(org.eng,))
    assert ids(discover(org.client, cfg)) == [org.sales1]
    cfg = OrganizationsConfig(include_ous=(org.eng,), exclude_accounts=(org.eng1,))
    assert ids(discover(org.client, cfg)) == sorted([org.prod1, org.prod2])


def test_unknown_ou_names_the_key(org: Org) -> None:
    with pytest.raises(OrganizationsError) as info:
        discover(org.client, OrganizationsConfig(exclude_ous=("ou-zzzz-zzzzzzzz",)))
    assert info.value.code == "ParentNotFoundException"
    assert "organizations.exclude_ous" in str(info.value)
    assert "ou-zzzz-zzzzzzzz" in str(info.value)


def test_large_parent_is_listed_across_pages(endpoint: str) -> None:
    """moto pages ListAccountsForParent / ListOrganizationalUnitsForParent by 20."""
    client = aws("organizations", endpoint, creds_in(endpoint, "222222222222"))
    client.create_organization(FeatureSet="ALL")  # another Organization, in another account
    root = client.list_roots()["Roots"][0]["Id"]
    # The root holds the management account and 20 more: 21 accounts, and 21 child OUs.
    members = [create_account(client, f"m{i:02d}", root, root) for i in range(20)]
    children = [client.create_organizational_unit(ParentId=root, Name=f"c{i:02d}")
                ["OrganizationalUnit"]["Id"] for i in range(21)]
    deep = create_account(client, "deep", children[-1], root)  # in the OU on the 2nd page
    calls = record_calls(client)
    accounts = discover(client, OrganizationsConfig(include_ous=(root,)))
    assert ids(accounts) == sorted(["222222222222", *members, deep])
    assert {a.parent_id for a in accounts} == {root, children[-1]}
    # Two pages of each listing for the root, then one of each for every child OU.
    assert calls.count("ListAccountsForParent") == 2 + 21
    assert calls.count("ListOrganizationalUnitsForParent") == 2 + 21


def test_not_in_an_organization(endpoint: str) -> None:
    """moto answers ListAccounts outside an Organization with an empty list (AWS: an error)."""
    client = aws("organizations", endpoint, creds_in(endpoint, "555555555555"))
    with pytest.raises(OrganizationsError) as info:
        discover(client, OrganizationsConfig(enabled=True))
    assert info.value.code == "AWSOrganizationsNotInUseException"
    assert "this account is not in an AWS Organization" in str(info.value)
    assert isinstance(info.value, CollectionError)
    assert error_code(info.value) == "AWSOrganizationsNotInUseException"


# --- where moto cannot act: AWS's own answers, replayed through botocore's Stubber ---------

@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("organizations", region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stubber:
        yield client, stubber


ARN = "arn:aws:organizations::111111111111:account/o-abcdefghij/{}"
JOINED = datetime(2024, 1, 1, tzinfo=UTC)


def acct(account_id: str, name: str, **state: str) -> dict[str, Any]:
    return {"Id": account_id, "Arn": ARN.format(account_id), "Name": name,
            "Email": f"{name}@example.com", "JoinedMethod": "CREATED",
            "JoinedTimestamp": JOINED, **state}


def test_access_denied_is_explained(stubbed: Any) -> None:
    """moto does not enforce IAM, so AWS's answer to a member account is replayed."""
    client, stubber = stubbed
    stubber.add_client_error("list_accounts", service_error_code="AccessDeniedException",
                             service_message="You don't have permissions to access this "
                                             "resource.", http_status_code=400)
    with pytest.raises(OrganizationsError) as info:
        discover(client, OrganizationsConfig(enabled=True))
    assert info.value.code == "AccessDeniedException"
    msg = str(info.value)
    assert "not allowed to list the Organization's accounts" in msg
    assert "management account or a delegated administrator" in msg
    assert "organizations:ListAccounts" in msg


def test_list_accounts_follows_next_token(stubbed: Any) -> None:
    """moto pages ListAccounts only after 100 accounts; three small pages are replayed here."""
    client, stubber = stubbed
    stubber.add_response("list_accounts", {"Accounts": [acct("111111111111", "mgmt",
                                                            Status="ACTIVE", State="ACTIVE")],
                                          "NextToken": "p2"}, {})
    stubber.add_response("list_accounts", {"Accounts": [acct("333333333333", "c",
                                                            Status="ACTIVE", State="ACTIVE")],
                                          "NextToken": "p3"}, {"NextToken": "p2"})
    stubber.add_response("list_accounts", {"Accounts": [acct("222222222222", "b",
                                                            Status="ACTIVE", State="ACTIVE")]},
                         {"NextToken": "p3"})
    accounts = discover(client, OrganizationsConfig(enabled=True))
    stubber.assert_no_pending_responses()
    assert accounts == [OrgAccount("111111111111", "mgmt", management=True),
                        OrgAccount("222222222222", "b"), OrgAccount("333333333333", "c")]


def test_status_and_state_fields(stubbed: Any) -> None:
    """Older answers carry only Status; newer ones also State, which then decides."""
    client, stubber = stubbed
    stubber.add_response("list_accounts", {"Accounts": [
        acct("100000000001", "status-only", Status="ACTIVE"),
        acct("100000000002", "state-only", State="ACTIVE"),
        acct("100000000003", "both", Status="ACTIVE", State="ACTIVE"),
        acct("100000000004", "suspended", Status="SUSPENDED"),
        acct("100000000005", "closing", Status="SUSPENDED", State="PENDING_CLOSURE"),
        acct("100000000006", "closed", State="CLOSED"),
        acct("100000000007", "joining", Status="PENDING_CLOSURE"),
    ]}, {})
    assert ids(discover(client, OrganizationsConfig())) == [
        "100000000001", "100000000002", "100000000003"]


def test_unreachable_endpoint_is_an_organizations_error() -> None:
    client = boto3.client("organizations", region_name="us-east-1",
                          endpoint_url=f"http://127.0.0.1:{free_port()}",
                          aws_access_key_id="x", aws_secret_access_key="x",
                          config=BotoConfig(retries={"total_max_attempts": 1},
                                            connect_timeout=2))
    with pytest.raises(OrganizationsError) as info:
        discover(client, OrganizationsConfig(enabled=True))
    assert info.value.code == "EndpointConnectionError"


# --- moto's multi-account model, which the end-to-end Organizations test relies on ---------

def test_assumed_role_credentials_reach_the_member_account(endpoint: str, org: Org) -> None:
    member = aws("iam", endpoint, creds_in(endpoint, org.prod1))
    mgmt = aws("iam", endpoint)
    member.create_user(UserName="in-member")
    member.create_access_key(UserName="in-member")
    mgmt.create_user(UserName="in-mgmt")
    assert [u["UserName"] for u in member.list_users()["Users"]] == ["in-member"]
    assert [u["UserName"] for u in mgmt.list_users()["Users"]] == ["in-mgmt"]
    assert member.list_users()["Users"][0]["Arn"] == f"arn:aws:iam::{org.prod1}:user/in-member"
    assert len(member.list_access_keys(UserName="in-member")["AccessKeyMetadata"]) == 1
