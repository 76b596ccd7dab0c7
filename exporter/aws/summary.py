"""GetAccountSummary: root access keys present and the number of users, once per listing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.inventory import AccountSummary

if TYPE_CHECKING:
    from mypy_boto3_iam import IAMClient


def account_summary(iam: IAMClient) -> AccountSummary:
    summary = iam.get_account_summary().get("SummaryMap", {})
    root = summary.get("AccountAccessKeysPresent")
    users = summary.get("Users")
    return AccountSummary(
        root_access_keys_present=int(root) if root is not None else None,
        users=int(users) if users is not None else None,
    )
