"""Config loading, in the style of blackbox_exporter's config tests.

Every ``tests/testdata/config/invalid-*.yml`` fixture is listed in INVALID with the exact
error it must give, every ``valid-*.yml`` one in VALID with values it must give; a fixture
missing from the tables fails test_every_fixture_is_listed. Also here: defaults, the
environment overrides, file handling, ``check-config`` as a real process, the documented
example config/exporter.yaml against the dataclasses, and a property test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import subprocess
import tempfile
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import config
from exporter.cli import main as cli_main
from exporter.config import DEPRECATED_KEYS, Config, ConfigError
from tests.helpers import ROOT, TESTDATA

CONFIG_DATA = TESTDATA / "config"
EXAMPLE = ROOT / "config" / "exporter.yaml"
DEMO = ROOT / "config" / "demo.yaml"
CLI_PREFIX = "iam-key-exporter: invalid config: "
KNOWN_TOP = ("listen, interval_seconds, log_format, log_level, include_self, aws, collection, "
             "metrics, accounts, organizations, sharding, events, web")
ROLE_ARN_EXPECTED = "expected arn:aws:iam::<12-digit account>:role/<name>"
LISTEN_EXPECTED = "listen: expected HOST:PORT with a port from 1 to 65535"
ARN_1 = "arn:aws:iam::111111111111:role/iam-key-exporter"
ARN_2 = "arn:aws:iam::222222222222:role/iam-key-exporter"

# File name → the exact error. "{path}" stands for the file's path: messages about the
# file as a whole start with it; messages about a key start with the key path.
INVALID: dict[str, str] = {
    # unknown keys
    "invalid-unknown-top-level-key.yml":
        f"intervall_seconds: unknown key (known keys: {KNOWN_TOP})",
    "invalid-unknown-nested-key.yml":
        "collection.stratgy: unknown key (known keys: strategy, last_used, concurrency, "
        "max_parallel_accounts, timeout_seconds, credential_report, users, max_stale_seconds, "
        "min_pause_seconds)",
    "invalid-unknown-deep-key.yml":
        "collection.credential_report.wait: unknown key (known keys: wait_seconds)",
    "invalid-unknown-account-key.yml":
        "accounts[0].externalId: unknown key (known keys: role_arn, external_id, name, "
        "session_name, strategy)",
    # choices
    "invalid-strategy.yml":
        "collection.strategy: expected one of list, credential-report, got 'bogus'",
    "invalid-log-level.yml":
        "log_level: expected one of debug, info, warning, error, got 'verbose'",
    "invalid-retry-mode.yml": "aws.retry_mode: expected one of standard, adaptive, got 'legacy'",
    # numbers: types and ranges
    "invalid-concurrency-string.yml": "collection.concurrency: expected an integer, got '8'",
    "invalid-concurrency-bool.yml": "collection.concurrency: expected an integer, got true",
    "invalid-concurrency-zero.yml":
        "collection.concurrency: expected a value from 1 to 64, got 0",
    "invalid-interval-zero.yml": "interval_seconds: expected a value from 1 to 86400, got 0",
    "invalid-interval-nan.yml": "interval_seconds: expected a value from 1 to 86400, got nan",
    "invalid-interval-string.yml": "interval_seconds: expected a number, got '5m'",
    "invalid-interval-null.yml": "interval_seconds: expected a number, got null",
    "invalid-web-threads.yml": "web.threads: expected a value from 1 to 256, got 0",
    # strings and booleans
    "invalid-organizations-enabled-string.yml":
        "organizations.enabled: expected true or false, got 'false'",
    # sections of the wrong shape
    "invalid-aws-list.yml": "aws: expected a mapping, got a list",
    "invalid-collection-string.yml": "collection: expected a mapping, got 'list'",
    # accounts
    "invalid-accounts-mapping.yml": "accounts: expected a list, got a mapping",
    "invalid-account-not-mapping.yml":
        "accounts[0]: expected a mapping, got 'arn:aws:iam::111111111111:role/iam-key-exporter'",
    "invalid-account-null.yml": "accounts[0].role_arn: required key is missing",
    "invalid-account-missing-role-arn.yml": "accounts[0].role_arn: required key is missing",
    "invalid-role-arn-short-account.yml":
        f"accounts[0].role_arn: {ROLE_ARN_EXPECTED}, "
        "got 'arn:aws:iam::1234:role/iam-key-exporter'",
    "invalid-role-arn-user.yml":
        f"accounts[0].role_arn: {ROLE_ARN_EXPECTED}, got 'arn:aws:iam::111111111111:user/alice'",
    "invalid-role-arn-trailing-newline.yml":
        f"accounts[0].role_arn: {ROLE_ARN_EXPECTED}, "
        "got 'arn:aws:iam::111111111111:role/iam-key-exporter\\n'",
    "invalid-role-arn-unicode-digits.yml":
        f"accounts[0].role_arn: {ROLE_ARN_EXPECTED}, "
        "got 'arn:aws:iam::\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661"
        "\u0661:role/x'",
    "invalid-external-id.yml":
        "accounts[0].external_id: expected 2-1224 characters of [\\w+=,.@:/-]",
    "invalid-session-name.yml":
        "accounts[0].session_name: expected 2-64 characters of [\\w+=,.@-], got 'has spaces'",
    "invalid-duplicate-account.yml":
        "accounts[2].role_arn: account 111111111111 is already listed at accounts[0]",
    # duplicate YAML keys (PyYAML alone would keep the last one silently)
    "invalid-duplicate-key.yml": "listen: duplicate key (line 3, first at line 1)",
    "invalid-duplicate-nested-key.yml":
        "collection.strategy: duplicate key (line 4, first at line 2)",
    # not YAML, or not a mapping
    "invalid-yaml-syntax.yml":
        "{path}: invalid YAML at line 3, column 1: while scanning a quoted scalar, "
        "found unexpected end of stream",
    "invalid-yaml-unhashable-key.yml":
        "{path}: invalid YAML at line 1, column 3: while constructing a mapping, "
        "found unhashable key",
    "invalid-yaml-python-tag.yml":
        "{path}: invalid YAML at line 2, column 9: could not determine a constructor for "
        "the tag 'tag:yaml.org,2002:python/object/apply:os.system'",
    "invalid-yaml-bad-date.yml":
        "{path}: invalid YAML at line 2, column 19: cannot read '2001-02-30' as timestamp "
        "(day is out of range for month)",
    "invalid-multiple-documents.yml":
        "{path}: invalid YAML at line 2, column 1: expected a single document in the "
        "stream, but found another document",
    "invalid-top-level-list.yml": "{path}: expected a mapping at the top level, got a list",
    "invalid-top-level-scalar.yml":
        "{path}: expected a mapping at the top level, got 'interval_seconds=60'",
    # organizations
    "invalid-organizations-account-id.yml":
        "organizations.include_accounts[0]: expected a 12-digit account id (quoted), "
        "got '1234'",
    "invalid-organizations-ou.yml":
        "organizations.exclude_ous[0]: expected an OU id (ou-xxxx-xxxxxxxx) or a root id "
        "(r-xxxx), got 'engineering'",
    # metrics
    "invalid-user-tags-label.yml":
        "metrics.user_tags.Team: expected a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, "
        "not starting with __), got 'team-name'",
    "invalid-user-tags-reserved.yml":
        "metrics.user_tags.Owner: label name 'user_name' is reserved (reserved: account_id, "
        "exempt, instance, job, path, user_name)",
    "invalid-user-tags-same-label.yml":
        "metrics.user_tags.team: label name 'team' is already used for tag 'Team'",
    "invalid-access-key-id.yml":
        "metrics.access_key_id: expected one of full, suffix, none, got 'last4'",
    # user filters and collection
    "invalid-user-name-regex.yml":
        "collection.users.include_names[0]: invalid regular expression 'svc-[a-z': "
        "unterminated character set at position 4",
    "invalid-user-path.yml":
        "collection.users.exclude_paths[0]: expected a path prefix starting with /, "
        "got 'engineering/'",
    "invalid-last-used.yml":
        "collection.last_used: expected one of off, credential-report, api, got 'report'",
    "invalid-account-strategy.yml":
        "accounts[0].strategy: expected one of list, credential-report, got 'report'",
    # sharding and accounts
    "invalid-shard-index.yml": "sharding.index: expected a value from 0 to 2 "
        "(sharding.total - 1), got 3",
    "invalid-include-self-nothing.yml": "include_self: false leaves no account to collect; "
        "list accounts or enable organizations",
    "invalid-organizations-role-name.yml":
        "organizations.role_name: expected an IAM role name, got 'role name with spaces'",
    # formats
    "invalid-endpoint-url-no-scheme.yml":
        "aws.endpoint_url: expected an http(s) URL, got '127.0.0.1:5000'",
    "invalid-listen-no-port.yml": f"{LISTEN_EXPECTED}, got '0.0.0.0'",
    "invalid-listen-ipv6-unbracketed.yml": f"{LISTEN_EXPECTED}, got '::1:9877'",
    "invalid-listen-trailing-newline.yml": f"{LISTEN_EXPECTED}, got '0.0.0.0:9877\\n'",
    # request budget, staleness, events
    "invalid-max-requests-per-second-zero.yml":
        "aws.max_requests_per_second: expected a value from 0.1 to 1000, got 0",
    "invalid-max-stale-seconds.yml":
        "collection.max_stale_seconds: expected a value from 60 to 2592000, got 30",
    "invalid-min-pause-seconds.yml":
        "collection.min_pause_seconds: expected a number, got '30s'",
    "invalid-events-queue-url.yml":
        "events.queue_url: expected an https URL of an SQS queue, got 'iam-key-exporter-events'",
    "invalid-events-dead-letter-queue-url.yml":
        "events.dead_letter_queue_url: expected an https URL of an SQS queue, "
        "got 'sqs://queue/dlq'",
    "invalid-events-wait-seconds.yml":
        "events.wait_seconds: expected a value from 0 to 20, got 21",
    "invalid-events-visibility-timeout.yml":
        "events.visibility_timeout_seconds: expected a value from 1 to 43200, got 0",
    "invalid-events-unknown-key.yml":
        "events.queue: unknown key (known keys: queue_url, wait_seconds, "
        "visibility_timeout_seconds, dead_letter_queue_url)",
}

# More variants of the same problems, kept inline (in-process only) so that the fixture
# directory, whose every file also runs through the CLI, stays small. "config" is the
# source name parse() puts before a problem with the document as a whole.
INLINE: dict[str, str] = {
    "1: one\n": f"1: unknown key (known keys: {KNOWN_TOP})",
    "collection:\n  strategy: yes\n":
        "collection.strategy: expected one of list, credential-report, got true",
    "log_format: JSON\n": "log_format: expected one of text, json, got 'JSON'",
    "collection:\n  concurrency: 2.5\n":
        "collection.concurrency: expected an integer, got 2.5",
    "collection:\n  concurrency: 65\n":
        "collection.concurrency: expected a value from 1 to 64, got 65",
    "collection:\n  max_parallel_accounts: -1\n":
        "collection.max_parallel_accounts: expected a value from 1 to 64, got -1",
    "interval_seconds: 86401\n": "interval_seconds: expected a value from 1 to 86400, got 86401",
    "interval_seconds: .inf\n": "interval_seconds: expected a value from 1 to 86400, got inf",
    "interval_seconds: .NaN\n": "interval_seconds: expected a value from 1 to 86400, got nan",
    "interval_seconds: [60]\n": "interval_seconds: expected a number, got a list",
    "interval_seconds: 2001-12-14\n":
        "interval_seconds: expected a number, got datetime.date(2001, 12, 14)",
    "collection:\n  timeout_seconds: 0.05\n":
        "collection.timeout_seconds: expected a value from 0.1 to 86400, got 0.05",
    "collection:\n  credential_report:\n    wait_seconds: 0\n":
        "collection.credential_report.wait_seconds: expected a value from 1 to 3600, got 0",
    "aws:\n  max_attempts: 21\n": "aws.max_attempts: expected a value from 1 to 20, got 21",
    'aws:\n  connect_timeout_seconds: "5s"\n':
        "aws.connect_timeout_seconds: expected a number, got '5s'",
    "aws:\n  read_timeout_seconds: 301\n":
        "aws.read_timeout_seconds: expected a value from 0.1 to 300, got 301",
    "aws:\n  region: 1\n": "aws.region: expected a string, got 1",
    "aws:\n  region: !!binary aGVsbG8=\n": "aws.region: expected a string, got b'hello'",
    "web:\n  shutdown_grace_seconds: 301\n":
        "web.shutdown_grace_seconds: expected a value from 1 to 300, got 301",
    "web: 8\n": "web: expected a mapping, got 8",
    "collection:\n  credential_report: []\n":
        "collection.credential_report: expected a mapping, got a list",
    "organizations: []\n": "organizations: expected a mapping, got a list",
    "organizations:\n  enabled: 1\n": "organizations.enabled: expected true or false, got 1",
    f"accounts: {ARN_1}\n": f"accounts: expected a list, got '{ARN_1}'",
    "accounts:\n  - role_arn: 111111111111\n":
        "accounts[0].role_arn: expected a string, got 111111111111",
    f"accounts:\n  - role_arn: {ARN_1}\n    name: [prod]\n":
        "accounts[0].name: expected a string, got a list",
    "accounts:\n  - role_arn: arn:aws:iam::111111111111:role/\u00e9\n":
        f"accounts[0].role_arn: {ROLE_ARN_EXPECTED}, "
        "got 'arn:aws:iam::111111111111:role/\u00e9'",
    'aws:\n  endpoint_url: "ftp://127.0.0.1:5000"\n':
        "aws.endpoint_url: expected an http(s) URL, got 'ftp://127.0.0.1:5000'",
    'aws:\n  endpoint_url: "http://127.0.0.1:99999"\n':
        "aws.endpoint_url: expected an http(s) URL, got 'http://127.0.0.1:99999'",
    'aws:\n  endpoint_url: "http://127.0.0.1:5000/ x"\n':
        "aws.endpoint_url: expected an http(s) URL, got 'http://127.0.0.1:5000/ x'",
    'aws:\n  endpoint_url: "http://"\n': "aws.endpoint_url: expected an http(s) URL, got 'http://'",
    'listen: "0.0.0.0:0"\n': f"{LISTEN_EXPECTED}, got '0.0.0.0:0'",
    'listen: "0.0.0.0:65536"\n': f"{LISTEN_EXPECTED}, got '0.0.0.0:65536'",
    'listen: "0.0.0.0:\u0669\u0668\u0667\u0667"\n':
        f"{LISTEN_EXPECTED}, got '0.0.0.0:\u0669\u0668\u0667\u0667'",
    "listen: 9877\n": "listen: expected a string, got 9877",
    f"accounts:\n  - role_arn: {ARN_1}\n  - role_arn: {ARN_2}\n    name: b\n    name: c\n":
        "accounts[1].name: duplicate key (line 5, first at line 4)",
    "collection:\n  strategy: list\n concurrency: 4\n":
        "config: invalid YAML at line 3, column 2: while parsing a block mapping, "
        "expected <block end>, but found '<block mapping start>'",
    "log_level: !!bool maybe\n":
        "config: invalid YAML at line 1, column 12: cannot read 'maybe' as bool",
    "? !!set\n: 1\n":
        "config: invalid YAML at line 1, column 3: expected a mapping node, but found scalar",
    "? !!int ten\n: 1\n":
        "config: invalid YAML at line 1, column 3: cannot read 'ten' as int "
        "(invalid literal for int() with base 10: 'ten')",
    "listen: ':1'\n\tinterval_seconds: 60\n":
        "config: invalid YAML at line 2, column 1: while scanning for the next token, "
        "found character '\\t' that cannot start any token",
}

# File name → {key path: expected value}; the path "" is the whole Config.
VALID: dict[str, dict[str, Any]] = {
    "valid-empty.yml": {"": Config()},
    "valid-comments-only.yml": {"": Config()},
    "valid-empty-sections.yml": {"": Config()},
    "valid-full.yml": {
        "listen": "127.0.0.1:19877",
        "interval_seconds": 60.0,
        "log_format": "json",
        "log_level": "debug",
        "aws.region": "eu-west-1",
        "aws.endpoint_url": "https://iam.example.internal:8443/",
        "aws.retry_mode": "adaptive",
        "collection.strategy": "credential-report",
        "aws.max_attempts": 10,
        "aws.read_timeout_seconds": 30.0,
        "collection.concurrency": 16,
        "collection.timeout_seconds": 45.0,
        "collection.credential_report.wait_seconds": 30.0,
        "accounts[0].external_id": "s3cr3t-ext-id",
        "accounts[0].name": "prod",
        "accounts[0].session_name": "key-exporter-prod",
        "accounts[0].account_id": "111111111111",
        "organizations.role_name": "AuditRole",
        "organizations.enabled": True,
        "organizations.include_accounts": ("222222222222",),
        "organizations.exclude_ous": ("ou-ab12-abcdefgh",),
        "organizations.refresh_cycles": 3,
        "web.threads": 4,
        "web.shutdown_grace_seconds": 2.0,
        "web.config_file": str(CONFIG_DATA / "web-config.yml"),
        "include_self": True,
        "collection.last_used": "api",
        "collection.users.exclude_names": ("svc-test-.*",),
        "metrics.per_user": False,
        "metrics.access_key_id": "suffix",
        "metrics.user_tags": {"Team": "team", "cost-center": "cost_center"},
        "metrics.exempt_tag.value": "yes",
        "accounts[0].strategy": "list",
        "sharding.total": 4,
        "sharding.index": 2,
        "aws.max_requests_per_second": 4.5,
        "collection.max_stale_seconds": 3600.0,
        "collection.min_pause_seconds": 5.0,
        "events.queue_url":
            "https://sqs.us-east-1.amazonaws.com/111111111111/iam-key-exporter-events",
        "events.wait_seconds": 10,
        "events.visibility_timeout_seconds": 120,
        "events.dead_letter_queue_url":
            "https://sqs.us-east-1.amazonaws.com/111111111111/iam-key-exporter-dlq",
    },
    "valid-accounts.yml": {
        "accounts[0]": config.AccountConfig(
            role_arn=ARN_1, external_id="ext:id/with=odd,chars@x", name="prod"),
        "accounts[1].role_arn": "arn:aws:iam::222222222222:role/path/to/iam-key-exporter",
        "accounts[1].name": "staging",
        "accounts[1].external_id": None,
        "accounts[2].account_id": "333333333333",
        "accounts[2].name": None,
        "accounts[3].account_id": "444444444444",
        "accounts[3].session_name": "iam-key-exporter",
        "collection": config.CollectionConfig(),
    },
    "valid-credential-report.yml": {
        "collection.strategy": "credential-report",
        "collection.credential_report.wait_seconds": 600.0,
        "collection.concurrency": 8,
        "interval_seconds": 3600.0,
        "accounts": (),
    },
    "valid-ipv6-listen.yml": {"listen": "[::1]:9877"},
    "valid-listen-all-interfaces.yml": {"listen": ":9877"},
    "valid-bounds.yml": {
        "interval_seconds": 1.0,
        "collection.timeout_seconds": 86400.0,
        "aws.max_attempts": 20,
        "aws.connect_timeout_seconds": 0.1,
        "collection.concurrency": 64,
        "collection.max_parallel_accounts": 1,
        "web.threads": 256,
        "web.shutdown_grace_seconds": 1.0,
    },
    "valid-anchors.yml": {
        "accounts[0].role_arn": ARN_1,
        "accounts[0].name": None,
        "accounts[1]": config.AccountConfig(
            role_arn=ARN_2, external_id="shared-external-id", name="second",
            session_name="exporter-session"),
    },
    "valid-demo-moto.yml": {
        "endpoint_url": "http://127.0.0.1:5000",
        "region": "us-east-1",
        "interval_seconds": 15.0,
    },
}


def _fixtures(prefix: str) -> list[str]:
    return sorted(p.name for p in CONFIG_DATA.glob(f"{prefix}-*.yml"))


def _expected_error(name: str) -> str:
    return INVALID[name].replace("{path}", str(CONFIG_DATA / name))


def _get(obj: Any, dotted: str) -> Any:
    """The value at a key path like ``accounts[1].name`` (also properties)."""
    for part in filter(None, dotted.split(".")):
        m = re.fullmatch(r"(\w+)((?:\[\d+\])*)", part)
        assert m, part
        obj = getattr(obj, m.group(1))
        for index in re.findall(r"\[(\d+)\]", m.group(2)):
            obj = obj[int(index)]
    return obj


def _key_paths(cls: type[Any] = Config, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted path, dataclass field, type) of the whole Config tree; list items as ``[]``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, tp = prefix + f.name, hints[f.name]
        yield path, f, tp
        if dataclasses.is_dataclass(tp):
            yield from _key_paths(tp, path + ".")  # type: ignore[arg-type]
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            if dataclasses.is_dataclass(item):
                yield from _key_paths(item, path + "[].")  # type: ignore[arg-type]


def _resolved(cfg: Config) -> Config:
    """What check-config prints, as a Config: with a clean environment the defaults that
    depend on it resolve to fixed values."""
    return dataclasses.replace(
        cfg,
        aws=dataclasses.replace(cfg.aws, region=cfg.aws.region or "us-east-1"),
        include_self=cfg.collect_self,
    )


def _clean_env() -> dict[str, str]:
    return _clean_env_of(os.environ)


def _clean_env_of(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(("IAM_KEY_EXPORTER_", "AWS_"))}


def _run_cli(args: list[str], env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """The CLI's main() in this process (tests/test_cli.py runs the real console script),
    with exactly this environment; what it exits with and prints."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_clean_env_of(saved) | (env or {}))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------------------------------
# The fixture tables


def test_every_fixture_is_listed() -> None:
    assert _fixtures("invalid") == sorted(INVALID)
    assert _fixtures("valid") == sorted(VALID)
    # web-config.yml is the web config file valid-full.yml refers to, not a config.
    others = ({p.name for p in CONFIG_DATA.iterdir()} - set(INVALID) - set(VALID)
              - {"web-config.yml"})
    assert not others, f"fixtures must be named valid-*.yml or invalid-*.yml: {others}"


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_fixture(name: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(str(CONFIG_DATA / name), env={})
    assert str(e.value) == _expected_error(name)


@pytest.mark.parametrize("text", sorted(INLINE),
                         ids=[f"{i}-{INLINE[t].split(':')[0]}"
                              for i, t in enumerate(sorted(INLINE))])
def test_invalid_inline(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(text, env={})
    assert str(e.value) == INLINE[text]


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_fixture(name: str) -> None:
    cfg = config.load(str(CONFIG_DATA / name), env={})
    for path, want in VALID[name].items():
        assert _get(cfg, path) == want, path


def test_valid_full_sets_every_key() -> None:
    """valid-full.yml keeps its promise: every key differs from its default (except
    organizations.enabled, which can only be false)."""
    cfg = config.load(str(CONFIG_DATA / "valid-full.yml"), env={})
    default = Config()
    for path, _, _ in _key_paths():
        if "[]" in path or path == "organizations.enabled":
            continue
        assert _get(cfg, path) != _get(default, path), path
    account = cfg.accounts[0]
    for f in dataclasses.fields(account):
        assert getattr(account, f.name) is not None, f.name
    assert account.session_name != config.AccountConfig(role_arn=ARN_1).session_name


@pytest.mark.parametrize("name", sorted(VALID))
def test_dump_is_a_fixed_point(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = config.load(str(CONFIG_DATA / name), env={})
    text = config.dump(cfg)
    again = config.parse(text, env={})
    assert again == _resolved(cfg)
    assert config.dump(again) == text


# ---------------------------------------------------------------------------------------
# Defaults


@pytest.mark.parametrize("text", ["", "\n\n", "# comment only\n", "---\n", "~\n", "{}\n",
                                  "null\n"])
def test_empty_documents_give_the_defaults(text: str) -> None:
    assert config.parse(text, env={}) == Config()


def test_defaults() -> None:
    cfg = config.parse("", env={})
    assert cfg.listen == "0.0.0.0:9877" == config.DEFAULT_LISTEN
    assert cfg.interval_seconds == 900.0
    assert (cfg.log_format, cfg.log_level) == ("text", "info")
    assert cfg.aws == config.AwsConfig(region=None, endpoint_url=None, retry_mode="standard",
                                       max_attempts=8, connect_timeout_seconds=5.0,
                                       read_timeout_seconds=20.0,
                                       max_requests_per_second=10.0)
    assert cfg.collection.strategy == "list"
    assert cfg.collection.concurrency == 8
    # Deprecated (no collection cycles any more): unset unless a config sets them.
    assert cfg.collection.max_parallel_accounts is None
    assert cfg.collection.timeout_seconds is None
    assert cfg.collection.min_pause_seconds is None
    assert cfg.deprecated() == []
    assert cfg.collection.credential_report.wait_seconds == 120.0
    assert cfg.collection.max_stale_seconds == 86400.0
    assert cfg.accounts == ()
    # The read-only member role deploy/aws/ ships, not the administrator role.
    assert cfg.organizations == config.OrganizationsConfig(
        enabled=False, role_name="iam-key-exporter-member")
    assert cfg.events == config.EventsConfig(
        queue_url=None, wait_seconds=20, visibility_timeout_seconds=60,
        dead_letter_queue_url=None)
    assert (cfg.web.threads, cfg.web.shutdown_grace_seconds) == (8, 8.0)


def test_integers_become_floats_for_number_keys() -> None:
    cfg = config.parse("interval_seconds: 60\nweb: {shutdown_grace_seconds: 3}\n", env={})
    assert type(cfg.interval_seconds) is float and cfg.interval_seconds == 60.0
    assert type(cfg.web.shutdown_grace_seconds) is float


def test_cycle_settings_are_deprecated_accepted_and_ignored() -> None:
    # An upgrade must not fail on the collection cycles' old settings; they are named.
    cfg = config.parse("collection:\n  timeout_seconds: 45\n  min_pause_seconds: 5\n"
                       "  max_parallel_accounts: 4\n", env={})
    assert cfg.deprecated() == ["collection.max_parallel_accounts",
                                "collection.timeout_seconds", "collection.min_pause_seconds"]
    # check-config prints them only where they are set, and its output loads again.
    assert "  timeout_seconds" not in config.dump(config.parse("", env={}))
    again = config.parse(config.dump(cfg), env={})
    assert again.deprecated() == cfg.deprecated()


def test_region_and_endpoint_fall_back_to_the_aws_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = Config()
    assert (cfg.region, cfg.endpoint_url) == ("us-east-1", None)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    assert cfg.region == "eu-north-1"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    assert (cfg.region, cfg.endpoint_url) == ("ap-south-1", "http://127.0.0.1:4566")
    explicit = config.parse("aws: {region: us-west-2, endpoint_url: 'http://x:1'}", env={})
    assert (explicit.region, explicit.endpoint_url) == ("us-west-2", "http://x:1")


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listen = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# Environment overrides

# Variable → (value, key path, parsed value).
ENV_GOOD: dict[str, tuple[str, str, Any]] = {
    "IAM_KEY_EXPORTER_LISTEN": ("127.0.0.1:1234", "listen", "127.0.0.1:1234"),
    "IAM_KEY_EXPORTER_INTERVAL_SECONDS": ("42.5", "interval_seconds", 42.5),
    "IAM_KEY_EXPORTER_LOG_FORMAT": ("text", "log_format", "text"),
    "IAM_KEY_EXPORTER_LOG_LEVEL": ("warning", "log_level", "warning"),
    "IAM_KEY_EXPORTER_STRATEGY": ("list", "collection.strategy", "list"),
    "IAM_KEY_EXPORTER_CONCURRENCY": ("3", "collection.concurrency", 3),
    "IAM_KEY_EXPORTER_SHARD_TOTAL": ("8", "sharding.total", 8),
    "IAM_KEY_EXPORTER_SHARD_INDEX": ("1", "sharding.index", 1),
    "IAM_KEY_EXPORTER_EVENTS_QUEUE_URL": (
        "https://sqs.us-east-1.amazonaws.com/111111111111/iam-events", "events.queue_url",
        "https://sqs.us-east-1.amazonaws.com/111111111111/iam-events"),
}

# Variable → (value, the error before " (set by environment variable VAR)").
ENV_BAD: dict[str, tuple[str, str]] = {
    "IAM_KEY_EXPORTER_LISTEN": ("localhost", f"{LISTEN_EXPECTED}, got 'localhost'"),
    "IAM_KEY_EXPORTER_INTERVAL_SECONDS":
        ("5m", "interval_seconds: expected a number, got '5m'"),
    "IAM_KEY_EXPORTER_LOG_FORMAT": ("xml", "log_format: expected one of text, json, got 'xml'"),
    "IAM_KEY_EXPORTER_LOG_LEVEL":
        ("trace", "log_level: expected one of debug, info, warning, error, got 'trace'"),
    "IAM_KEY_EXPORTER_STRATEGY":
        ("bogus", "collection.strategy: expected one of list, credential-report, got 'bogus'"),
    "IAM_KEY_EXPORTER_CONCURRENCY":
        ("0", "collection.concurrency: expected a value from 1 to 64, got 0"),
    "IAM_KEY_EXPORTER_SHARD_TOTAL":
        ("0", "sharding.total: expected a value from 1 to 1000, got 0"),
    "IAM_KEY_EXPORTER_SHARD_INDEX": ("x", "sharding.index: expected an integer, got 'x'"),
    "IAM_KEY_EXPORTER_EVENTS_QUEUE_URL": (
        "iam-events", "events.queue_url: expected an https URL of an SQS queue, "
        "got 'iam-events'"),
}


def test_env_tables_cover_every_override() -> None:
    assert set(ENV_GOOD) == set(ENV_BAD) == set(config.ENV_OVERRIDES)
    for var, (_, path, _) in ENV_GOOD.items():
        assert config.ENV_OVERRIDES[var] == path
        assert var.startswith("IAM_KEY_EXPORTER_")


@pytest.mark.parametrize("var", sorted(ENV_GOOD))
def test_env_override_wins_over_the_file(var: str) -> None:
    raw, path, want = ENV_GOOD[var]
    text = config.dump(config.load(str(CONFIG_DATA / "valid-full.yml"), env={}))
    assert _get(config.parse(text, env={}), path) != want
    cfg = config.parse(text, env={var: raw})
    assert _get(cfg, path) == want
    # Nothing else changes: the section around the key is merged, not replaced.
    unchanged = config.parse(text, env={})
    for other, _, _ in _key_paths():
        if "[]" not in other and other != path and not path.startswith(other + "."):
            assert _get(cfg, other) == _get(unchanged, other), other


@pytest.mark.parametrize("var", sorted(ENV_BAD))
def test_bad_env_value_names_the_variable(var: str) -> None:
    raw, message = ENV_BAD[var]
    with pytest.raises(ConfigError) as e:
        config.parse("", env={var: raw})
    assert str(e.value) == f"{message} (set by environment variable {var})"


@pytest.mark.parametrize(("raw", "message"), [
    ("nan", "interval_seconds: expected a value from 1 to 86400, got nan"),
    ("inf", "interval_seconds: expected a value from 1 to 86400, got inf"),
    ("0.5", "interval_seconds: expected a value from 1 to 86400, got 0.5"),
    ("true", "interval_seconds: expected a number, got true"),
])
def test_bad_env_interval(raw: str, message: str) -> None:
    var = "IAM_KEY_EXPORTER_INTERVAL_SECONDS"
    with pytest.raises(ConfigError) as e:
        config.parse("", env={var: raw})
    assert str(e.value) == f"{message} (set by environment variable {var})"


def test_env_integer_keys_take_integers_only() -> None:
    var = "IAM_KEY_EXPORTER_CONCURRENCY"
    with pytest.raises(ConfigError) as e:
        config.parse("", env={var: "2.5"})
    assert str(e.value) == ("collection.concurrency: expected an integer, got 2.5 "
                            f"(set by environment variable {var})")


def test_empty_env_value_is_ignored() -> None:
    env = dict.fromkeys(config.ENV_OVERRIDES, "")
    assert config.parse("", env=env) == Config()
    assert config.parse("interval_seconds: 60", env=env).interval_seconds == 60.0


def test_env_override_of_a_nested_key_keeps_its_siblings() -> None:
    text = "collection:\n  strategy: list\n  concurrency: 2\n"
    cfg = config.parse(text, env={"IAM_KEY_EXPORTER_STRATEGY": "credential-report"})
    assert (cfg.collection.strategy, cfg.collection.concurrency) == ("credential-report", 2)
    cfg = config.parse("collection:\n", env={"IAM_KEY_EXPORTER_CONCURRENCY": "5"})
    assert cfg.collection.concurrency == 5


def test_env_override_does_not_hide_a_bad_section_in_the_file() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse("collection: [1]\n", env={"IAM_KEY_EXPORTER_STRATEGY": "list"})
    assert str(e.value) == "collection: expected a mapping, got a list"


def test_error_from_the_file_does_not_blame_the_environment() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse("interval_seconds: 0\n", env={"IAM_KEY_EXPORTER_LISTEN": ":1"})
    assert str(e.value) == "interval_seconds: expected a value from 1 to 86400, got 0"


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_CONFIG, raising=False)
    monkeypatch.setenv("IAM_KEY_EXPORTER_LOG_LEVEL", "error")
    assert config.load(None).log_level == "error"


# ---------------------------------------------------------------------------------------
# Files


def test_config_path_from_the_environment() -> None:
    full = str(CONFIG_DATA / "valid-full.yml")
    want = config.load(full, env={})
    assert want != Config()
    assert config.load(None, env={config.ENV_CONFIG: full}) == want
    # --config wins over the variable; an empty variable means no file.
    empty = str(CONFIG_DATA / "valid-empty.yml")
    assert config.load(empty, env={config.ENV_CONFIG: full}) == Config()
    assert config.load(None, env={config.ENV_CONFIG: ""}) == Config()
    assert config.load(None, env={}) == Config()


def test_config_path_from_the_environment_is_checked(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as e:
        config.load(None, env={config.ENV_CONFIG: str(missing)})
    assert str(e.value) == f"{missing}: cannot read config file: No such file or directory"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yml"
    with pytest.raises(ConfigError) as e:
        config.load(str(path), env={})
    assert str(e.value) == f"{path}: cannot read config file: No such file or directory"


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path), env={})
    assert str(e.value) == f"{tmp_path}: cannot read config file: Is a directory"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes("accounts:\n  - name: Müller\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        config.load(str(path), env={})
    assert str(e.value) == f"{path}: config file is not UTF-8 text"


def test_utf8_with_bom_and_non_ascii_values(tmp_path: Path) -> None:
    path = tmp_path / "bom.yml"
    path.write_bytes(b"\xef\xbb\xbf" + f"accounts:\n  - role_arn: {ARN_1}\n    name: Müller\n"
                     .encode())
    assert config.load(str(path), env={}).accounts[0].name == "Müller"


def test_control_characters_are_a_yaml_error(tmp_path: Path) -> None:
    path = tmp_path / "nul.yml"
    path.write_bytes(b"listen: ':1'\x00\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(path), env={})
    assert str(e.value).startswith(f"{path}: invalid YAML")
    assert "#x0000" in str(e.value)


def test_deep_nesting_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse("listen: " + "[" * 1000 + "]" * 1000, env={}, source="deep.yml")
    assert str(e.value) == "deep.yml: invalid YAML: nested too deeply"


def test_recursive_alias_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse("accounts: &a [*a]\n", env={})
    assert str(e.value) == "accounts[0]: expected a mapping, got a list"


def test_merge_keys_and_their_overrides() -> None:
    text = "base: &b {listen: ':1'}\n"
    with pytest.raises(ConfigError, match=r"^base: unknown key"):
        config.parse(text, env={})
    assert config.parse("<<: {listen: ':1', log_level: error}\nlisten: ':2'\n",
                        env={}).listen == ":2"
    with pytest.raises(ConfigError) as e:
        config.parse("<<: {listen: ':1'}\n<<: {log_level: error}\n", env={})
    assert str(e.value) == "<<: duplicate key (line 2, first at line 1)"


# ---------------------------------------------------------------------------------------
# check-config as a real process (run in parallel up front: each start costs ~0.2 s)

CLI_EXTRA: dict[str, tuple[list[str], dict[str, str]]] = {
    "example": (["check-config", "--config", str(EXAMPLE)], {}),
    "demo": (["check-config", "--config", str(DEMO)], {}),
    "env-config": (["check-config"], {config.ENV_CONFIG: str(CONFIG_DATA / "valid-full.yml")}),
    "env-config-invalid": (["check-config"],
                           {config.ENV_CONFIG: str(CONFIG_DATA / "invalid-strategy.yml")}),
    "flag-beats-env": (["check-config", "--config", str(CONFIG_DATA / "valid-empty.yml")],
                       {config.ENV_CONFIG: str(CONFIG_DATA / "invalid-strategy.yml")}),
    "no-config": (["check-config"], {}),
    "missing": (["check-config", "--config", str(CONFIG_DATA / "does-not-exist.yml")], {}),
    "bad-env": (["check-config"], {"IAM_KEY_EXPORTER_CONCURRENCY": "many"}),
    "good-env": (["check-config", "--config", str(CONFIG_DATA / "valid-full.yml")],
                 {"IAM_KEY_EXPORTER_STRATEGY": "list"}),
}


@pytest.fixture(scope="module")
def cli() -> dict[str, subprocess.CompletedProcess[str]]:
    jobs = {name: (["check-config", "--config", str(CONFIG_DATA / name)], {})
            for name in [*_fixtures("valid"), *_fixtures("invalid")]} | CLI_EXTRA
    # One after the other: each run sets the process environment.
    return {key: _run_cli(args, env) for key, (args, env) in jobs.items()}


def _assert_prints(run: subprocess.CompletedProcess[str], want: Config) -> None:
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert isinstance(yaml.safe_load(run.stdout), dict)
    assert config.parse(run.stdout, env={}) == _resolved(want)


@pytest.mark.parametrize("name", sorted(VALID))
def test_cli_check_config_valid(name: str, cli: dict[str, subprocess.CompletedProcess[str]]
                                ) -> None:
    _assert_prints(cli[name], config.load(str(CONFIG_DATA / name), env={}))


@pytest.mark.parametrize("name", sorted(INVALID))
def test_cli_check_config_invalid(name: str, cli: dict[str, subprocess.CompletedProcess[str]]
                                  ) -> None:
    run = cli[name]
    assert run.returncode == 2
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert run.stderr == f"{CLI_PREFIX}{_expected_error(name)}\n"


def test_cli_example_configs_are_valid(cli: dict[str, subprocess.CompletedProcess[str]]
                                       ) -> None:
    _assert_prints(cli["example"], Config())
    demo = config.load(str(DEMO), env={})
    _assert_prints(cli["demo"], demo)


def test_cli_config_from_the_environment(cli: dict[str, subprocess.CompletedProcess[str]]
                                         ) -> None:
    _assert_prints(cli["env-config"], config.load(str(CONFIG_DATA / "valid-full.yml"), env={}))
    _assert_prints(cli["flag-beats-env"], Config())
    _assert_prints(cli["no-config"], Config())
    run = cli["env-config-invalid"]
    assert run.returncode == 2
    assert run.stderr == f"{CLI_PREFIX}{INVALID['invalid-strategy.yml']}\n"


def test_cli_env_override(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    want = config.load(str(CONFIG_DATA / "valid-full.yml"),
                       env={"IAM_KEY_EXPORTER_STRATEGY": "list"})
    assert want.collection.strategy == "list"
    _assert_prints(cli["good-env"], want)
    run = cli["bad-env"]
    assert run.returncode == 2
    assert run.stderr == (f"{CLI_PREFIX}collection.concurrency: expected an integer, got "
                          "'many' (set by environment variable IAM_KEY_EXPORTER_CONCURRENCY)\n")


def test_cli_missing_file(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = cli["missing"]
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr == (f"{CLI_PREFIX}{CONFIG_DATA / 'does-not-exist.yml'}: cannot read "
                          "config file: No such file or directory\n")


# ---------------------------------------------------------------------------------------
# config/exporter.yaml documents every key; config/demo.yaml


def _documented_keys(text: str) -> dict[str, str]:
    """Key path → the comment lines right above the key (plus its inline comment), for
    the uncommented keys of a YAML file written as block mappings."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            comment = []
            continue
        m = re.match(r"^( *)([A-Za-z_]+):(.*)$", line)
        assert m, f"unexpected line in the example config: {line!r}"
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        path = ".".join(name for _, name in stack)
        inline = m.group(3).split(" #", 1)[1] if " #" in m.group(3) else ""
        found[path] = " ".join([*comment, inline]).strip()
        comment = []
    return found


def _accounts_example(text: str) -> str:
    """The commented-out example entry right below ``accounts: []``, uncommented."""
    lines = text.splitlines()
    start = lines.index("accounts: []") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[1:])
    return "\n".join(block)


def _num(x: float) -> str:
    """A range bound as the example config writes it: 0.1, 60, 2592000."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def test_example_config_is_all_defaults() -> None:
    assert config.load(str(EXAMPLE), env={}) == Config()


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    documented = _documented_keys(text)
    raw = yaml.safe_load(text)
    # Every key but the deprecated ones, which the example leaves out.
    paths = [(p, f, tp) for p, f, tp in _key_paths()
             if "[]" not in p and p not in DEPRECATED_KEYS]
    assert set(documented) == {p for p, _, _ in paths}
    for path, f, tp in paths:
        doc = documented[path]
        assert doc, f"{path}: no comment"
        node = raw
        for part in path.split("."):
            node = node[part]
        if not dataclasses.is_dataclass(tp):
            # Shown with its default value, and the allowed values or range said.
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert node == (list(default) if isinstance(default, tuple) else default), path
        if typing.get_origin(tp) is typing.Literal:
            assert " | ".join(typing.get_args(tp)) in doc, path
        if "min" in f.metadata:
            assert f"{_num(f.metadata['min'])} to {_num(f.metadata['max'])}" in doc, path


def test_example_config_shows_an_account_entry() -> None:
    example = _accounts_example(EXAMPLE.read_text(encoding="utf-8"))
    entries = yaml.safe_load(example)
    assert isinstance(entries, list) and len(entries) == 1
    names = [f.name for f in dataclasses.fields(config.AccountConfig)]
    assert list(entries[0]) == names
    cfg = config.parse(yaml.safe_dump({"accounts": entries}), env={})
    assert cfg.accounts[0].account_id == "111111111111"
    lines = [line.strip() for line in example.splitlines()]
    for name in names:
        at = next(i for i, line in enumerate(lines) if re.match(rf"^(- )?{name}:", line))
        assert at > 0 and "#" in lines[at - 1], f"accounts[].{name}: no comment"


def test_example_config_mentions_the_environment() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert config.ENV_CONFIG in text
    for var, path in config.ENV_OVERRIDES.items():
        assert re.search(rf"^#\s+{var}\s+{re.escape(path)}$", text, re.M), var


def test_demo_config() -> None:
    cfg = config.load(str(DEMO), env={})
    assert cfg.aws.endpoint_url == "http://127.0.0.1:5000"
    assert cfg.aws.region == "us-east-1"
    assert cfg.listen == "127.0.0.1:9877"
    assert cfg.interval_seconds == 15.0
    assert cfg.accounts == () and not cfg.organizations.enabled
    assert "moto_server -p 5000" in DEMO.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------
# Property: nothing but a Config or a ConfigError, whatever the document

KEYS = st.from_regex(r"[a-z_]{1,12}", fullmatch=True) | st.integers(-5, 5)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=30))
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(KEYS, inner, max_size=3), max_leaves=8)
STRINGS = st.sampled_from([
    ":9877", "127.0.0.1:9877", "[::1]:1", "0.0.0.0:65535", "0.0.0.0:65536", "host:0", "",
    "http://127.0.0.1:5000", "https://iam.amazonaws.com", "ftp://x", "us-east-1",
    ARN_1, ARN_2, "arn:aws:iam::111111111111:role/other", "arn:aws:iam::1:role/x",
    "iam-key-exporter", "ab", "a", "x y", "OrganizationAccountAccessRole",
])


def _for_type(tp: Any, meta: Any) -> st.SearchStrategy[Any]:
    """Values for a key of this type: mostly plausible (so valid configs come up too),
    sometimes anything."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return st.none() | _for_type(inner, meta)
    if origin is typing.Literal:
        plausible: st.SearchStrategy[Any] = st.sampled_from(typing.get_args(tp))
    elif origin is tuple:
        plausible = st.lists(_for_type(typing.get_args(tp)[0], {}), max_size=3)
    elif dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        optional = {f.name: _for_type(hints[f.name], f.metadata)
                    for f in dataclasses.fields(tp)}
        plausible = st.fixed_dictionaries({}, optional=optional)  # type: ignore[arg-type]
    elif tp is bool:
        plausible = st.booleans()
    elif tp in (int, float):
        lo, hi = meta.get("min", 0), meta.get("max", 100)
        plausible = st.integers(int(lo) - 2, int(hi) + 2) | st.floats(lo - 1, hi + 1)
    else:
        plausible = STRINGS | st.text(max_size=20)
    return st.one_of(plausible, plausible, plausible, JUNK)


DOCUMENTS = st.one_of(
    _for_type(Config, {}),
    _for_type(Config, {}).map(lambda d: d | {"extra_key": 1} if isinstance(d, dict) else d),
    JUNK,
)
PATH_PREFIX = re.compile(r"^(config|[\w.\[\]<>-]+): ")


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_any_document_gives_a_config_or_a_config_error(doc: Any) -> None:
    try:
        cfg = config.parse(_dump(doc), env={})
    except ConfigError as e:
        assert PATH_PREFIX.match(str(e)), str(e)
        return
    assert isinstance(cfg, Config)
    assert math.isfinite(cfg.interval_seconds)
    text = config.dump(cfg)
    assert config.dump(config.parse(text, env={})) == text


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet="{}[]:,-?&*!|>'\"%@` \n\t#ab01.~<=\\", max_size=40))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        assert isinstance(config.parse(text, env={}), Config)
    except ConfigError as e:
        assert str(e)


@settings(max_examples=150, deadline=None, database=None)
@given(st.sampled_from(["!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ",
                        "!!null ", "!!str ", "!!set ", "!!omap ", "!!pairs ", ""]),
       st.text(alphabet="0123456789-:.TZ+ abx=[]{}", max_size=25), st.booleans())
def test_any_tagged_scalar_gives_a_config_or_a_config_error(tag: str, value: str,
                                                            as_key: bool) -> None:
    text = f"? {tag}{value}\n: 1\n" if as_key else f"interval_seconds: {tag}{value}\n"
    try:
        assert isinstance(config.parse(text, env={}), Config)
    except ConfigError as e:
        # A key of any type can be unknown, so its path can be anything, even b''.
        assert as_key or PATH_PREFIX.match(str(e)), str(e)


@settings(max_examples=10, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_any_document_through_the_cli(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yml"
        path.write_text(_dump(doc), encoding="utf-8")
        try:
            want: Config | str = config.load(str(path), env={})
        except ConfigError as e:
            want = str(e)
        run = _run_cli(["check-config", "--config", str(path)])
    assert "Traceback" not in run.stderr
    if isinstance(want, str):
        assert run.returncode == 2
        assert run.stderr == f"{CLI_PREFIX}{want}\n"
    else:
        _assert_prints(run, want)


@pytest.mark.parametrize(("env", "want"), [
    ({"POD_NAME": "iam-key-exporter-2"}, 2),
    ({"HOSTNAME": "iam-key-exporter-0"}, 0),
    ({"POD_NAME": "exporter-1", "HOSTNAME": "other-0"}, 1),
    ({"POD_NAME": "x-1", "IAM_KEY_EXPORTER_SHARD_INDEX": "2"}, 2),
])
def test_shard_index_from_the_pod_ordinal(env: dict[str, str], want: int) -> None:
    cfg = config.parse("sharding:\n  total: 3\n", env=env)
    assert cfg.sharding.index == want


@pytest.mark.parametrize(("env", "error"), [
    ({}, "sharding.index: required when sharding.total > 1, unless $POD_NAME or $HOSTNAME "
         "ends in -<ordinal> (a StatefulSet pod)"),
    ({"HOSTNAME": "box"}, "sharding.index: required when sharding.total > 1"),
    ({"POD_NAME": "exporter-3"}, "sharding.index: $POD_NAME ('exporter-3') gives shard 3, "
                                 "but sharding.total is 3"),
])
def test_shard_index_errors(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse("sharding:\n  total: 3\n", env=env)
    assert str(e.value).startswith(error)


def test_include_self_default_follows_the_accounts() -> None:
    assert config.parse("").collect_self
    assert not config.parse(f"accounts:\n  - role_arn: {ARN_1}\n").collect_self
    assert not config.parse("organizations:\n  enabled: true\n").collect_self
    assert config.parse("include_self: true\norganizations:\n  enabled: true\n").collect_self


def test_user_filters() -> None:
    users = config.parse("collection:\n  users:\n    include_paths: [/eng/]\n"
                         "    exclude_paths: [/eng/old/]\n    include_names: ['svc-.*', ci]\n"
                         "    exclude_names: [svc-tmp]\n").collection.users
    assert users.matches("svc-a", "/eng/")
    assert users.matches("ci", "/eng/x/")
    assert not users.matches("cia", "/eng/")  # full match, not prefix
    assert not users.matches("svc-tmp", "/eng/")
    assert not users.matches("svc-a", "/eng/old/")
    assert not users.matches("svc-a", "/")
    assert not config.CollectionConfig().users.active
