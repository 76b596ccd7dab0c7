"""AWS Organizations discovery: which member accounts to watch.

``discover`` lists the ACTIVE accounts of the Organization (ListAccounts), or, when OUs
are named, the accounts in those OU subtrees (ListAccountsForParent and
ListOrganizationalUnitsForParent, walked down from each named OU or root). Then the
include/exclude lists by account id and by OU are applied; an exclusion always wins.
Every listing goes through the boto3 paginators; nothing is called once per account.

Only ids, names and the place in the tree are kept: e-mail addresses are personal data
and are never read into the result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from exporter.aws.errors import CollectionError
from exporter.config import OrganizationsConfig

log = logging.getLogger("exporter.organizations")

NOT_IN_USE = "AWSOrganizationsNotInUseException"
ACCESS_DENIED = "AccessDeniedException"
PERMISSIONS = ("organizations:ListAccounts, organizations:ListAccountsForParent and "
               "organizations:ListOrganizationalUnitsForParent")


@dataclass(frozen=True, slots=True)
class OrgAccount:
    account_id: str
    name: str
    # The Organization's management account (the account id in the account's ARN).
    management: bool = False
    # The OU or root directly above the account; known only when the OU tree was walked.
    parent_id: str | None = None


class OrganizationsError(CollectionError):
    """Discovery failed; ``code`` is the AWS error code (or the botocore error class)."""

    code = "OrganizationsError"


def _is_active(account: dict[str, Any]) -> bool:
    # ``State`` (ACTIVE, SUSPENDED, PENDING_CLOSURE, CLOSED, ...) replaces the deprecated
    # ``Status``; older responses (and older botocore models) carry only ``Status``.
    state = account.get("State")
    if state is not None:
        return bool(state == "ACTIVE")
    return bool(account.get("Status") == "ACTIVE")


def _is_management(account: dict[str, Any]) -> bool:
    # arn:aws:organizations::<management-account-id>:account/o-xxxxxxxxxx/<account-id>
    arn = str(account.get("Arn") or "")
    parts = arn.split(":")
    return len(parts) > 4 and parts[4] == account.get("Id")


def _org_account(account: dict[str, Any], parent_id: str | None = None) -> OrgAccount:
    return OrgAccount(account_id=str(account["Id"]), name=str(account.get("Name") or ""),
                      management=_is_management(account), parent_id=parent_id)


def _error(exc: ClientError, parent: tuple[str, str] | None = None) -> OrganizationsError:
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or "ClientError")
    aws_msg = str(err.get("Message") or "").strip()
    said = f" (AWS: {code}: {aws_msg})" if aws_msg else f" (AWS: {code})"
    if code == NOT_IN_USE:
        msg = ("this account is not in an AWS Organization; turn organizations.enabled off "
               "or run the exporter with credentials of the Organization's management account")
    elif code == ACCESS_DENIED:
        msg = ("not allowed to list the Organization's accounts; run from the management "
               f"account or a delegated administrator with {PERMISSIONS}{said}")
    elif parent is not None and code in ("ParentNotFoundException", "InvalidInputException"):
        key, parent_id = parent
        msg = f"organizations.{key}: no OU or root {parent_id!r} in this Organization{said}"
    elif code in ("TooManyRequestsException", "ThrottlingException"):
        msg = f"Organizations API throttled the account listing{said}"
    else:
        msg = f"Organizations {exc.operation_name} failed{said}"
    return OrganizationsError(msg, code=code)


class _Tree:
    """Memoised walk of the OU tree: each parent is listed at most once per discovery."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._accounts: dict[str, list[dict[str, Any]]] = {}
        self._children: dict[str, list[str]] = {}

    def _pages(self, operation: str, result_key: str, parent_id: str) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator(operation)
        return [item for page in paginator.paginate(ParentId=parent_id)
                for item in page.get(result_key, [])]

    def _list(self, parent_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        if parent_id not in self._accounts:
            accounts = self._pages("list_accounts_for_parent", "Accounts", parent_id)
            ous = self._pages("list_organizational_units_for_parent", "OrganizationalUnits",
                              parent_id)
            self._accounts[parent_id] = accounts
            self._children[parent_id] = [str(ou["Id"]) for ou in ous]
        return self._accounts[parent_id], self._children[parent_id]

    def subtree(self, key: str, top: str) -> Iterable[tuple[str, dict[str, Any]]]:
        """(parent id, account) for every account at or below ``top``."""
        stack, seen = [top], set()
        while stack:
            parent_id = stack.pop()
            if parent_id in seen:
                continue
            seen.add(parent_id)
            try:
                accounts, children = self._list(parent_id)
            except ClientError as exc:
                raise _error(exc, (key, top) if parent_id == top else None) from exc
            for account in accounts:
                yield parent_id, account
            stack.extend(reversed(children))


def _list_all(client: Any) -> list[dict[str, Any]]:
    paginator = client.get_paginator("list_accounts")
    accounts = [a for page in paginator.paginate() for a in page.get("Accounts", [])]
    if not accounts:
        # A real Organization always has its management account, and AWS answers
        # ListAccounts outside an Organization with AWSOrganizationsNotInUseException.
        # Some fakes answer with an empty list instead; ask explicitly so that both give
        # the same clear error.
        client.describe_organization()
    return accounts


def _discover(client: Any, cfg: OrganizationsConfig) -> list[OrgAccount]:
    tree = _Tree(client)
    found: dict[str, OrgAccount] = {}
    if cfg.include_ous:
        for top in cfg.include_ous:
            for parent_id, account in tree.subtree("include_ous", top):
                if _is_active(account):
                    found.setdefault(str(account["Id"]), _org_account(account, parent_id))
    else:
        for account in _list_all(client):
            if _is_active(account):
                found[str(account["Id"])] = _org_account(account)

    excluded = set(cfg.exclude_accounts)
    for top in cfg.exclude_ous:
        excluded.update(str(a["Id"]) for _, a in tree.subtree("exclude_ous", top))
    if cfg.include_accounts:
        wanted = set(cfg.include_accounts)
        missing = sorted(wanted - set(found))
        if missing:
            log.warning("organizations.include_accounts not found among the ACTIVE accounts",
                        extra={"accounts": ",".join(missing)})
        found = {k: v for k, v in found.items() if k in wanted}
    return sorted((a for k, a in found.items() if k not in excluded),
                  key=lambda a: a.account_id)


def discover(org_client: Any, cfg: OrganizationsConfig) -> list[OrgAccount]:
    """The ACTIVE accounts to watch, after the include/exclude filters, sorted by id.

    Raises OrganizationsError (a CollectionError whose ``code`` is the AWS error code)
    when the Organization cannot be listed.
    """
    try:
        return _discover(org_client, cfg)
    except OrganizationsError:
        raise
    except ClientError as exc:
        raise _error(exc) from exc
    except BotoCoreError as exc:
        raise OrganizationsError(f"Organizations account listing failed: {exc}",
                                 code=type(exc).__name__) from exc
