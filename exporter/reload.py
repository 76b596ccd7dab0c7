"""Config reload (SIGHUP) inside the running worker: gunicorn's own HUP would start a
fresh worker and lose the collected data."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from exporter import logs, webconfig
from exporter.auth import BasicAuth
from exporter.collector.config_reload import ReloadState
from exporter.config import Config, ConfigError
from exporter.webconfig import WebConfig

log = logging.getLogger("exporter.reload")

# Settings that only take effect at start: the listener and the gunicorn worker.
RESTART_ONLY = ("listen", "web")


def _changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the differing fields of two config dataclasses (one level deep)."""
    out = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and not prefix:
            out += _changes(a, b, f"{name}.")
        else:
            out.append(name)
    return out


class Reloader:
    """Re-reads the config in the running worker; called on SIGHUP.

    ``load`` returns the new config (the same way it was loaded at start, command-line
    overrides included) or raises ConfigError; ``apply`` hands it to the running parts
    (``Poller.reconfigure``). A config that fails to load, or that ``apply`` refuses, is
    logged once and the running config is kept. Settings in RESTART_ONLY are logged as
    needing a restart and keep their running values. The web config file is re-read
    too: basic_auth_users apply at once; TLS settings need a restart (the certificate
    and key files themselves are read again for every new connection).
    """

    def __init__(self, load: Callable[[], Config], current: Config,
                 apply: Callable[[Config], object],
                 web_config: WebConfig | None = None) -> None:
        self.load = load
        self.current = current
        self.apply = apply
        self.started_tls = web_config.tls if web_config else None
        self.state = ReloadState()
        self.auth: BasicAuth | None = None  # set by App
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            return self._reload()

    def _failed(self, message: str, exc: BaseException) -> bool:
        log.error(message, extra={"error": str(exc) or type(exc).__name__})
        self.state.record(False)
        return False

    def _reload(self) -> bool:
        old = self.current
        log.info("SIGHUP: reloading the config")
        try:
            new = self.load()
            web_cfg = webconfig.load(old.web.config_file)
        except ConfigError as e:
            return self._failed("config reload rejected; keeping the running config", e)
        except Exception as e:  # an unreadable file etc.: never let a reload crash
            return self._failed("config reload failed; keeping the running config", e)
        changed = _changes(old, new)
        restart = [c for c in changed if c.split(".")[0] in RESTART_ONLY]
        if web_cfg is not None and web_cfg.tls != self.started_tls:
            restart.append("tls_server_config (web config file)")
        live = dataclasses.replace(new, listen=old.listen, web=old.web)
        try:
            self.apply(live)
        except Exception as e:
            return self._failed("config reload rejected; keeping the running config", e)
        if (live.log_format, live.log_level) != (old.log_format, old.log_level):
            logs.reconfigure(live.log_format, live.log_level)
        if self.auth is not None:
            self.auth.set_users(web_cfg.basic_auth_users if web_cfg else {})
        self.current = live
        applied = [c for c in changed if c not in restart]
        log.info("config reloaded", extra={"changed": ", ".join(applied) or "nothing"})
        if restart:
            log.warning("config reload: these settings need a restart to take effect",
                        extra={"keys": ", ".join(restart)})
        self.state.record(True)
        return True
