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
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

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


class ConfigError(Exception):
    """A config problem; str() is the user-facing message, starting with the key path."""


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
    max_parallel_accounts: int = field(default=4, metadata=_rng(1, 64))
    # Deadline for one account's collection; None: 80 % of interval_seconds, at most 600 s.
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
        return min(self.interval_seconds * 0.8, 600.0)

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


# ---------------------------------------------------------------------------------------
# Loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose documents are checked for duplicate mapping keys first (PyYAML
    keeps the last one silently; see _check_duplicates), and whose scalar constructors
    fail with a YAMLError rather than whatever Python raised (``2001-02-30`` looks like a
    timestamp and gives a ValueError, ``!!bool maybe`` a KeyError, ...)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError) as e:
            kind = str(node.tag).rsplit(":", 1)[-1]
            detail = f" ({e})" if type(e) is ValueError else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_describe(node.value)} as {kind}{detail}",
                node.start_mark) from None


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicates(loader: _StrictLoader, node: yaml.Node, path: str,
                      visited: set[int]) -> None:
    """Raises ConfigError naming the full key path of the first duplicate mapping key.

    Walks the composed node graph (aliases make it a graph, possibly cyclic) before
    construction, so the path is known. Non-scalar keys are left to the constructor,
    which rejects them as unhashable; merge keys (<<) are left to it as well.
    """
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                return
            if key_node.tag == _MERGE_TAG:
                key: Any = "<<"
            else:
                key = loader.construct_object(key_node)
                try:
                    hash(key)
                except TypeError:  # e.g. "? !!set" — the constructor reports it
                    return
            child = _join(path, _key_name(key))
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"{child}: duplicate key (line {line}, first at line "
                                  f"{first_line[key]})")
            first_line[key] = line
            _check_duplicates(loader, value_node, child, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(loader, item, f"{path}[{i}]", visited)


def _load_yaml(text: str) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(loader, node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str | None = None, *, context: bool = True) -> Any:
    """The YAML document in ``text`` ({} when blank), or a ConfigError
    "<source>: invalid YAML at line L, column C: <problem>" ("invalid YAML ..." when
    source is None). ``context`` leads the problem with PyYAML's context ("while
    scanning a quoted scalar, ..."). Duplicate keys raise _check_duplicates' ConfigError."""
    head = "invalid YAML" if source is None else f"{source}: invalid YAML"
    try:
        return _load_yaml(text) if text.strip() else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        said = [getattr(e, "context", None) if context else None, getattr(e, "problem", None)]
        problem = ", ".join(str(x) for x in said if x) or str(e)
        raise ConfigError(f"{head}{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{head}: nested too deeply") from None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_name(key: Any) -> str:
    """A key as it goes into a message: odd ones (empty, line breaks) quoted."""
    text = str(key)
    return text if text and text.isprintable() else repr(key)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path, meta)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise ConfigError(
                f"{path}: expected one of {', '.join(choices)}, got {_describe(value)}"
            )
        return value
    if origin is tuple:
        (item_tp, _) = get_args(tp)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        return tuple(_convert(item_tp, v, f"{path}[{i}]", {}) for i, v in enumerate(value))
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        return {_convert(key_tp, k, f"{path} key", {}): _convert(value_tp, v, f"{path}.{k}", {})
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if tp is int or tp is float:
        ok = isinstance(value, int) if tp is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            kind = "an integer" if tp is int else "a number"
            raise ConfigError(f"{path}: expected {kind}, got {_describe(value)}")
        lo, hi = meta.get("min"), meta.get("max")
        # "not >=" rather than "<" so that NaN (.nan, or "nan" from the env) is rejected.
        if (lo is not None and not value >= lo) or (hi is not None and not value <= hi):
            raise ConfigError(f"{path}: expected a value from {lo} to {hi}, got {value}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # programming error


def _build(cls: type[Any], data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_describe(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{_join(path, _key_name(key))}: unknown key (known keys: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name), f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required key is missing")
    return cls(**kwargs)


def check_listen(value: str, where: str = "listen") -> None:
    m = LISTEN_RE.match(value)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT with a port from 1 to 65535, "
                          f"got {_describe(value)}")


def _check(cfg: Config) -> None:
    """Checks that span one value's type: formats and cross-field rules."""
    check_listen(cfg.listen)
    url = cfg.aws.endpoint_url
    if url is not None and not _is_http_url(url):
        raise ConfigError(f"aws.endpoint_url: expected an http(s) URL, "
                          f"got {_describe(cfg.aws.endpoint_url)}")
    seen: dict[str, int] = {}
    for i, acct in enumerate(cfg.accounts):
        p = f"accounts[{i}]"
        if not ROLE_ARN_RE.match(acct.role_arn):
            raise ConfigError(f"{p}.role_arn: expected arn:aws:iam::<12-digit account>:"
                              f"role/<name>, got {_describe(acct.role_arn)}")
        _check_assume_role(p, acct.external_id, acct.session_name)
        if acct.account_id in seen:
            raise ConfigError(f"{p}.role_arn: account {acct.account_id} is already listed "
                              f"at accounts[{seen[acct.account_id]}]")
        seen[acct.account_id] = i
    _check_organizations(cfg.organizations)
    _check_users(cfg.collection.users)
    _check_metrics(cfg.metrics)
    if cfg.sharding.index is not None and cfg.sharding.index >= cfg.sharding.total:
        raise ConfigError(f"sharding.index: expected a value from 0 to "
                          f"{cfg.sharding.total - 1} (sharding.total - 1), "
                          f"got {cfg.sharding.index}")
    if not (cfg.collect_self or cfg.accounts or cfg.organizations.enabled):
        raise ConfigError("include_self: false leaves no account to collect; list accounts "
                          "or enable organizations")
    for key in ("queue_url", "dead_letter_queue_url"):
        url = getattr(cfg.events, key)
        if url is not None and not _is_http_url(url):
            raise ConfigError(f"events.{key}: expected an https URL of an SQS queue, "
                              f"got {_describe(url)}")
    web_file = cfg.web.config_file
    if web_file is not None and not web_file.strip():
        raise ConfigError("web.config_file: expected a file path, got ''")


def _check_assume_role(p: str, external_id: str | None, session_name: str) -> None:
    if external_id is not None and not EXTERNAL_ID_RE.match(external_id):
        raise ConfigError(f"{p}.external_id: expected 2-1224 characters of [\\w+=,.@:/-]")
    if not SESSION_NAME_RE.match(session_name):
        raise ConfigError(f"{p}.session_name: expected 2-64 characters of [\\w+=,.@-], "
                          f"got {_describe(session_name)}")


def _check_organizations(org: OrganizationsConfig) -> None:
    p = "organizations"
    if not ROLE_NAME_RE.match(org.role_name):
        raise ConfigError(f"{p}.role_name: expected an IAM role name, "
                          f"got {_describe(org.role_name)}")
    _check_assume_role(p, org.external_id, org.session_name)
    for key in ("include_accounts", "exclude_accounts"):
        for i, v in enumerate(getattr(org, key)):
            if not ACCOUNT_ID_RE.match(v):
                raise ConfigError(f"{p}.{key}[{i}]: expected a 12-digit account id (quoted), "
                                  f"got {_describe(v)}")
    for key in ("include_ous", "exclude_ous"):
        for i, v in enumerate(getattr(org, key)):
            if not OU_ID_RE.match(v):
                raise ConfigError(f"{p}.{key}[{i}]: expected an OU id (ou-xxxx-xxxxxxxx) or "
                                  f"a root id (r-xxxx), got {_describe(v)}")


def _check_users(users: UserFilterConfig) -> None:
    for key in ("include_names", "exclude_names"):
        for i, pattern in enumerate(getattr(users, key)):
            try:
                _regex(pattern)
            except re.error as e:
                raise ConfigError(f"collection.users.{key}[{i}]: invalid regular expression "
                                  f"{_describe(pattern)}: {e}") from None
    for key in ("include_paths", "exclude_paths"):
        for i, prefix in enumerate(getattr(users, key)):
            if not prefix.startswith("/"):
                raise ConfigError(f"collection.users.{key}[{i}]: expected a path prefix "
                                  f"starting with /, got {_describe(prefix)}")


def _check_metrics(m: MetricsConfig) -> None:
    seen: dict[str, str] = {}
    for tag, label in m.user_tags.items():
        where = f"metrics.user_tags.{tag}"
        if not 1 <= len(tag) <= 128:
            raise ConfigError(f"{where}: expected a tag key of 1 to 128 characters")
        if not LABEL_NAME_RE.match(label) or label.startswith("__"):
            raise ConfigError(f"{where}: expected a Prometheus label name "
                              f"([a-zA-Z_][a-zA-Z0-9_]*, not starting with __), "
                              f"got {_describe(label)}")
        if label in RESERVED_LABELS:
            raise ConfigError(f"{where}: label name {label!r} is reserved (reserved: "
                              f"{', '.join(sorted(RESERVED_LABELS))})")
        if label in seen:
            raise ConfigError(f"{where}: label name {label!r} is already used for tag "
                              f"{seen[label]!r}")
        seen[label] = tag
    if not 1 <= len(m.exempt_tag.key) <= 128:
        raise ConfigError("metrics.exempt_tag.key: expected a tag key of 1 to 128 characters")


def _resolve_shard(cfg: Config, env: Mapping[str, str]) -> Config:
    """Fills in sharding.index from a StatefulSet pod name's ordinal where it is null."""
    sh = cfg.sharding
    if sh.index is not None or sh.total == 1:
        return cfg
    for var in POD_NAME_VARS:
        m = ORDINAL_RE.search(env.get(var, ""))
        if m:
            index = int(m.group(1))
            if index >= sh.total:
                raise ConfigError(f"sharding.index: ${var} ({env[var]!r}) gives shard {index}, "
                                  f"but sharding.total is {sh.total}")
            return dataclasses.replace(cfg, sharding=dataclasses.replace(sh, index=index))
    raise ConfigError("sharding.index: required when sharding.total > 1, unless $POD_NAME or "
                      "$HOSTNAME ends in -<ordinal> (a StatefulSet pod)")


def _is_http_url(url: str) -> bool:
    if re.search(r"\s", url):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError when out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
        cfg: Config = _build(Config, data, "")
        _check(cfg)
        cfg = _resolve_shard(cfg, env or {})
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


def read_text(path: str, cannot: str, what: str) -> str:
    """A UTF-8 file's text, or a ConfigError: "<cannot>: <reason>" / "<what> is not UTF-8"."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise ConfigError(f"{cannot}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text") from None


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
