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

from exporter.aws.errors import (
    CollectionError,
    Deadline,
    DeadlineExceeded,
    client_error_code,
    error_code,
)
from exporter.inventory import AccessKey, User

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

PAGE_SIZE = 1000

IamLists = Union["IAMClient", Any]  # a botocore IAM client (Any: test fakes)


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


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Sequence[T], concurrency: int,
                 deadline: Deadline, name: str = "iam-calls") -> list[R | None]:
    """fn over items by a few worker threads, results in order. Items not started by
    the deadline (or still running a little after it) are None; the first error fn
    raises stops the rest and is raised (fn turns errors it can live with into results).

    Workers take the next item from a shared index rather than from a queue of futures:
    no Future object per user.
    """
    n = len(items)
    if n == 0:
        return []
    results: list[R | None] = [None] * n
    cond = threading.Condition()
    state = {"next": 0, "finished": 0}
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set() and deadline.remaining() > 0:
                with cond:
                    i = state["next"]
                    state["next"] = i + 1
                if i >= n:
                    return
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
        # A call stuck past the deadline keeps its thread until botocore's read timeout;
        # nothing waits for it longer than this.
        cond.wait_for(lambda: state["finished"] == workers or bool(errors),
                      timeout=max(deadline.remaining(), 0.0) + DEADLINE_GRACE)
    stop.set()
    if errors:
        raise errors[0]
    return list(results)


# Seconds past the deadline that calls already in flight are waited for.
DEADLINE_GRACE = 2.0

KeysHook = Callable[[str, tuple[AccessKey, ...]], tuple[AccessKey, ...]]
# A user's configured tags (as (key, value) pairs) and whether it is exempt.
Owner = tuple[tuple[tuple[str, str], ...], bool]
NO_OWNER: Owner = ((), False)


class UserFailed(Exception):
    """One user's keys could not be read; ``code`` says why."""

    def __init__(self, code: str, cause: BaseException) -> None:
        super().__init__(code)
        self.code, self.cause = code, cause


@dataclass(frozen=True, slots=True)
class KeysResult:
    """The users whose keys were read, and (name, path, reason) of those that were not."""

    users: tuple[User, ...]
    unread: tuple[tuple[str, str, str], ...] = ()


# Errors that fail the whole account rather than one user: the credentials themselves.
ACCOUNT_ERRORS = frozenset({"ExpiredToken", "InvalidClientTokenId", "SignatureDoesNotMatch",
                            "UnrecognizedClientException", "NoCredentialsError"})


# A user deleted since it was listed (None from parallel_map means "not reached").
GONE = "gone"


def _read(iam: IamLists, ref: UserRef, finish: KeysHook | None,
          owner_of: Callable[[UserRef], Owner] | None) -> User | UserFailed | str:
    try:
        keys = list_keys(iam, ref.name)
    except Exception as e:
        code = error_code(e)
        if code in ACCOUNT_ERRORS or getattr(e, "operation_name", None) == "AssumeRole":
            raise
        return UserFailed(code, e)
    if keys is None:
        return GONE
    if finish is not None:
        keys = finish(ref.name, keys)
    tags, exempt = owner_of(ref) if owner_of is not None else NO_OWNER
    return User(name=ref.name, path=ref.path, keys=keys, tags=tags, exempt=exempt)


def collect_keys(iam: IamLists, refs: Sequence[UserRef], concurrency: int,
                 deadline: Deadline, owner_of: Callable[[UserRef], Owner] | None = None,
                 finish: KeysHook | None = None) -> KeysResult:
    """One ListAccessKeys per user; users deleted since they were listed are left out.
    ``finish`` completes each user's keys (last-used dates) as they come in.

    A user whose keys cannot be read (denied for that user, throttled through every
    retry) is tried once more after the others; if it fails again, or the deadline
    comes first, it is reported in ``unread`` and the others are exported. Only when
    every user fails is the account failed (a missing permission, not one odd user).
    """

    def one(ref: UserRef) -> User | UserFailed | str:
        return _read(iam, ref, finish, owner_of)

    first = parallel_map(one, refs, concurrency, deadline, "iam-keys")
    again = [i for i, r in enumerate(first) if isinstance(r, UserFailed)]
    if again:
        second = parallel_map(one, [refs[i] for i in again], concurrency, deadline, "iam-keys")
        for i, r in zip(again, second, strict=True):
            if r is not None:
                first[i] = r
    users: list[User] = []
    unread: list[tuple[str, str, str]] = []
    failures: list[UserFailed] = []
    for ref, r in zip(refs, first, strict=True):
        if isinstance(r, User):
            users.append(r)
        elif isinstance(r, UserFailed):
            failures.append(r)
            unread.append((ref.name, ref.path, r.code))
        elif r is None:
            unread.append((ref.name, ref.path, "DeadlineExceeded"))
    if failures and len(failures) == len(refs):
        raise failures[0].cause
    if refs and len(unread) == len(refs):
        raise DeadlineExceeded(f"cycle deadline of {deadline.seconds:g}s exceeded")
    users.sort(key=lambda u: u.name)
    return KeysResult(tuple(users), tuple(unread))


def collect_users(iam: IamLists, concurrency: int, deadline: Deadline) -> KeysResult:
    """ListUsers, then the keys of every user (no tags, no filters)."""
    return collect_keys(iam, list_users(iam, deadline), concurrency, deadline)
