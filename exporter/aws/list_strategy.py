"""The ``list`` strategy: exact, live key counts.

ListUsers a page at a time (1,000 users per page), then one ListAccessKeys per user in a
bounded thread pool. One IAM call per user is the price of exact live counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from exporter.aws.errors import CollectionError, Deadline, DeadlineExceeded, client_error_code
from exporter.inventory import AccessKey, User

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

PAGE_SIZE = 1000


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


def list_users(iam: IAMClient, deadline: Deadline) -> list[tuple[str, str]]:
    """All users as (name, path), following Marker while IsTruncated."""
    return [(u["UserName"], u.get("Path", "/"))
            for u in _pages(iam.list_users, "ListUsers", "Users", deadline.check,
                            MaxItems=PAGE_SIZE)]


def _key(meta: Any) -> AccessKey:
    status = meta.get("Status")
    if status not in ("Active", "Inactive"):
        raise CollectionError(f"unexpected key status {status!r}", code="InvalidResponse")
    created = meta.get("CreateDate")
    return AccessKey(key_id=meta.get("AccessKeyId"), status=status,
                     created=created.timestamp() if created is not None else None)


def list_keys(iam: IAMClient, user_name: str) -> tuple[AccessKey, ...] | None:
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


def collect_users(iam: IAMClient, concurrency: int, deadline: Deadline) -> tuple[User, ...]:
    names = list_users(iam, deadline)
    stop = threading.Event()

    def one(item: tuple[str, str]) -> User | None:
        if stop.is_set():
            return None
        deadline.check()
        keys = list_keys(iam, item[0])
        return None if keys is None else User(name=item[0], path=item[1], keys=keys)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="iam-keys")
    try:
        futures: list[Future[User | None]] = [pool.submit(one, u) for u in names]
        done, pending = wait(futures, timeout=max(deadline.remaining(), 0.0),
                             return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None or pending:
            stop.set()
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
            raise DeadlineExceeded(f"cycle deadline of {deadline.seconds:g}s exceeded")
        users = [u for f in futures if (u := f.result()) is not None]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    users.sort(key=lambda u: u.name)
    return tuple(users)
