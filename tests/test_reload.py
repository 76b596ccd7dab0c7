"""SIGHUP reloads the config inside the running worker: no restart, no data lost; a bad
config is rejected and the running one kept, and iam_exporter_config_last_reload_* say so."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml

from exporter import reload, web
from exporter.config import Config, ConfigError
from exporter.metrics import Live
from tests.awsproxy import AwsProxy
from tests.daemon import Daemon, sample
from tests.helpers import MOTO_ACCOUNT, add_user, make_config

A = MOTO_ACCOUNT
OK = "iam_exporter_config_last_reload_successful"
STAMP = "iam_exporter_config_last_reload_success_timestamp_seconds"


def base_config(proxy: AwsProxy, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "interval_seconds": 3600,
        "aws": {"endpoint_url": proxy.url, "max_attempts": 1, "read_timeout_seconds": 3},
        "collection": {"strategy": "list", "last_used": "off"},
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
def start(daemons: Callable[..., Daemon]) -> Callable[..., Daemon]:
    return daemons


def rewrite(d: Daemon, cfg: dict[str, Any] | str) -> None:
    d.config_path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))


def last_success(s: dict[Any, float]) -> float:
    return sample(s, "iam_exporter_last_success_timestamp_seconds", account_id=A) or 0.0


def passes_end(d: Daemon, after: float, passes: int = 1, timeout: float = 15
               ) -> dict[Any, float]:
    """Scrapes until ``passes`` more passes ended after the one that ended at ``after``."""
    s: dict[Any, float] = {}
    for _ in range(passes):
        s = d.wait_for(lambda s, after=after: last_success(s) > after, timeout=timeout)
        after = last_success(s)
    return s


@pytest.mark.e2e
def test_sighup_applies_a_new_config_without_a_restart(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    add_user(iam, "alice", ("Active",))
    d = start(base_config(proxy))
    d.wait_ready()
    worker = d.worker_pid
    s = d.scrape()
    assert s[(OK, ())] == 1
    loaded_at = s[(STAMP, ())]
    assert last_success(s) > 0 and s[("iam_exporter_poll_interval_seconds", ())] == 3600
    first = last_success(s)
    assert proxy.counts()["GenerateCredentialReport"] == 0

    rewrite(d, base_config(proxy, interval_seconds=1,
                           collection={"strategy": "credential-report"}))
    d.reload()
    # The new interval applies at once (not after the old hour), and so does the strategy.
    s = passes_end(d, first, passes=2)
    assert s[("iam_exporter_poll_interval_seconds", ())] == 1
    assert proxy.counts()["GenerateCredentialReport"] >= 1
    assert s[(OK, ())] == 1 and s[(STAMP, ())] > loaded_at
    assert sample(s, "iam_user_access_keys", account_id=A, user_name="alice",
                  status="Active") == 1
    # Same worker: the collected data and the counters carried on.
    assert d.worker_pid == worker
    assert d.proc.poll() is None
    logs = d.logs()
    assert "config reloaded" in logs and "interval_seconds" in logs
    assert "collection.strategy" in logs


@pytest.mark.e2e
def test_a_bad_config_is_rejected_and_the_old_one_kept(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    add_user(iam, "alice", ("Active",))
    d = start(base_config(proxy, interval_seconds=1))
    d.wait_ready()
    worker = d.worker_pid
    loaded_at = d.scrape()[(STAMP, ())]
    for bad, words in ((base_config(proxy, interval_seconds=1, intervall=5), "intervall"),
                       ("interval_seconds: [\n", "invalid YAML"),
                       (base_config(proxy, interval_seconds=0), "interval_seconds")):
        rewrite(d, bad)
        d.reload()
        s = d.wait_for(lambda s: s[(OK, ())] == 0, timeout=10)
        assert s[(STAMP, ())] == loaded_at
        # Still serving, still reading on the old interval.
        s = passes_end(d, last_success(s), passes=2, timeout=10)
        assert s[("iam_exporter_poll_interval_seconds", ())] == 1
        assert d.get("/readyz").status_code == 200
        rejected = [ln for ln in d.logs().splitlines() if "config reload rejected" in ln]
        assert rejected and words in rejected[-1], rejected
        # Fixed again: accepted.
        rewrite(d, base_config(proxy, interval_seconds=1))
        d.reload()
        s = d.wait_for(lambda s: s[(OK, ())] == 1, timeout=10)
        assert s[(STAMP, ())] > loaded_at
        loaded_at = s[(STAMP, ())]
    assert d.worker_pid == worker
    assert "Traceback" not in d.logs()


@pytest.mark.e2e
def test_a_new_request_budget_is_served_under_the_real_account_id(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon]) -> None:
    """A new aws.max_requests_per_second builds the own account's target anew: its budget
    is registered under the account id known by then, never under "unknown"."""
    add_user(iam, "alice", ("Active",))
    cfg = base_config(proxy, interval_seconds=1, aws={
        "endpoint_url": proxy.url, "max_attempts": 1, "read_timeout_seconds": 3,
        "max_requests_per_second": 1000})
    d = start(cfg)
    d.wait_ready()

    def budget(s: dict[Any, float], account_id: str = A) -> float | None:
        return sample(s, "iam_exporter_iam_request_budget", account_id=account_id)

    def unknown(s: dict[Any, float]) -> list[Any]:
        return [k for k in s if ("account_id", "unknown") in k[1]]

    s = d.wait_for(lambda s: budget(s) == 1000)
    assert unknown(s) == []
    rewrite(d, {**cfg, "aws": {**cfg["aws"], "max_requests_per_second": 50}})
    d.reload()
    s = d.wait_for(lambda s: budget(s) == 50)
    # Passes go on with the new target (and its budget).
    s = passes_end(d, last_success(s), passes=2)
    assert budget(s) == 50
    assert unknown(s) == [], unknown(s)
    assert [k for k in s if k[0] == "iam_exporter_iam_request_budget"] == [
        ("iam_exporter_iam_request_budget", (("account_id", A),))]
    assert sample(s, "iam_user_access_keys", account_id=A, user_name="alice",
                  status="Active") == 1


@pytest.mark.e2e
def test_restart_only_settings_are_named_and_basic_auth_users_reload(
        iam: Any, proxy: AwsProxy, start: Callable[..., Daemon], tmp_path: Path) -> None:
    web_file = tmp_path / "web.yml"

    def users(password: str) -> None:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        web_file.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))

    users("first")
    cfg = base_config(proxy, web={"config_file": str(web_file)})
    d = start(cfg, request_kwargs={"auth": ("prom", "first")})
    d.wait_ready()
    users("second")
    rewrite(d, {**cfg, "web": {"config_file": str(web_file), "threads": 3},
                "log_level": "debug"})
    d.reload()
    deadline = time.monotonic() + 10
    while "config reloaded" not in d.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    d.request_kwargs["auth"] = ("prom", "second")
    assert d.scrape()[(OK, ())] == 1
    assert requests.get(d.url + "/metrics", auth=("prom", "first"),
                        timeout=10).status_code == 401
    warning = [ln for ln in d.logs().splitlines() if "need a restart" in ln]
    assert len(warning) == 1 and "web.threads" in warning[0], warning
    assert "log_level" in d.logs()


# --------------------------------------------------------------------------- in-process


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.applied: list[Config] = []
        self.fail = fail

    def __call__(self, cfg: Config) -> None:
        if self.fail:
            raise ValueError("cannot apply")
        self.applied.append(cfg)


def reload_text(r: reload.Reloader) -> bytes:
    """The reload state's families, as a scrape renders them."""
    return Live(r.state, process=False).render()


def test_reloader_keeps_restart_only_settings_and_reports(
        caplog: pytest.LogCaptureFixture) -> None:
    old = make_config(listen="0.0.0.0:9877", interval_seconds=60)
    new = make_config(listen="127.0.0.1:1", interval_seconds=30, web={"threads": 2})
    apply = Recorder()
    r = reload.Reloader(lambda: new, old, apply)
    t0 = r.state.success_timestamp
    assert reload_text(r).startswith(b"# HELP iam_exporter_config_last_reload_successful ")
    with caplog.at_level(logging.INFO, logger="exporter.reload"):
        assert r() is True
    applied = apply.applied[0]
    assert applied.interval_seconds == 30
    assert applied.listen == old.listen and applied.web == old.web
    assert r.current is applied
    assert r.state.successful and r.state.success_timestamp >= t0
    assert b"iam_exporter_config_last_reload_successful 1.0\n" in reload_text(r)
    warn = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warn) == 1 and warn[0].keys == "listen, web.threads"  # type: ignore[attr-defined]


@pytest.mark.parametrize("fail", ["load", "apply", "crash"])
def test_reloader_failure_keeps_the_running_config(
        fail: str, caplog: pytest.LogCaptureFixture) -> None:
    old = make_config(interval_seconds=60)

    def load() -> Config:
        if fail == "load":
            raise ConfigError("interval_seconds: expected a number")
        if fail == "crash":
            raise OSError("disk on fire")
        return dataclasses.replace(old, interval_seconds=5)

    apply = Recorder(fail=fail == "apply")
    r = reload.Reloader(load, old, apply)
    t0 = r.state.success_timestamp
    with caplog.at_level(logging.INFO, logger="exporter.reload"):
        assert r() is False
    assert r.current is old and apply.applied == []
    assert not r.state.successful and r.state.success_timestamp == t0
    assert b"iam_exporter_config_last_reload_successful 0.0\n" in reload_text(r)
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None


def test_app_without_reloader_ignores_sighup(caplog: pytest.LogCaptureFixture) -> None:
    from exporter.inventory import Snapshot
    from tests.test_web import exposition

    app = web.App(web.Store(exposition(Snapshot())))
    with caplog.at_level(logging.WARNING, logger="exporter.web"):
        app.reload()
    assert "SIGHUP ignored" in caplog.text


def test_reload_metrics_are_served_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from werkzeug.test import Client

    from exporter.inventory import Snapshot
    from tests.helpers import promtool_check_metrics
    from tests.test_web import exposition

    cfg = make_config()
    r = reload.Reloader(lambda: cfg, cfg, Recorder())
    body = Client(web.App(web.Store(exposition(Snapshot())), reloader=r)).get(
        "/metrics").get_data()
    names = [f.name for f in text_string_to_metric_families(body.decode())]
    assert OK in names and STAMP in names and len(names) == len(set(names))
    check = promtool_check_metrics(body)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
