"""Configuration: YAML → frozen, typed dataclasses, strictly validated.

Unknown keys are errors, and every error names the key path and what was expected
(``collection.strategy: expected one of list, credential-report, got 'bogus'``), so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

ENV_CONFIG = "IAM_KEY_EXPORTER_CONFIG"
DEFAULT_LISTEN = "0.0.0.0:9877"

# Environment overrides for the most common keys: variable → key path.
ENV_OVERRIDES: dict[str, str] = {
    "IAM_KEY_EXPORTER_LISTEN": "listen",
    "IAM_KEY_EXPORTER_INTERVAL_SECONDS": "interval_seconds",
    "IAM_KEY_EXPORTER_LOG_FORMAT": "log_format",
    "IAM_KEY_EXPORTER_LOG_LEVEL": "log_level",
    "IAM_KEY_EXPORTER_STRATEGY": "collection.strategy",
    "IAM_KEY_EXPORTER_CONCURRENCY": "collection.concurrency",
    "IAM_KEY_EXPORTER_SHARD_TOTAL": "sharding.total",
    "IAM_KEY_EXPORTER_SHARD_INDEX": "sharding.index",
    "IAM_KEY_EXPORTER_EVENTS_QUEUE_URL": "events.queue_url",
}

# Where a StatefulSet pod's name (and so its ordinal) is found when sharding.index is null.
POD_NAME_VARS = ("POD_NAME", "HOSTNAME")

# ASCII only (\w and \d would otherwise accept any Unicode letter or digit, and int()
# reads Unicode digits), and \Z rather than $ (which also matches before a final newline).
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}\Z", re.ASCII)
ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}\Z", re.ASCII)
SESSION_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}\Z", re.ASCII)
EXTERNAL_ID_RE = re.compile(r"^[\w+=,.@:/-]{2,1224}\Z", re.ASCII)
ACCOUNT_ID_RE = re.compile(r"^\d{12}\Z", re.ASCII)
OU_ID_RE = re.compile(r"^(ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32})\Z", re.ASCII)
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z", re.ASCII)
ORDINAL_RE = re.compile(r"-(\d+)\Z", re.ASCII)
# Labels iam_user_info has already; a tag label may not take one of these names.
RESERVED_LABELS = frozenset({"account_id", "user_name", "path", "exempt", "job", "instance"})
LISTEN_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})\Z", re.ASCII)


from exporter.yamlfile import ConfigError as ConfigError  # noqa: E402
from exporter.yamlfile import _build, _describe, parse_yaml  # noqa: E402
from exporter.yamlfile import read_text as read_text  # noqa: E402


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
        if self.include_names and not any(_regex(r).fullmatch(name)
                                          for r in self.include_names):
            return False
        return not any(_regex(r).fullmatch(name) for r in self.exclude_names)


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass(frozen=True)
class CollectionConfig:
    strategy: Strategy = "list"
    # Where the list strategy gets last-used dates: off, the credential report (one
    # report per cycle, matched to keys by creation time), or GetAccessKeyLastUsed per key.
    last_used: Literal["off", "credential-report", "api"] = "credential-report"
    concurrency: int = field(default=8, metadata=_rng(1, 64))
    # 16: the request budget and IAM's quota are per account, so accounts in parallel do
    # not compete for them; 16 paced accounts use about half a core.
    max_parallel_accounts: int = field(default=16, metadata=_rng(1, 64))
    # Deadline for one account's collection; None: 80 % of interval_seconds.
    # The minimum is below 0.8 s so that the resolved default (printed by check-config)
    # is itself a valid value for every allowed interval_seconds.
    timeout_seconds: float | None = field(default=None, metadata=_rng(0.1, 86400))
    credential_report: CredentialReportConfig = field(default_factory=CredentialReportConfig)
    users: UserFilterConfig = field(default_factory=UserFilterConfig)
    # After this many seconds without a successful cycle, an account's per-user series
    # are withdrawn (the last good data is served until then).
    max_stale_seconds: float = field(default=86400.0, metadata=_rng(60, 30 * 86400))
    # Shortest pause between the end of one cycle and the start of the next, when a
    # cycle overran its interval.
    min_pause_seconds: float = field(default=30.0, metadata=_rng(0, 86400))


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
    # Re-discover the accounts every this many cycles.
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

    @property
    def cycle_timeout(self) -> float:
        if self.collection.timeout_seconds is not None:
            return self.collection.timeout_seconds
        return self.interval_seconds * 0.8

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


def _scalar(raw: str) -> Any:
    """An environment value as the YAML scalar a user would have written."""
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            return  # the file's own value is wrong; leave it for validation to report
        node = child
    node[leaf] = value


def parse(text: str, env: Mapping[str, str] | None = None, source: str = "config") -> Config:
    """Parses YAML text (plus environment overrides) into a validated Config."""
    data = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_describe(data)}")
    overridden: dict[str, str] = {}
    for var, dotted in ENV_OVERRIDES.items():
        raw = (env or {}).get(var)
        if raw:
            _set_path(data, dotted, _scalar(raw))
            overridden[dotted] = var
    try:
        from exporter import validate  # it imports this module

        cfg: Config = _build(Config, data, "")
        validate.check(cfg)
        cfg = validate.resolve_shard(cfg, env or {})
    except ConfigError as e:
        msg = str(e)
        for dotted, var in overridden.items():
            if msg.startswith(dotted + ":"):
                raise ConfigError(f"{msg} (set by environment variable {var})") from None
        raise
    return cfg


def load(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Loads the config file at ``path`` (None: ``$IAM_KEY_EXPORTER_CONFIG`` or defaults)."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_CONFIG) or None
    if path is None:
        return parse("", env)
    text = read_text(path, f"{path}: cannot read config file", f"{path}: config file")
    cfg = parse(text, env, source=path)
    web_file = cfg.web.config_file
    if web_file and not os.path.isabs(web_file):
        # Like Prometheus' rule_files: a relative path is read next to the config file.
        web_file = os.path.join(os.path.dirname(os.path.abspath(path)), web_file)
        cfg = dataclasses.replace(cfg, web=dataclasses.replace(cfg.web, config_file=web_file))
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data (for check-config), with resolved defaults."""
    raw: dict[str, Any] = _plain(dataclasses.asdict(cfg))
    raw["include_self"] = cfg.collect_self
    raw["aws"]["region"] = cfg.region
    raw["aws"]["endpoint_url"] = cfg.endpoint_url
    raw["collection"]["timeout_seconds"] = cfg.cycle_timeout
    return raw


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
