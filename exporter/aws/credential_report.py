"""The ``credential-report`` strategy: the whole account in a handful of calls.

GenerateCredentialReport → poll until COMPLETE → GetCredentialReport → parse the CSV.
AWS regenerates the report at most every 4 hours, so its counts can be that old; the
report's GeneratedTime is exported so the staleness is visible. The report has two key
slots per user and no key ids: a user with keys it cannot show is impossible in IAM
today (two keys is the quota), but key ids are simply unknown to this strategy.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from exporter.aws.errors import CredentialReportError, client_error_code
from exporter.inventory import AccessKey, KeyStatus, User

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient

ROOT_ROW = "<root_account>"
REQUIRED = ("user", "access_key_1_active", "access_key_1_last_rotated",
            "access_key_2_active", "access_key_2_last_rotated")
ABSENT = {"", "N/A", "not_supported", "no_information"}
# Errors after which asking again (after a pause) is the documented remedy.
RETRY_CODES = {"LimitExceeded", "ReportInProgress", "ReportNotPresent", "ReportExpired",
               "ServiceFailure"}


@dataclass(frozen=True, slots=True)
class Report:
    users: tuple[User, ...]
    root_keys: int | None  # keys on the <root_account> row; None when the row is absent
    generated: float | None


def _timestamp(value: str | None) -> float | None:
    if value is None or value.strip() in ABSENT:
        return None
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if stamp.tzinfo is None:  # the report is UTC; never read it in the host's zone
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    except (ValueError, OverflowError):
        raise CredentialReportError(f"credential report: bad timestamp {value[:40]!r}",
                                    code="CredentialReportInvalid") from None


def _repair(row: list[str], width: int, arn_col: int | None) -> list[str] | None:
    """Re-joins a row whose user name held unquoted commas (as moto writes it).

    AWS quotes such names; a row that is k*2 fields too wide is rebuilt only when the
    re-joined ARN really ends with the re-joined name.
    """
    extra = len(row) - width
    if arn_col != 1 or extra <= 0 or extra % 2:
        return None
    k = extra // 2
    name = ",".join(row[: k + 1])
    arn = ",".join(row[k + 1: 2 * k + 2])
    if not arn.endswith("/" + name):
        return None
    return [name, arn, *row[2 * k + 2:]]


def _rows(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    try:
        yield from reader
    except UnicodeDecodeError:
        raise CredentialReportError("credential report is not UTF-8 text",
                                    code="CredentialReportInvalid") from None
    except csv.Error as e:
        raise CredentialReportError(f"credential report is not valid CSV: {e}",
                                    code="CredentialReportInvalid") from None


def parse(content: bytes | str | Iterable[str], generated: float | None = None) -> Report:
    """Parses the report CSV by column name. Raises CredentialReportError on garbage."""
    # Streamed, row by row: at 50,000 users the report is ~10 MB, and a list of its rows
    # (or its text held as io.StringIO's UCS-4) would peak at over 100 MB.
    text: Iterable[str]
    if isinstance(content, bytes):
        text = io.TextIOWrapper(io.BytesIO(content), encoding="utf-8-sig", newline="")
    elif isinstance(content, str):
        text = io.StringIO(content, newline="")
    else:
        text = content
    rows = _rows(csv.reader(text))
    first = next(rows, None)
    if first is None:
        raise CredentialReportError("credential report is empty", code="CredentialReportInvalid")
    header = [h.strip() for h in first]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CredentialReportError(
            f"credential report lacks column(s) {', '.join(missing)}",
            code="CredentialReportInvalid")
    col = {name: i for i, name in enumerate(header)}
    arn_col = col.get("arn")
    users: dict[str, User] = {}
    root_keys: int | None = None
    for lineno, row in enumerate(rows, start=2):
        if not row or row == [""]:
            continue
        if len(row) != len(header):
            fixed = _repair(row, len(header), arn_col)
            if fixed is None:
                raise CredentialReportError(
                    f"credential report line {lineno}: expected {len(header)} fields, "
                    f"got {len(row)}", code="CredentialReportInvalid")
            row = fixed
        name = row[col["user"]]
        keys: list[AccessKey] = []
        for slot in (1, 2):
            active = row[col[f"access_key_{slot}_active"]].strip().lower()
            rotated = row[col[f"access_key_{slot}_last_rotated"]]
            if active not in ("true", "false"):
                raise CredentialReportError(
                    f"credential report line {lineno}: access_key_{slot}_active is "
                    f"{active[:20]!r}, expected true or false", code="CredentialReportInvalid")
            created = _timestamp(rotated)
            if active == "false" and created is None:
                continue  # empty slot
            used_col = col.get(f"access_key_{slot}_last_used_date")
            status: KeyStatus = "Active" if active == "true" else "Inactive"
            keys.append(AccessKey(
                key_id=None, status=status, created=created, slot=slot,
                last_used=_timestamp(row[used_col]) if used_col is not None else None,
            ))
        if name == ROOT_ROW:
            root_keys = len(keys)
            continue
        if not name:
            raise CredentialReportError(f"credential report line {lineno}: empty user name",
                                        code="CredentialReportInvalid")
        path = "/"
        if arn_col is not None:
            arn = row[arn_col]
            resource = arn.split(":", 5)[-1] if arn.count(":") >= 5 else ""
            if resource.startswith("user/") and resource.endswith("/" + name):
                path = resource[len("user"): len(resource) - len(name)]
        users[name] = User(name=name, path=path, keys=tuple(keys))
    return Report(
        users=tuple(sorted(users.values(), key=lambda u: u.name)),
        root_keys=root_keys,
        generated=generated,
    )


def _report_of(resp: Any) -> Report:
    generated = resp.get("GeneratedTime")
    when = generated.timestamp() if generated is not None else None
    content = resp.get("Content")
    if not content:
        # AWS always sends at least the header and the root account's row: an empty
        # report must never read as an account without users.
        raise CredentialReportError("credential report has no content",
                                    code="CredentialReportInvalid")
    return parse(content, when)


def fetch(iam: IAMClient, wait_seconds: float,
          sleep: Callable[[float], None] = time.sleep, first_delay: float = 1.0) -> Report:
    """Makes sure a fresh report exists (waiting up to wait_seconds for AWS to generate
    it), downloads it and parses it."""
    start = time.monotonic()
    budget = wait_seconds
    slept = 0.0  # counted too, so the budget holds whatever ``sleep`` really does
    delay = first_delay
    last = "not requested"
    while True:
        try:
            state = iam.generate_credential_report().get("State", "")
            last = f"state {state}"
            if state == "COMPLETE":
                return _report_of(iam.get_credential_report())
        except Exception as e:
            code = client_error_code(e)
            if code not in RETRY_CODES:
                raise
            last = code
        if max(time.monotonic() - start, slept) + delay > budget:
            raise CredentialReportError(
                f"credential report not ready after {wait_seconds:g}s ({last})",
                code="CredentialReportTimeout")
        sleep(delay)
        slept += delay
        delay = min(delay * 2, 10.0)
