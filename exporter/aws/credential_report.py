"""The ``credential-report`` strategy: the whole account in a handful of calls.

GenerateCredentialReport → poll until COMPLETE → GetCredentialReport → parse the CSV.
AWS regenerates the report at most every 4 hours, so its counts can be that old; the
report's GeneratedTime is exported so the staleness is visible. The report has two key
slots per user and no key ids: a user with keys it cannot show is impossible in IAM
today (two keys is the quota), but key ids are simply unknown to this strategy.
"""

from __future__ import annotations

import binascii
import codecs
import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from exporter.aws.errors import CredentialReportError, Deadline, client_error_code
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


# GetCredentialReport's answer is XML holding the CSV in base64: ~14 MB at 50,000 users.
# botocore would hold it three times over (the body, the XML text node, the decoded
# bytes) before the CSV is even read; instead the CSV is decoded and parsed straight
# from the body, a slice at a time, before botocore parses the (then tiny) rest.
_B64_STEP = 64 * 1024  # base64 characters decoded at a time (a multiple of 4)
_PARSED = "IamxParsedReport"
_FAILED = "IamxReportError"


def _base64_lines(body: bytes, start: int, end: int) -> Iterator[str]:
    """The text lines of the base64 data in body[start:end], decoded piece by piece."""
    view = memoryview(body)[start:end]
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    carry, partial = b"", ""
    for i in range(0, len(view), _B64_STEP):
        data = carry + bytes(view[i:i + _B64_STEP]).translate(None, b" \t\r\n")
        usable = len(data) - len(data) % 4
        carry = data[usable:]
        parts = (partial + utf8.decode(binascii.a2b_base64(data[:usable]))).split("\n")
        partial = parts.pop()
        for line in parts:
            yield line + "\n"
    if carry:
        raise CredentialReportError("credential report content is not valid base64",
                                    code="CredentialReportInvalid")
    rest = partial + utf8.decode(b"", final=True)
    if rest:
        yield rest


def _parse_in_place(response_dict: dict[str, Any], customized_response_dict: dict[str, Any],
                    **_: Any) -> None:
    """botocore's before-parse hook for GetCredentialReport (see above)."""
    body = response_dict.get("body")
    if response_dict.get("status_code") != 200 or not isinstance(body, bytes):
        return
    start = body.find(b"<Content>")
    end = body.find(b"</Content>", start)
    if start < 0 or end < 0:
        return  # leave it to botocore
    try:
        report = parse(_base64_lines(body, start + len(b"<Content>"), end))
    except (CredentialReportError, binascii.Error, UnicodeDecodeError) as e:
        customized_response_dict[_FAILED] = (
            e if isinstance(e, CredentialReportError) else CredentialReportError(
                f"credential report content is not valid: {e}", code="CredentialReportInvalid"))
    else:
        customized_response_dict[_PARSED] = report
    response_dict["body"] = body[:start] + body[end + len(b"</Content>"):]


def _report_of(resp: Any) -> Report:
    generated = resp.get("GeneratedTime")
    when = generated.timestamp() if generated is not None else None
    if _FAILED in resp:
        raise resp[_FAILED]
    if _PARSED in resp:
        report: Report = resp[_PARSED]
        return Report(users=report.users, root_keys=report.root_keys, generated=when)
    # Without the hook (botocore's Stubber in tests): from the parsed Content.
    return parse(resp.get("Content", b""), when)


def fetch(iam: IAMClient, wait_seconds: float, deadline: Deadline,
          sleep: Callable[[float], None] = time.sleep, first_delay: float = 1.0) -> Report:
    """Makes sure a fresh report exists, downloads it and parses it."""
    start = time.monotonic()
    budget = min(wait_seconds, max(deadline.remaining(), 0.0))
    slept = 0.0  # counted too, so the budget holds whatever ``sleep`` really does
    delay = first_delay
    last = "not requested"
    while True:
        deadline.check()
        try:
            state = iam.generate_credential_report().get("State", "")
            last = f"state {state}"
            if state == "COMPLETE":
                iam.meta.events.register("before-parse.iam.GetCredentialReport",
                                         _parse_in_place, unique_id="iamx-report-stream")
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
