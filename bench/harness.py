"""Shared pieces of the benchmarks: AWS environment, exporter configs, the daemon, scrapes."""

from __future__ import annotations

import http.client
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exporter.config import Config, parse  # noqa: E402

# Fake credentials only, and nothing that could reach real AWS or a developer's profile.
# (tests/helpers.py uses it as ISOLATED_ENV.)
CREDS = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
         "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
         "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_EC2_METADATA_DISABLED": "true",
         "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
CONSOLE_SCRIPT = Path(sys.executable).parent / "iam-key-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolate_env() -> None:
    for var in [v for v in os.environ if v.startswith(("AWS_", "IAM_KEY_EXPORTER_"))]:
        del os.environ[var]
    os.environ.update(CREDS)


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without AWS_* / IAM_KEY_EXPORTER_*, plus CREDS and extra."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "IAM_KEY_EXPORTER_"))}
    return {**env, **CREDS, **(extra or {})}


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 grace: float = 10.0) -> None:
    """Sends sig to a running process, waits up to grace seconds, then kills it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(
            out.get(k), dict) else v
    return out


def config_dict(endpoint: str | None, concurrency: int = 8, **extra: Any) -> dict[str, Any]:
    """A config against the fake: each user read once a day (the benchmark asks for the
    passes it measures, Poller.run_once). endpoint None: each service's from
    AWS_ENDPOINT_URL_<service> (scenarios 8-10)."""
    base: dict[str, Any] = {
        "aws": {"endpoint_url": endpoint},
        "interval_seconds": 86400,
        "log_level": "warning",
        "collection": {"concurrency": concurrency},
    }
    return deep_merge(base, extra)


def load_config(data: Mapping[str, Any]) -> Config:
    """The parsed config, through the exporter's own loader (a bad one fails the scenario)."""
    return parse(yaml.safe_dump(data), env={})


# -- statistics and tables ----------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


# -- the daemon ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            out += [int(x) for x in text.split()]
    except OSError:
        pass
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Daemon:
    """The real console script (CLI → gunicorn → worker → poller) on a config."""

    def __init__(self, cfg: dict[str, Any], tree: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """``tree``: run the exporter of another checkout (``python -m exporter`` there);
        ``env``: more environment (e.g. AWS_ENDPOINT_URL_SQS)."""
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="iamx-bench-"))
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log = open(self.dir / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        cmd = [str(CONSOLE_SCRIPT)] if tree is None else [sys.executable, "-m", "exporter"]
        more = {"PYTHONUNBUFFERED": "1", **({"PYTHONPATH": str(tree)} if tree else {}),
                **(env or {})}
        self.proc = subprocess.Popen(
            [*cmd, "--config", str(path), "--listen", f"127.0.0.1:{self.port}"],
            cwd=tree or ROOT, env=subprocess_env(more), stdout=self.log,
            stderr=subprocess.STDOUT)
        self.conn: http.client.HTTPConnection | None = None
        self.ready_seconds = float("nan")

    def logs(self) -> str:
        self.log.flush()
        return (self.dir / "daemon.log").read_text(errors="replace")[-3000:]

    def get(self, path: str, gzip: bool = False) -> tuple[int, bytes, dict[str, str]]:
        """GET over one keep-alive connection (as Prometheus scrapes)."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request("GET", path, headers={
                    "Accept-Encoding": "gzip" if gzip else "identity"})
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
            logs = self.logs()
            # "collection failed": an older tree's cycle; the continuous core logs what
            # failed ("listing the account's users failed; the last known data is kept").
            if "collection failed" in logs or "failed; the last known data is kept" in logs:
                raise RuntimeError(f"daemon's collection failed:\n{logs}")
            try:
                if self.get("/readyz")[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"daemon not ready after {timeout:g}s:\n{self.logs()}")

    def worker_pid(self) -> int:
        """The gunicorn worker (the process that collects and serves); the daemon itself
        if it has no child."""
        kids = children(self.proc.pid)
        return kids[0] if kids else self.proc.pid

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        stop_process(self.proc, grace=20)
        self.log.close()


def scrape_times(get: Any, n: int, gzip: bool, warmups: int = 2) -> tuple[list[float], int]:
    """n timed GET /metrics (after warm-ups); (seconds each, body bytes)."""
    size = 0
    for _ in range(warmups):
        get("/metrics", gzip)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, body, _ = get("/metrics", gzip)
        times.append(time.perf_counter() - t)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        size = len(body)
    return times, size


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import platform

    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": model,
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}
