"""Runs the real exporter as a subprocess (CLI → gunicorn → worker → poller) for e2e tests."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

# CONSOLE_SCRIPT: the installed console script, as a user runs it (python -m exporter is
# tested by test_cli).
from bench.harness import CONSOLE_SCRIPT, ROOT, deep_merge, free_port, subprocess_env
from tests.helpers import TEST_BUDGET

# Filled in where a test's config leaves them out: a request budget that never slows a
# test down.
DAEMON_DEFAULTS: dict[str, Any] = {"aws": {"max_requests_per_second": TEST_BUDGET}}


def parse_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text → {(sample name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


class Daemon:
    def __init__(self, cfg: dict[str, Any], args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, scheme: str = "http",
                 request_kwargs: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        # passed to every request of get() (e.g. verify= and auth= for TLS + basic auth)
        self.request_kwargs = dict(request_kwargs or {})
        self.dir = tempfile.mkdtemp(prefix="iamx-")
        self.config_path = Path(self.dir) / "config.yaml"
        # (the demo's embedded fake account is left as a user would run it)
        data = cfg if "demo" in args else deep_merge(DAEMON_DEFAULTS, cfg)
        self.config_path.write_text(yaml.safe_dump(data))
        self.log_path = Path(self.dir) / "stderr.log"
        full_env = subprocess_env({"PYTHONUNBUFFERED": "1", **(env or {})})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), *args, "--config", str(self.config_path),
             "--listen", f"127.0.0.1:{self.port}"],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **{**self.request_kwargs, **kw})

    @property
    def worker_pid(self) -> int | None:
        """The pid of gunicorn's (single) worker, the arbiter's child."""
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        pids = [int(p) for p in kids.split()]
        return pids[0] if pids else None

    def reload(self) -> None:
        """SIGHUP to the exporter (the arbiter passes it to the worker)."""
        self.proc.send_signal(signal.SIGHUP)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.get("/readyz").status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"exporter not ready after {timeout}s:\n{self.logs()}")

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get("/healthz")
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(f"exporter not listening after {timeout}s:\n{self.logs()}")

    def scrape(self) -> dict[Any, float]:
        r = self.get("/metrics")
        r.raise_for_status()
        return parse_samples(r.text)

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> dict[Any, float]:
        """Scrapes until predicate(samples) is true; returns those samples."""
        deadline = time.monotonic() + timeout
        samples: dict[Any, float] = {}
        while time.monotonic() < deadline:
            samples = self.scrape()
            if predicate(samples):
                return samples
            time.sleep(0.2)
        raise AssertionError(f"condition not met in {timeout}s; logs:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until exit)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
