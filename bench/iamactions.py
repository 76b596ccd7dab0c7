"""The fake's IAM actions: one function per action, on one account's data, returning the
inside of ``<ActionResult>`` in the XML shapes AWS and moto use (botocore parses them;
tests/test_fakeiam_contract.py checks the exporter sees the same through moto and here).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from bench.fakedata import User, iso

if TYPE_CHECKING:
    from bench.fakeservice import Account

PAGE_DEFAULT = 100  # AWS's default MaxItems
PAGE_MAX = 1000
# How long AWS keeps a generated report before GenerateCredentialReport starts a new one.
REPORT_TTL = 4 * 3600

Params = dict[str, str]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _page_size(params: Params) -> int:
    raw = params.get("MaxItems")
    if raw is None:
        return PAGE_DEFAULT
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, "ValidationError", f"Invalid MaxItems {raw!r}") from None
    if not 1 <= size <= PAGE_MAX:
        raise ApiError(400, "ValidationError", (
            f"1 validation error detected: Value '{size}' at 'maxItems' failed to "
            "satisfy constraint: Member must have value less than or equal to 1000"))
    return size


def _page(params: Params, total: int) -> tuple[int, int]:
    size = _page_size(params)
    start = 0
    marker = params.get("Marker")
    if marker:
        try:
            start = int(base64.b64decode(marker).decode().rpartition(":")[2])
        except ValueError:
            raise ApiError(400, "InvalidInput", "Invalid Marker") from None
        if not 0 < start <= total:
            raise ApiError(400, "InvalidInput", "Invalid Marker")
    return start, min(start + size, total)


def _more(action: str, end: int, total: int) -> str:
    if end >= total:
        return "<IsTruncated>false</IsTruncated>"
    marker = base64.b64encode(f"{action}:{end}".encode()).decode()
    return f"<IsTruncated>true</IsTruncated><Marker>{marker}</Marker>"


def _user(acct: Account, params: Params) -> User:
    name = params.get("UserName")
    if not name:
        raise ApiError(400, "ValidationError", "UserName is required")
    user = acct.by_name.get(name)
    if user is None:
        raise ApiError(404, "NoSuchEntity", f"The user with name {name} cannot be found.")
    return user


def _user_xml(acct: Account, u: User) -> str:
    return (f"<Path>{escape(u.path)}</Path><UserName>{escape(u.name)}</UserName>"
            f"<UserId>{u.user_id}</UserId><Arn>{escape(acct.data.arn(u))}</Arn>"
            f"<CreateDate>{iso(u.created)}</CreateDate>")


def _tags_xml(tags: dict[str, str]) -> str:
    return "".join(f"<member><Key>{escape(k)}</Key><Value>{escape(v)}</Value></member>"
                   for k, v in tags.items())


def list_users(acct: Account, p: Params) -> str:
    users = acct.data.users
    prefix = p.get("PathPrefix")
    if prefix:
        users = [u for u in users if u.path.startswith(prefix)]
    start, end = _page(p, len(users))
    members = "".join(f"<member>{_user_xml(acct, u)}</member>" for u in users[start:end])
    return f"<Users>{members}</Users>{_more('ListUsers', end, len(users))}"


def list_access_keys(acct: Account, p: Params) -> str:
    u = _user(acct, p)
    members = "".join(
        f"<member><UserName>{escape(u.name)}</UserName><AccessKeyId>{k.key_id}"
        f"</AccessKeyId><Status>{k.status}</Status><CreateDate>{iso(k.created)}"
        "</CreateDate></member>" for k in u.keys)
    return (f"<UserName>{escape(u.name)}</UserName><AccessKeyMetadata>{members}"
            "</AccessKeyMetadata><IsTruncated>false</IsTruncated>")


def get_access_key_last_used(acct: Account, p: Params) -> str:
    found = acct.by_key.get(p.get("AccessKeyId", ""))
    if found is None:
        raise ApiError(403, "AccessDenied", "The access key does not belong to you.")
    u, k = found
    used = f"<LastUsedDate>{iso(k.last_used)}</LastUsedDate>" if k.last_used else ""
    return (f"<UserName>{escape(u.name)}</UserName><AccessKeyLastUsed>{used}"
            f"<ServiceName>{k.last_used_service}</ServiceName>"
            f"<Region>{k.last_used_region}</Region></AccessKeyLastUsed>")


def get_account_summary(acct: Account, _: Params) -> str:
    values = {
        "Users": len(acct.data.users), "UsersQuota": 5000, "Groups": 0,
        "GroupsQuota": 300, "Roles": 0, "RolesQuota": 1000, "Policies": 0,
        "PoliciesQuota": 1500, "AccessKeysPerUserQuota": 2,
        "AccountAccessKeysPresent": 1 if acct.data.root_keys else 0,
        "AccountMFAEnabled": 0, "AccountSigningCertificatesPresent": 0,
        "MFADevices": 0, "MFADevicesInUse": 0,
    }
    entries = "".join(f"<entry><key>{k}</key><value>{v}</value></entry>"
                      for k, v in values.items())
    return f"<SummaryMap>{entries}</SummaryMap>"


def generate_credential_report(acct: Account, _: Params) -> str:
    now = time.time()
    if acct.report_started is None or now - acct.report_started > REPORT_TTL:
        acct.report_started, acct.report_body = now, None
        return ("<State>STARTED</State><Description>No report exists. Starting a new "
                "report generation task</Description>")
    return "<State>COMPLETE</State>"


def get_credential_report(acct: Account, _: Params) -> str:
    if acct.report_started is None:
        raise ApiError(410, "ReportNotPresent", "Credential report not present.")
    if acct.report_body is None:
        acct.report_body = base64.b64encode(acct.data.report_csv())
    return (f"<Content>{acct.report_body.decode()}</Content>"
            f"<ReportFormat>text/csv</ReportFormat>"
            f"<GeneratedTime>{iso(int(acct.report_started))}</GeneratedTime>")


def get_account_authorization_details(acct: Account, p: Params) -> str:
    filters = {v for k, v in p.items() if k.startswith("Filter.member.")}
    users = acct.data.users if not filters or "User" in filters else []
    start, end = _page(p, len(users))
    members = "".join(
        f"<member>{_user_xml(acct, u)}<UserPolicyList/><GroupList/>"
        f"<AttachedManagedPolicies/>"
        + (f"<Tags>{_tags_xml(u.tags)}</Tags>" if u.tags else "") + "</member>"
        for u in users[start:end])
    return (f"<UserDetailList>{members}</UserDetailList><GroupDetailList/>"
            f"<RoleDetailList/><Policies/>"
            f"{_more('GetAccountAuthorizationDetails', end, len(users))}")


def get_user(acct: Account, p: Params) -> str:
    """The named user with its tags (the exporter re-reads a user it does not know yet
    this way when an event names it)."""
    u = _user(acct, p)
    tags = f"<Tags>{_tags_xml(u.tags)}</Tags>" if u.tags else ""
    return f"<User>{_user_xml(acct, u)}{tags}</User>"


def list_user_tags(acct: Account, p: Params) -> str:
    u = _user(acct, p)
    return f"<Tags>{_tags_xml(u.tags)}</Tags><IsTruncated>false</IsTruncated>"


HANDLERS: dict[str, Callable[[Account, Params], str]] = {
    "ListUsers": list_users,
    "ListAccessKeys": list_access_keys,
    "GetAccessKeyLastUsed": get_access_key_last_used,
    "GetAccountSummary": get_account_summary,
    "GenerateCredentialReport": generate_credential_report,
    "GetCredentialReport": get_credential_report,
    "GetAccountAuthorizationDetails": get_account_authorization_details,
    "ListUserTags": list_user_tags,
    "GetUser": get_user,
}
