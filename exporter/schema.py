"""The config's shape: frozen, typed dataclasses with their defaults and bounds.

``exporter.config`` reads a file into these (``yamlfile.build``) and has
``exporter.validate`` check what spans more than one value's type; the rest of the
package imports them from ``exporter.config``.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_LISTEN = "0.0.0.0:9877"

# ASCII only (\w and \d would otherwise accept any Unicode letter or digit, and int()
# reads Unicode digits), and \Z rather than $ (which also matches before a final newline).
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}\Z", re.ASCII)


def _rng(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class AwsConfig:
    # None: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1 (IAM is global; this picks STS).
    region: str | None = None
    # None: AWS_ENDPOINT_URL (and the per-service variants) or the real AWS endpoints.
    endpoint_url: str | None = None
    retry_mode: Literal["standard", "adaptive"] = "standard"
    # 8: a call throttled 7 times in a row is rare even when a fifth of calls are throttled.
    max_attempts: int = field(default=8, metadata=_rng(1, 20))
    connect_timeout_seconds: float = field(default=5.0, metadata=_rng(0.1, 120))
    read_timeout_seconds: float = field(default=20.0, metadata=_rng(0.1, 300))
    # IAM requests per second per account, every IAM call and retry counted. 10 is half
    # of what IAM's shared per-account quota is commonly measured at, and reads a full
    # 5,000-user account in about 8.5 minutes (inside the 15-minute default interval).
    max_requests_per_second: float = field(default=10.0, metadata=_rng(0.1, 1000))


@dataclass(frozen=True)
class CredentialReportConfig:
    # How long to wait for GenerateCredentialReport to reach COMPLETE.
    wait_seconds: float = field(default=120.0, metadata=_rng(1, 3600))


Strategy = Literal["list", "credential-report"]


@dataclass(frozen=True)
class UserFilterConfig:
    # Path prefixes (e.g. "/engineering/"); empty: every path.
    include_paths: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()
    # Python regular expressions matched against the whole user name; empty: every name.
    include_names: tuple[str, ...] = ()
    exclude_names: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.include_paths or self.exclude_paths or self.include_names
                    or self.exclude_names)

    def matches(self, name: str, path: str) -> bool:
        # The loader makes both tuples: str.startswith takes the whole tuple at once.
        if self.include_paths and not path.startswith(self.include_paths):
            return False
        if path.startswith(self.exclude_paths):
            return False
        if self.include_names and not any(regex(r).fullmatch(name)
                                          for r in self.include_names):
            return False
        return not any(regex(r).fullmatch(name) for r in self.exclude_names)


@functools.cache
def regex(pattern: str) -> re.Pattern[str]:
    """A user-name pattern, compiled once (validate checks that it compiles)."""
    return re.compile(pattern)


# Settings of the collection cycles that continuous reads replaced: still accepted (an
# upgrade must not fail), ignored, warned about at start.
DEPRECATED_KEYS = ("collection.max_parallel_accounts", "collection.timeout_seconds",
                   "collection.min_pause_seconds")


@dataclass(frozen=True)
class CollectionConfig:
    strategy: Strategy = "list"
    # Where the list strategy gets last-used dates: off, the credential report (one
    # report per interval, matched to keys by creation time), or GetAccessKeyLastUsed per
    # key (each answer cached for hours).
    last_used: Literal["off", "credential-report", "api"] = "credential-report"
    # IAM calls in flight per account at most (each account's request budget paces them).
    concurrency: int = field(default=8, metadata=_rng(1, 64))
    # Deprecated, ignored (see DEPRECATED): settings of the collection cycles, which
    # continuous reads replaced. Still accepted, so that an upgrade does not fail.
    max_parallel_accounts: int | None = field(default=None, metadata=_rng(1, 64))
    timeout_seconds: float | None = field(default=None, metadata=_rng(0.1, 86400))
    credential_report: CredentialReportConfig = field(default_factory=CredentialReportConfig)
    users: UserFilterConfig = field(default_factory=UserFilterConfig)
    # After this many seconds without a successful pass, an account's per-user series
    # are withdrawn (the last good data is served until then).
    max_stale_seconds: float = field(default=86400.0, metadata=_rng(60, 30 * 86400))
    min_pause_seconds: float | None = field(default=None, metadata=_rng(0, 86400))


@dataclass(frozen=True)
class ExemptTagConfig:
    key: str = "iam-key-exporter/exempt"
    value: str = "true"


@dataclass(frozen=True)
class MetricsConfig:
    # False: only per-account aggregates (no series per user or per key).
    per_user: bool = True
    # False: no per-key created / last-used series.
    per_key: bool = True
    # The access_key_id label: the full id, its last 4 characters, or none ("key1", ...).
    access_key_id: Literal["full", "suffix", "none"] = "full"
    # IAM user tag key → label name on iam_user_info.
    user_tags: dict[str, str] = field(default_factory=dict)
    exempt_tag: ExemptTagConfig = field(default_factory=ExemptTagConfig)


@dataclass(frozen=True)
class AccountConfig:
    role_arn: str
    external_id: str | None = None
    name: str | None = None
    session_name: str = "iam-key-exporter"
    # Overrides collection.strategy for this account.
    strategy: Strategy | None = None

    @property
    def account_id(self) -> str:
        m = ROLE_ARN_RE.match(self.role_arn)
        assert m, "validated at load"
        return m.group(1)


@dataclass(frozen=True)
class OrganizationsConfig:
    enabled: bool = False
    # The read-only role deploy/aws/member-role.yaml creates in every member account.
    role_name: str = "iam-key-exporter-member"
    external_id: str | None = None
    session_name: str = "iam-key-exporter"
    include_accounts: tuple[str, ...] = ()
    exclude_accounts: tuple[str, ...] = ()
    # OU or root ids; the whole subtree under each is walked.
    include_ous: tuple[str, ...] = ()
    exclude_ous: tuple[str, ...] = ()
    # Re-discover the accounts every this many intervals.
    refresh_cycles: int = field(default=12, metadata=_rng(1, 10000))


@dataclass(frozen=True)
class ShardingConfig:
    total: int = field(default=1, metadata=_rng(1, 1000))
    # None: the ordinal of $POD_NAME or $HOSTNAME ("iam-key-exporter-2" → 2) when total > 1.
    index: int | None = field(default=None, metadata=_rng(0, 999))

    @property
    def shard(self) -> int:
        return self.index or 0


@dataclass(frozen=True)
class EventsConfig:
    # SQS queue that an EventBridge rule fills with the CloudTrail events of IAM calls;
    # null: no events, polling only.
    queue_url: str | None = None
    # Long-poll wait of one ReceiveMessage (SQS allows 0 to 20).
    wait_seconds: int = field(default=20, metadata=_rng(0, 20))
    # Seconds a received message stays hidden before SQS offers it again (a failed
    # re-read is retried after this).
    visibility_timeout_seconds: int = field(default=60, metadata=_rng(1, 43200))
    # The dead-letter queue, for its depth metric; null: the one named by the queue's
    # redrive policy (same account and region, as SQS requires).
    dead_letter_queue_url: str | None = None


@dataclass(frozen=True)
class WebConfig:
    threads: int = field(default=8, metadata=_rng(1, 256))
    shutdown_grace_seconds: float = field(default=8.0, metadata=_rng(1, 300))
    # exporter-toolkit style web config file: TLS and basic auth for the endpoints.
    config_file: str | None = None


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    # 15 minutes: a full 5,000-user account at the default request budget takes ~8.5.
    interval_seconds: float = field(default=900.0, metadata=_rng(1, 86400))
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Also collect the account of the exporter's own credentials. None: only when no
    # accounts are listed and Organizations discovery is off.
    include_self: bool | None = None
    aws: AwsConfig = field(default_factory=AwsConfig)
    collection: CollectionConfig = field(default_factory=CollectionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    accounts: tuple[AccountConfig, ...] = ()
    organizations: OrganizationsConfig = field(default_factory=OrganizationsConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    web: WebConfig = field(default_factory=WebConfig)

    @property
    def collect_self(self) -> bool:
        if self.include_self is not None:
            return self.include_self
        return not self.accounts and not self.organizations.enabled

    def deprecated(self) -> list[str]:
        """The deprecated keys this config sets (accepted, ignored)."""
        return [key for key in DEPRECATED_KEYS
                if getattr(self.collection, key.split(".")[1]) is not None]

    @property
    def region(self) -> str:
        return (
            self.aws.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )

    @property
    def endpoint_url(self) -> str | None:
        return self.aws.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
