"""The CLI contract: once / check-config / demo exit codes and output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import requests
import yaml

import exporter
from tests.daemon import Daemon, parse_samples, sample
from tests.helpers import MOTO_ACCOUNT, ROOT, add_user, free_port, subprocess_env


def run_cli(*args: str, config: dict[str, Any] | None = None, tmp_path: Any = None,
            env: dict[str, str] | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
    full_env = subprocess_env(env)
    argv = list(args)
    if config is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        argv += ["--config", str(path)]
    return subprocess.run([sys.executable, "-m", "exporter", *argv], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("strategy", ["list", "credential-report"])
def test_once_prints_exposition_and_exits_0(iam: Any, moto: str, tmp_path: Any,
                                            strategy: str) -> None:
    add_user(iam, "alice", ("Active", "Active"))
    add_user(iam, "bob", ("Inactive",))
    r = run_cli("once", tmp_path=tmp_path, config={
        "aws": {"endpoint_url": moto}, "collection": {"strategy": strategy}})
    assert r.returncode == 0, r.stderr
    s = parse_samples(r.stdout)
    A = MOTO_ACCOUNT
    assert sample(s, "iam_user_access_keys", account_id=A, user_name="alice",
                  status="Active") == 2
    assert sample(s, "iam_user_access_keys", account_id=A, user_name="bob",
                  status="Inactive") == 1
    assert sample(s, "iam_exporter_collection_success", account_id=A) == 1
    assert sample(s, "iam_account_never_read_users", account_id=A) == 0  # each user read
    assert "pass done" in r.stderr  # logs go to stderr, never into the exposition
    assert "pass done" not in r.stdout


def test_once_exits_1_when_aws_is_unreachable(tmp_path: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    r = run_cli("once", tmp_path=tmp_path, config={
        "aws": {"endpoint_url": dead, "max_attempts": 1, "connect_timeout_seconds": 1}})
    assert r.returncode == 1, r.stderr
    s = parse_samples(r.stdout)
    assert sample(s, "iam_exporter_collection_success", account_id="unknown") == 0
    assert "EndpointConnectionError" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["once", "check-config", "serve", "demo"])
def test_bad_config_exits_2_naming_the_key(tmp_path: Any, command: str) -> None:
    r = run_cli(command, tmp_path=tmp_path, config={"collection": {"concurrency": "lots"}})
    assert r.returncode == 2
    assert "collection.concurrency: expected an integer, got 'lots'" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_listen_flag_exits_2(tmp_path: Any) -> None:
    r = run_cli("--listen", "nonsense", tmp_path=tmp_path, config={})
    assert r.returncode == 2
    assert "--listen" in r.stderr


def test_check_config_prints_effective_config(tmp_path: Any) -> None:
    r = run_cli("check-config", tmp_path=tmp_path, config={"interval_seconds": 60})
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert eff["interval_seconds"] == 60
    assert eff["collection"]["strategy"] == "list"
    # No deadline any more: the deprecated keys are shown only where a config sets them.
    assert not {"timeout_seconds", "min_pause_seconds"} & set(eff["collection"])
    assert eff["listen"] == "0.0.0.0:9877"


def test_version_flag() -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    assert exporter.__version__ in r.stdout


def test_demo_serves_sample_account_and_stops_cleanly() -> None:
    d = Daemon({}, args=("demo",))
    try:
        d.wait_ready(timeout=60)
        s = d.scrape()
        A = MOTO_ACCOUNT
        from exporter.demo import SAMPLE_USERS

        for name, _, _, statuses in SAMPLE_USERS:
            for status in ("Active", "Inactive"):
                assert sample(s, "iam_user_access_keys", account_id=A, user_name=name,
                              status=status) == statuses.count(status), (name, status)
        assert "metrics at http://127.0.0.1:" in d.logs()
        code, took = d.terminate()
        # Well inside the 8 s grace: nothing in the worker waits for the arbiter's moto.
        assert code == 0 and took < 6, d.logs()
    finally:
        d.stop()


def test_demo_stops_on_ctrl_c() -> None:
    """Ctrl-C in a terminal sends SIGINT to the arbiter and its worker at once."""
    d = Daemon({}, args=("demo",))
    try:
        d.wait_ready(timeout=60)
        worker = d.worker_pid
        assert worker, "no gunicorn worker found"
        started = time.monotonic()
        for pid in [d.proc.pid, worker]:
            os.kill(pid, signal.SIGINT)
        code = d.proc.wait(10)
        assert code == 0, d.logs()
        assert time.monotonic() - started < 4
    finally:
        d.stop()


def test_demo_without_moto_says_how_to_install() -> None:
    code = ("import sys; sys.modules['moto'] = None; sys.modules['moto.server'] = None\n"
            "from exporter.cli import main; sys.exit(main(['demo', '--listen', "
            f"'127.0.0.1:{free_port()}']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "pip install 'iam-key-exporter[demo]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_env_config_path_is_used(tmp_path: Any) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("interval_seconds: 42\n")
    r = run_cli("check-config", env={"IAM_KEY_EXPORTER_CONFIG": str(path)})
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["interval_seconds"] == 42


def test_once_with_no_config_uses_the_standard_aws_environment(iam: Any, moto: str) -> None:
    """No config file at all: the default chain's account, AWS_ENDPOINT_URL respected."""
    add_user(iam, "alice", ("Active",))
    r = run_cli("once", env={"AWS_ENDPOINT_URL": moto})
    assert r.returncode == 0, r.stderr
    s = parse_samples(r.stdout)
    assert sample(s, "iam_user_access_keys", account_id=MOTO_ACCOUNT, user_name="alice",
                  status="Active") == 1


# --------------------------------------------------------------------------- Prometheus-style flags

WEB_CONFIG = ROOT / "tests" / "testdata" / "config" / "web-config.yml"  # password "secret"


def test_prometheus_style_config_flags_are_aliases(tmp_path: Any) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("interval_seconds: 60\n")
    r = run_cli("check-config", "--config.file", str(path), "--web.config.file",
                str(WEB_CONFIG))
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert eff["interval_seconds"] == 60
    assert eff["web"]["config_file"] == str(WEB_CONFIG)


def test_bad_web_listen_address_flag_exits_2(tmp_path: Any) -> None:
    r = run_cli("--web.listen-address", "nonsense", tmp_path=tmp_path, config={})
    assert r.returncode == 2
    assert "--listen" in r.stderr and "nonsense" in r.stderr


def test_serve_with_prometheus_style_flags(iam: Any, moto: str, tmp_path: Any) -> None:
    """--config.file, --web.listen-address and --web.config.file, as Prometheus' own
    exporters take them, on a real server."""
    add_user(iam, "alice", ("Active",))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"interval_seconds": 3600, "aws": {"endpoint_url": moto}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(path),
             "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file",
             str(WEB_CONFIG)], cwd=ROOT, env=subprocess_env(), stdout=out,
            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        assert requests.get(f"{url}/metrics", timeout=5).status_code == 401
        resp = requests.get(f"{url}/metrics", auth=("prometheus", "secret"), timeout=5)
        assert resp.status_code == 200
        s = parse_samples(resp.text)
        assert sample(s, "iam_user_access_keys", account_id=MOTO_ACCOUNT, user_name="alice",
                      status="Active") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
