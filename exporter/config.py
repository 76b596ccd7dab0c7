"""Configuration: YAML → frozen, typed dataclasses, strictly validated.

Unknown keys are errors, and every error names the key path and what was expected
(``collection.strategy: expected one of list, credential-report, got 'bogus'``), so a
typo never silently falls back to a default.

The dataclasses live in ``exporter.schema`` and the checks that span more than one
value's type in ``exporter.validate``; this module reads a file into them and is where
the rest of the package imports them from. Imports flow one way: validate imports schema,
this module imports both, and neither imports this module.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import yaml

from exporter import validate
from exporter.schema import (
    DEFAULT_LISTEN,
    DEPRECATED_KEYS,
    AccountConfig,
    AwsConfig,
    CollectionConfig,
    Config,
    CredentialReportConfig,
    EventsConfig,
    ExemptTagConfig,
    MetricsConfig,
    OrganizationsConfig,
    ShardingConfig,
    Strategy,
    UserFilterConfig,
    WebConfig,
)
from exporter.yamlfile import ConfigError, build, describe, parse_yaml, read_text

# The names the rest of the package imports from here.
__all__ = [
    "DEFAULT_LISTEN", "DEPRECATED_KEYS", "ENV_CONFIG", "ENV_OVERRIDES", "AccountConfig",
    "AwsConfig",
    "CollectionConfig", "Config", "ConfigError", "CredentialReportConfig", "EventsConfig",
    "ExemptTagConfig", "MetricsConfig", "OrganizationsConfig", "ShardingConfig", "Strategy",
    "UserFilterConfig", "WebConfig", "dump", "load", "parse", "read_text", "to_dict",
]

ENV_CONFIG = "IAM_KEY_EXPORTER_CONFIG"

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
        raise ConfigError(f"{source}: expected a mapping at the top level, got {describe(data)}")
    overridden: dict[str, str] = {}
    for var, dotted in ENV_OVERRIDES.items():
        raw = (env or {}).get(var)
        if raw:
            _set_path(data, dotted, _scalar(raw))
            overridden[dotted] = var
    try:
        cfg: Config = build(Config, data, "")
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
    for key in DEPRECATED_KEYS:
        name = key.split(".")[1]
        if raw["collection"][name] is None:
            del raw["collection"][name]  # printed only where set
    return raw


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
