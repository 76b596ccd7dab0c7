"""One account, one cycle: run the configured strategy and the account summary."""

from __future__ import annotations

from exporter.aws import credential_report, list_strategy
from exporter.aws.errors import Deadline, error_code
from exporter.aws.session import Target
from exporter.aws.summary import account_summary
from exporter.config import Config
from exporter.inventory import AccountInventory, AccountSummary


def collect_account(target: Target, cfg: Config, deadline: Deadline) -> AccountInventory:
    """Collects one account; raises on failure (the poller keeps the last good data)."""
    account_id = target.resolve_account_id()
    iam = target.iam()
    strategy = cfg.collection.strategy
    warnings: list[str] = []
    report_generated: float | None = None
    root_from_report: int | None = None
    if strategy == "list":
        users = list_strategy.collect_users(iam, cfg.collection.concurrency, deadline)
    else:
        report = credential_report.fetch(iam, cfg.collection.credential_report.wait_seconds,
                                         deadline)
        users, report_generated, root_from_report = (report.users, report.generated,
                                                     report.root_keys)
    deadline.check()
    try:
        summary = account_summary(iam)
    except Exception as e:  # a gap, not a failure: the keys are what matters
        warnings.append(f"GetAccountSummary: {error_code(e)}")
        summary = AccountSummary()
    if summary.root_access_keys_present is None and root_from_report is not None:
        summary = AccountSummary(int(root_from_report > 0), summary.users)
    return AccountInventory(
        account_id=account_id,
        strategy=strategy,
        users=users,
        summary=summary,
        report_generated=report_generated,
        warnings=tuple(warnings),
    )
