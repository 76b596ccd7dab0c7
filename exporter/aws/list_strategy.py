"""The ``list`` strategy: exact, live key counts.

Users a page at a time (1,000 per page; GetAccountAuthorizationDetails when tags are
wanted, ListUsers otherwise), and one ListAccessKeys per user: the price of exact live
counts.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from exporter.aws.errors import CollectionError, client_error_code
from exporter.inventory import AccessKey

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

PAGE_SIZE = 1000

IamLists = Union["IAMClient", Any]  # a botocore IAM client (Any: test fakes)


def _pages(call: Callable[..., Any], operation: str, items: str,
           **kwargs: Any) -> Iterator[Any]:
    """The items of every page of a Marker-paginated IAM call, in order.

    A page that says IsTruncated without a Marker is an error: stopping there would
    silently undercount.
    """
    marker: str | None = None
    while True:
        page = call(**kwargs, **({"Marker": marker} if marker else {}))
        yield from page.get(items, [])
        if not page.get("IsTruncated"):
            return
        marker = page.get("Marker")
        if not marker:
            raise CollectionError(f"{operation} said IsTruncated but gave no Marker",
                                  code="InvalidPagination")


@dataclass(frozen=True, slots=True)
class UserRef:
    """A user as listed, before its keys are read; tags are None when not read."""

    name: str
    path: str
    tags: Mapping[str, str] | None = None


def list_users(iam: IamLists) -> list[UserRef]:
    """All users, following Marker while IsTruncated."""
    return [UserRef(u["UserName"], sys.intern(u.get("Path", "/")))
            for u in _pages(iam.list_users, "ListUsers", "Users", MaxItems=PAGE_SIZE)]


def list_users_with_tags(iam: IamLists,
                         wanted: Collection[str] | None = None) -> list[UserRef]:
    """All users with their tags (only the wanted ones, when given), a page at a time
    (ListUsers returns no tags, and one ListUserTags per user would double the cost of a
    pass)."""
    return [UserRef(u["UserName"], sys.intern(u.get("Path", "/")),
                    {t["Key"]: t["Value"] for t in u.get("Tags", [])
                     if wanted is None or t["Key"] in wanted} or _NO_TAGS)
            for u in _pages(iam.get_account_authorization_details,
                            "GetAccountAuthorizationDetails", "UserDetailList",
                            Filter=["User"], MaxItems=PAGE_SIZE)]


_NO_TAGS: Mapping[str, str] = types.MappingProxyType({})


def _key(meta: Any) -> AccessKey:
    # Any other status (botocore's model lists Expired) is counted under its own name.
    status = str(meta.get("Status") or "Unknown")
    created = meta.get("CreateDate")
    return AccessKey(key_id=meta.get("AccessKeyId"), status=status,
                     created=created.timestamp() if created is not None else None)


def list_keys(iam: IamLists, user_name: str) -> tuple[AccessKey, ...] | None:
    """The user's keys, or None when the user was deleted since ListUsers."""
    try:
        # UserName always: role credentials require it.
        keys = [_key(m) for m in _pages(iam.list_access_keys, "ListAccessKeys",
                                        "AccessKeyMetadata", UserName=user_name)]
    except Exception as e:
        if client_error_code(e) == "NoSuchEntity":
            return None
        raise
    keys.sort(key=lambda k: (k.created or 0.0, k.key_id or ""))
    return tuple(keys)


# A user's configured tags (as (key, value) pairs) and whether it is exempt.
Owner = tuple[tuple[tuple[str, str], ...], bool]
NO_OWNER: Owner = ((), False)


# Errors that fail the whole account rather than one user: the credentials themselves.
ACCOUNT_ERRORS = frozenset({"ExpiredToken", "InvalidClientTokenId", "SignatureDoesNotMatch",
                            "UnrecognizedClientException", "NoCredentialsError"})

