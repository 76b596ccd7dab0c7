"""The web config file: TLS and basic auth for the HTTP endpoints.

The format follows Prometheus' exporter-toolkit (``--web.config.file``), so one file can
serve several exporters::

    tls_server_config:
      cert_file: /etc/tls/tls.crt          # PEM; relative paths are relative to this file
      key_file: /etc/tls/tls.key
      client_ca_file: /etc/tls/ca.crt      # optional: mutual TLS
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12                   # TLS10 | TLS11 | TLS12 (default) | TLS13
      max_version: TLS13
    basic_auth_users:
      prometheus: $2b$12$...               # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':')

Validation is as strict as the main config: unknown keys, missing files, unreadable
certificates and malformed hashes are errors (``ConfigError``, so the CLI exits 2), and
every message names the file and the key path.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# describe: one wording of a bad value for every config error.
from exporter.yamlfile import ConfigError, describe, parse_yaml, read_text

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit's client_auth_type values that Python's ssl module can honour. Go's
# RequestClientCert / RequireAnyClientCert accept unverified certificates: not offered.
CLIENT_AUTH: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TOP_KEYS = ("tls_server_config", "basic_auth_users")
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
            "max_version")
# $2a$ / $2b$ / $2y$, a two-digit cost, 22 characters of salt and 31 of hash.
BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}\Z", re.ASCII)


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return CLIENT_AUTH[self.client_auth_type]

    def apply(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """Sets the version bounds on a context that already holds the certificate."""
        context.minimum_version = TLS_VERSIONS[self.min_version]
        context.maximum_version = TLS_VERSIONS[self.max_version]
        return context

    def context(self) -> ssl.SSLContext:
        """A server context as gunicorn builds it, with our settings (used to validate)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.client_ca_file)
        ctx.load_cert_chain(certfile=self.cert_file, keyfile=self.key_file)
        ctx.verify_mode = self.verify_mode
        return self.apply(ctx)


@dataclass(frozen=True)
class WebConfig:
    path: str
    tls: TlsConfig | None = None
    # user name → bcrypt hash; empty: no authentication
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)


def _at(where: str, message: str) -> ConfigError:
    """A ConfigError naming its key path; the top level ("") is named by parse() alone."""
    return ConfigError(f"{where}: {message}" if where else message)


def _mapping(value: Any, where: str, known: tuple[str, ...] | None) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _at(where, f"expected a mapping, got {describe(value)}")
    if known is not None:
        for key in value:
            if key not in known:
                name = f"{where}.{key}" if where else str(key)
                raise _at(name, f"unknown key (known keys: {', '.join(known)})")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {describe(value)}")
    return value


def _file(value: Any, where: str, base: str) -> str:
    path = os.path.join(base, _string(value, where))
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: file not found: {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{where}: file not readable: {path}")
    return path


def _choice(value: Any, where: str, choices: Mapping[str, Any], default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, "
                          f"got {describe(value)}")
    return value


def _tls(raw: Any, base: str) -> TlsConfig | None:
    p = "tls_server_config"
    data = _mapping(raw, p, TLS_KEYS)
    if not data:
        return None
    for key in ("cert_file", "key_file"):
        if data.get(key) is None:
            raise ConfigError(f"{p}.{key}: required key is missing")
    auth = _choice(data.get("client_auth_type"), f"{p}.client_auth_type", CLIENT_AUTH,
                   "NoClientCert")
    ca = data.get("client_ca_file")
    tls = TlsConfig(
        cert_file=_file(data["cert_file"], f"{p}.cert_file", base),
        key_file=_file(data["key_file"], f"{p}.key_file", base),
        client_ca_file=None if ca is None else _file(ca, f"{p}.client_ca_file", base),
        client_auth_type=auth,
        min_version=_choice(data.get("min_version"), f"{p}.min_version", TLS_VERSIONS,
                            "TLS12"),
        max_version=_choice(data.get("max_version"), f"{p}.max_version", TLS_VERSIONS,
                            "TLS13"),
    )
    if tls.client_ca_file is not None and auth == "NoClientCert":
        raise ConfigError(f"{p}.client_auth_type: client_ca_file is set but client "
                          "certificates are not checked; use RequireAndVerifyClientCert")
    if tls.client_ca_file is None and auth != "NoClientCert":
        raise ConfigError(f"{p}.client_ca_file: required with client_auth_type {auth}")
    if TLS_VERSIONS[tls.min_version] > TLS_VERSIONS[tls.max_version]:
        raise ConfigError(f"{p}.min_version: {tls.min_version} is above max_version "
                          f"{tls.max_version}")
    try:
        tls.context()
    except ssl.SSLError as e:
        raise ConfigError(f"{p}: cannot use the certificate, key or CA files: "
                          f"{e.reason or e}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the certificate, key or CA files: "
                          f"{e.strerror or e}") from None
    return tls


def _users(raw: Any) -> dict[str, str]:
    p = "basic_auth_users"
    users: dict[str, str] = {}
    for name, hashed in _mapping(raw, p, None).items():
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(f"{p}: user names must be non-empty strings without ':', "
                              f"got {describe(name)}")
        m = BCRYPT_RE.match(hashed) if isinstance(hashed, str) else None
        if m is None or not 4 <= int(m.group(1)) <= 31:
            raise ConfigError(f"{p}.{name}: expected a bcrypt hash ($2b$<cost>$...), "
                              "not a plain password")
        users[name] = hashed
    return users


def parse(text: str, path: str) -> WebConfig:
    """Parses the text of the web config file at ``path`` (for messages and relative paths)."""
    try:
        # Unlike the main config's, these messages give PyYAML's problem only.
        data = parse_yaml(text, context=False)
        top = _mapping(data, "", TOP_KEYS)
        base = os.path.dirname(os.path.abspath(path))
        return WebConfig(path=path, tls=_tls(top.get("tls_server_config"), base),
                         basic_auth_users=_users(top.get("basic_auth_users")))
    except ConfigError as e:
        # removeprefix: a top-level key that itself starts with ": " has always been
        # reported without it.
        raise ConfigError(f"web.config_file {path}: {str(e).removeprefix(': ')}") from None


def load(path: str | None) -> WebConfig | None:
    """Reads and validates the web config file; None when no file is configured."""
    if path is None:
        return None
    text = read_text(path, f"web.config_file: cannot read {path}", f"web.config_file: {path}")
    return parse(text, path)
