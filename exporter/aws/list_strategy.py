"""The ``list`` strategy: exact, live key counts.

ListUsers a page at a time (1,000 users per page), then one ListAccessKeys per user in a
bounded thread pool. One IAM call per user is the price of exact live counts.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from exporter.aws.errors import CollectionError, Deadline, client_error_code
from exporter.inventory import AccessKey, User

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

PAGE_SIZE = 1000


def list_users(iam: IAMClient, deadline: Deadline) -> list[tuple[str, str]]:
    """All users as (name, path), following Marker while IsTruncated."""
    users: list[tuple[str, str]] = []
    marker: str | None = None
    while True:
        deadline.check()
        kwargs: dict[str, Any] = {"MaxItems": PAGE_SIZE}
        if marker:
            kwargs["Marker"] = marker
        page = iam.list_users(**kwargs)
        users.extend((u["UserName"], u.get("Path", "/")) for u in page.get("Users", []))
        if not page.get("IsTruncated"):
            return users
        marker = page.get("Marker")
        if not marker:
            raise CollectionError("ListUsers said IsTruncated but gave no Marker",
                                  code="InvalidPagination")


def list_keys(iam: IAMClient, user_name: str) -> tuple[AccessKey, ...] | None:
    """The user's keys, or None when the user was deleted since ListUsers."""
    keys: list[AccessKey] = []
    marker: str | None = None
    try:
        while True:
            kwargs: dict[str, Any] = {"UserName": user_name}  # role credentials require it
            if marker:
                kwargs["Marker"] = marker
            page = iam.list_access_keys(**kwargs)
            for meta in page.get("AccessKeyMetadata", []):
                status = meta.get("Status")
                if status not in ("Active", "Inactive"):
                    raise CollectionError(f"unexpected key status {status!r}",
                                          code="InvalidResponse")
                created = meta.get("CreateDate")
                keys.append(AccessKey(
                    key_id=meta.get("AccessKeyId"),
                    status=status,
                    created=created.timestamp() if created is not None else None,
                ))
            if not page.get("IsTruncated"):
                break
            marker = page.get("Marker")
            if not marker:  # stopping here would silently undercount the user's keys
                raise CollectionError("ListAccessKeys said IsTruncated but gave no Marker",
                                      code="InvalidPagination")
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
            deadline.check()
            raise CollectionError("key listing did not finish", code="DeadlineExceeded")
        users = [u for f in futures if (u := f.result()) is not None]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    users.sort(key=lambda u: u.name)
    return tuple(users)
