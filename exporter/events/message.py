"""One SQS message body → a hint (which user of which account to re-read) or "ignored".

The body is an EventBridge event as EventBridge delivers it to an SQS target (or wrapped
once in an SNS notification, for a fan-out through SNS without raw delivery). It comes
from outside the process: every field is type-checked, and anything that is not what
CloudTrail writes is an InvalidEvent (the message stays for the dead-letter queue), never
an exception of another kind.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SOURCE = "aws.iam"
DETAIL_TYPE = "AWS API Call via CloudTrail"
KEY_EVENTS = frozenset({"CreateAccessKey", "UpdateAccessKey", "DeleteAccessKey"})
# Events that change the user itself (existence, path, tags), not only its keys.
USER_EVENTS = frozenset({"CreateUser", "DeleteUser", "TagUser", "UntagUser"})
HANDLED = KEY_EVENTS | USER_EVENTS
# SQS takes bodies up to 1 MiB; a CloudTrail record of these calls is a few KB.
MAX_BODY = 1024 * 1024

ACCOUNT_RE = re.compile(r"^\d{12}\Z", re.ASCII)
# IAM's user name pattern.
USER_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}\Z", re.ASCII)
# CloudTrail writes "2024-05-01T12:34:56Z"; fractions and offsets are accepted too.
TIME_RE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)\Z", re.ASCII)


class InvalidEvent(ValueError):
    """The body is not a readable event; str() says why (never the body itself)."""


@dataclass(frozen=True, slots=True)
class Hint:
    """A handled IAM call: re-read this user of this account."""

    account_id: str
    user_name: str
    event_name: str
    event_time: float | None  # unix seconds (CloudTrail eventTime, else the event's time)


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed event that needs nothing: another source, a failed call, ..."""

    reason: str


def _get(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """obj[key] if present and of type kind; None if absent or null."""
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int in Python: never accept it where a number or string is expected.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidEvent(f"{where}{key} is a {type(value).__name__}, "
                           f"expected a {kind.__name__}")
    return value


def _time(value: str | None, where: str) -> float | None:
    if value is None:
        return None
    if not TIME_RE.match(value):
        raise InvalidEvent(f"{where} is not an ISO 8601 time")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except (ValueError, OverflowError):  # month 13, year 0, past year 9999 in UTC, ...
        raise InvalidEvent(f"{where} is not a valid time") from None


def _load(body: object) -> dict[str, Any]:
    if not isinstance(body, str):
        raise InvalidEvent("no body")
    if len(body) > MAX_BODY:
        raise InvalidEvent(f"body of {len(body)} characters (more than {MAX_BODY})")
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidEvent("JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and numbers too long to convert
        raise InvalidEvent(f"not JSON ({str(e)[:80]})") from None
    if not isinstance(data, dict):
        raise InvalidEvent(f"JSON {type(data).__name__}, expected an object")
    return data


def _user_name(detail: dict[str, Any], own_keys: bool) -> str | None:
    """requestParameters.userName, else (``own_keys``: a caller may act on its own keys)
    the response's accessKey.userName, else the calling IAM user. Every one of them is
    type-checked, the ones not used too."""
    params = _get(detail, "requestParameters", dict, "detail.") or {}
    response = _get(detail, "responseElements", dict, "detail.") or {}
    key = _get(response, "accessKey", dict, "detail.responseElements.") or {}
    who = _get(detail, "userIdentity", dict, "detail.") or {}
    names = (_get(params, "userName", str, "detail.requestParameters."),
             _get(key, "userName", str, "detail.responseElements.accessKey."),
             _get(who, "userName", str, "detail.userIdentity.")
             if _get(who, "type", str, "detail.userIdentity.") == "IAMUser" else None)
    return next((str(n) for n in names[:3 if own_keys else 1] if n is not None), None)


def parse(body: object) -> Hint | Ignored:
    """The hint of one message body, or Ignored; raises InvalidEvent."""
    data = _load(body)
    if "source" not in data and data.get("Type") == "Notification":
        data = _load(_get(data, "Message", str, "SNS "))
    source = _get(data, "source", str, "")
    if source is None:
        raise InvalidEvent("no source (not an EventBridge event)")
    if source != SOURCE:
        return Ignored("source")
    if _get(data, "detail-type", str, "") != DETAIL_TYPE:
        return Ignored("detail-type")
    account = _get(data, "account", str, "")
    if account is None or not ACCOUNT_RE.match(account):
        raise InvalidEvent("no 12-digit account")
    detail = _get(data, "detail", dict, "")
    if detail is None:
        raise InvalidEvent("no detail")
    name = _get(detail, "eventName", str, "detail.")
    if name is None:
        raise InvalidEvent("no detail.eventName")
    if name not in HANDLED:
        return Ignored("event")
    if _get(detail, "errorCode", str, "detail.") is not None:
        return Ignored("failed call")
    when = _time(_get(detail, "eventTime", str, "detail."), "detail.eventTime")
    if when is None:
        when = _time(_get(data, "time", str, ""), "time")
    user = _user_name(detail, name in KEY_EVENTS)
    if user is None:
        who = detail.get("userIdentity")
        if isinstance(who, dict) and who.get("type") == "Root":
            # The root user's own keys: GetAccountSummary at the next listing reads them.
            return Ignored("root")
        raise InvalidEvent(f"{name} names no user")
    if not USER_NAME_RE.match(user):
        raise InvalidEvent(f"{name}: the user name is not an IAM user name")
    return Hint(account, user, name, when)
