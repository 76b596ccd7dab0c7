"""Config checks that span more than one value's type: formats and cross-field rules.

Works on the dataclasses of ``exporter.schema``; ``exporter.config`` calls it after
building them (this module does not import ``exporter.config``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from exporter.schema import (
    ROLE_ARN_RE,
    Config,
    MetricsConfig,
    OrganizationsConfig,
    UserFilterConfig,
    regex,
)
from exporter.yamlfile import ConfigError, describe

# Where a StatefulSet pod's name (and so its ordinal) is found when sharding.index is null.
POD_NAME_VARS = ("POD_NAME", "HOSTNAME")

# ASCII only (\w and \d would otherwise accept any Unicode letter or digit, and int()
# reads Unicode digits), and \Z rather than $ (which also matches before a final newline).
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


def check_listen(value: str, where: str = "listen") -> None:
    m = LISTEN_RE.match(value)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT with a port from 1 to 65535, "
                          f"got {describe(value)}")


def check(cfg: Config) -> None:
    """Checks that span one value's type: formats and cross-field rules."""
    check_listen(cfg.listen)
    url = cfg.aws.endpoint_url
    if url is not None and not _is_http_url(url):
        raise ConfigError(f"aws.endpoint_url: expected an http(s) URL, "
                          f"got {describe(cfg.aws.endpoint_url)}")
    seen: dict[str, int] = {}
    for i, acct in enumerate(cfg.accounts):
        p = f"accounts[{i}]"
        if not ROLE_ARN_RE.match(acct.role_arn):
            raise ConfigError(f"{p}.role_arn: expected arn:aws:iam::<12-digit account>:"
                              f"role/<name>, got {describe(acct.role_arn)}")
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
                              f"got {describe(url)}")
    web_file = cfg.web.config_file
    if web_file is not None and not web_file.strip():
        raise ConfigError("web.config_file: expected a file path, got ''")


def _check_assume_role(p: str, external_id: str | None, session_name: str) -> None:
    if external_id is not None and not EXTERNAL_ID_RE.match(external_id):
        raise ConfigError(f"{p}.external_id: expected 2-1224 characters of [\\w+=,.@:/-]")
    if not SESSION_NAME_RE.match(session_name):
        raise ConfigError(f"{p}.session_name: expected 2-64 characters of [\\w+=,.@-], "
                          f"got {describe(session_name)}")


def _check_organizations(org: OrganizationsConfig) -> None:
    p = "organizations"
    if not ROLE_NAME_RE.match(org.role_name):
        raise ConfigError(f"{p}.role_name: expected an IAM role name, "
                          f"got {describe(org.role_name)}")
    _check_assume_role(p, org.external_id, org.session_name)
    for key in ("include_accounts", "exclude_accounts"):
        for i, v in enumerate(getattr(org, key)):
            if not ACCOUNT_ID_RE.match(v):
                raise ConfigError(f"{p}.{key}[{i}]: expected a 12-digit account id (quoted), "
                                  f"got {describe(v)}")
    for key in ("include_ous", "exclude_ous"):
        for i, v in enumerate(getattr(org, key)):
            if not OU_ID_RE.match(v):
                raise ConfigError(f"{p}.{key}[{i}]: expected an OU id (ou-xxxx-xxxxxxxx) or "
                                  f"a root id (r-xxxx), got {describe(v)}")


def _check_users(users: UserFilterConfig) -> None:
    for key in ("include_names", "exclude_names"):
        for i, pattern in enumerate(getattr(users, key)):
            try:
                regex(pattern)
            except re.error as e:
                raise ConfigError(f"collection.users.{key}[{i}]: invalid regular expression "
                                  f"{describe(pattern)}: {e}") from None
    for key in ("include_paths", "exclude_paths"):
        for i, prefix in enumerate(getattr(users, key)):
            if not prefix.startswith("/"):
                raise ConfigError(f"collection.users.{key}[{i}]: expected a path prefix "
                                  f"starting with /, got {describe(prefix)}")


def _check_metrics(m: MetricsConfig) -> None:
    seen: dict[str, str] = {}
    for tag, label in m.user_tags.items():
        where = f"metrics.user_tags.{tag}"
        if not 1 <= len(tag) <= 128:
            raise ConfigError(f"{where}: expected a tag key of 1 to 128 characters")
        if not LABEL_NAME_RE.match(label) or label.startswith("__"):
            raise ConfigError(f"{where}: expected a Prometheus label name "
                              f"([a-zA-Z_][a-zA-Z0-9_]*, not starting with __), "
                              f"got {describe(label)}")
        if label in RESERVED_LABELS:
            raise ConfigError(f"{where}: label name {label!r} is reserved (reserved: "
                              f"{', '.join(sorted(RESERVED_LABELS))})")
        if label in seen:
            raise ConfigError(f"{where}: label name {label!r} is already used for tag "
                              f"{seen[label]!r}")
        seen[label] = tag
    if not 1 <= len(m.exempt_tag.key) <= 128:
        raise ConfigError("metrics.exempt_tag.key: expected a tag key of 1 to 128 characters")


def resolve_shard(cfg: Config, env: Mapping[str, str]) -> Config:
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
