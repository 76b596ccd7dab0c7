"""The ``list`` strategy: exact, live key counts.

Users a page at a time (1,000 per page; GetAccountAuthorizationDetails when tags are
wanted, ListUsers otherwise), then one ListAccessKeys per user in a bounded thread pool.
One IAM call per user is the price of exact live counts.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

from exporter.aws.errors import CollectionError, Deadline, DeadlineExceeded, client_error_code
from exporter.inventory import AccessKey, User

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

    from exporter.aws.query import QueryClient

PAGE_SIZE = 1000

# What reads users and keys: a botocore IAM client, or the fast path in front of one.
IamLists = Union["IAMClient", "QueryClient"]


def _pages(call: Callable[..., Any], operation: str, items: str,
           before_page: Callable[[], None] | None = None, **kwargs: Any) -> Iterator[Any]:
    """The items of every page of a Marker-paginated IAM call, in order.

    A page that says IsTruncated without a Marker is an error: stopping there would
    silently undercount.
    """
    marker: str | None = None
    while True:
        if before_page is not None:
            before_page()
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


def list_users(iam: IamLists, deadline: Deadline) -> list[UserRef]:
    """All users, following Marker while IsTruncated."""
    return [UserRef(u["UserName"], sys.intern(u.get("Path", "/")))
            for u in _pages(iam.list_users, "ListUsers", "Users", deadline.check,
                            MaxItems=PAGE_SIZE)]


def list_users_with_tags(iam: IamLists, deadline: Deadline,
                         wanted: Collection[str] | None = None) -> list[UserRef]:
    """All users with their tags (only the wanted ones, when given), a page at a time
    (ListUsers returns no tags, and one ListUserTags per user would double the cost of a
    cycle)."""
    return [UserRef(u["UserName"], sys.intern(u.get("Path", "/")),
                    {t["Key"]: t["Value"] for t in u.get("Tags", [])
                     if wanted is None or t["Key"] in wanted} or _NO_TAGS)
            for u in _pages(iam.get_account_authorization_details,
                            "GetAccountAuthorizationDetails", "UserDetailList", deadline.check,
                            Filter=["User"], MaxItems=PAGE_SIZE)]


_NO_TAGS: Mapping[str, str] = types.MappingProxyType({})


def _key(meta: Any) -> AccessKey:
    status = meta.get("Status")
    if status not in ("Active", "Inactive"):
        raise CollectionError(f"unexpected key status {status!r}", code="InvalidResponse")
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


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Sequence[T], concurrency: int,
                 deadline: Deadline, name: str = "iam-calls") -> list[R]:
    """fn over items by a few worker threads, results in order; the first error (or the
    deadline) stops the rest and is raised.

    Workers take the next item from a shared index rather than from a queue of futures:
    at 50,000 users, 50,000 Future objects alone would cost tens of MB.
    """
    n = len(items)
    if n == 0:
        return []
    results: list[Any] = [None] * n
    cond = threading.Condition()
    state = {"next": 0, "finished": 0}
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                with cond:
                    i = state["next"]
                    state["next"] = i + 1
                if i >= n:
                    return
                deadline.check()
                results[i] = fn(items[i])
        except BaseException as e:  # handed to the caller
            stop.set()
            with cond:
                errors.append(e)
        finally:
            with cond:
                state["finished"] += 1
                cond.notify_all()

    workers = min(concurrency, n)
    for k in range(workers):
        threading.Thread(target=worker, name=f"{name}-{k}", daemon=True).start()
    with cond:
        cond.wait_for(lambda: state["finished"] == workers or bool(errors),
                      timeout=max(deadline.remaining(), 0.0))
        done = state["finished"] == workers
    stop.set()
    if errors:
        raise errors[0]
    if not done:
        # A call stuck past the deadline keeps its thread until botocore's read
        # timeout; nothing waits for it.
        raise DeadlineExceeded(f"cycle deadline of {deadline.seconds:g}s exceeded")
    return results


KeysHook = Callable[[str, tuple[AccessKey, ...]], tuple[AccessKey, ...]]
# A user's configured tags (as (key, value) pairs) and whether it is exempt.
Owner = tuple[tuple[tuple[str, str], ...], bool]
NO_OWNER: Owner = ((), False)


def collect_keys(iam: IamLists, refs: Sequence[UserRef], concurrency: int,
                 deadline: Deadline, owner_of: Callable[[UserRef], Owner] | None = None,
                 finish: KeysHook | None = None) -> tuple[User, ...]:
    """One ListAccessKeys per user; users deleted since they were listed are left out.
    ``finish`` completes each user's keys (last-used dates) as they come in."""

    def one(ref: UserRef) -> User | None:
        keys = list_keys(iam, ref.name)
        if keys is None:
            return None
        if finish is not None:
            keys = finish(ref.name, keys)
        tags, exempt = owner_of(ref) if owner_of is not None else NO_OWNER
        return User(name=ref.name, path=ref.path, keys=keys, tags=tags, exempt=exempt)

    users = [u for u in parallel_map(one, refs, concurrency, deadline, "iam-keys")
             if u is not None]
    users.sort(key=lambda u: u.name)
    return tuple(users)


def collect_users(iam: IamLists, concurrency: int, deadline: Deadline) -> tuple[User, ...]:
    """ListUsers, then the keys of every user (no tags, no filters)."""
    return collect_keys(iam, list_users(iam, deadline), concurrency, deadline)
