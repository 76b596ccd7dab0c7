"""A stock Prometheus process for bench/rules_cost.py: its configuration, the queries and
metrics the measurement reads, and the binaries it runs (tool())."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.harness import free_port, proc_status, stop_process
from bench.rules_estate import INSTANCE, JOB


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} is not installed (run: bash .ci/install-tools)")
    return path


class Prometheus:
    """A stock prometheus on 127.0.0.1 over a data directory, scraping the exporter's
    stand-in (`target`, every `scrape_every` s; None: no scrape) on top of the backfilled
    history: the newest samples in its head, as in production."""

    def __init__(self, work: Path, data: Path, rules: Path | None, eval_interval: str,
                 target: str | None, scrape_every: int, lookback: int = 300) -> None:
        self.work, self.eval_interval = work, eval_interval
        self.target, self.scrape_every = target, scrape_every
        self.config = work / "prometheus.yml"
        self.configure(rules)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "prometheus.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([
            tool("prometheus"), f"--config.file={self.config}",
            f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=30d",
            # One block range: no compaction runs while the rules are measured.
            "--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
            f"--query.lookback-delta={lookback}s",
        ], cwd=work, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.time()

    def configure(self, rules: Path | None) -> None:
        cfg: dict[str, Any] = {
            "global": {"scrape_interval": "60s", "evaluation_interval": self.eval_interval}}
        if self.target is not None:
            # honor_labels: the served series carry job and instance (those of the
            # history); the target's own (up, scrape_*) get the same instance.
            cfg["scrape_configs"] = [{
                "job_name": JOB, "honor_labels": True,
                "scrape_interval": f"{self.scrape_every}s",
                "scrape_timeout": f"{min(30, self.scrape_every)}s",
                "static_configs": [{"targets": [self.target]}],
                "relabel_configs": [{"target_label": "instance", "replacement": INSTANCE}]}]
        if rules is not None:
            cfg["rule_files"] = [str(rules)]
        self.config.write_text(yaml.safe_dump(cfg))

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def http(self, path: str, data: dict[str, str] | None = None, timeout: float = 300
             ) -> bytes:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body,
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as e:
            return bytes(e.read())

    def wait_ready(self, timeout: float = 300) -> float:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n"
                                   f"{self.logs()}")
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=2).close()
                return time.monotonic() - t
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.logs()}")

    def query(self, expr: str, at: float) -> dict[str, Any]:
        t = time.perf_counter()
        raw = self.http("/api/v1/query", {"query": expr, "time": f"{at:.3f}",
                                          "stats": "all"})
        wall = time.perf_counter() - t
        body = json.loads(raw)
        if body.get("status") != "success":
            return {"wall_seconds": wall, "error": str(body.get("error", body))[:300]}
        stats = body["data"].get("stats", {})
        timings, samples = stats.get("timings", {}), stats.get("samples", {})
        result = body["data"]["result"]
        return {"wall_seconds": wall,
                "eval_seconds": float(timings.get("evalTotalTime", wall)),
                "samples": int(samples.get("totalQueryableSamples", 0)),
                "peak_samples": int(samples.get("peakSamples", 0)),
                "series": len(result) if isinstance(result, list) else 1}

    def scalar(self, expr: str, at: float) -> float:
        body = json.loads(self.http("/api/v1/query", {"query": expr, "time": f"{at:.3f}"}))
        result = body["data"]["result"] if body.get("status") == "success" else []
        return float(result[0]["value"][1]) if result else math.nan

    def group_metrics(self) -> dict[str, tuple[float, float]]:
        """{group name: (last evaluation timestamp, last duration)} from /metrics."""
        text = self.http("/metrics", timeout=30).decode()
        found: dict[str, dict[str, float]] = {}
        for m in re.finditer(r'^prometheus_rule_group_last_(evaluation_timestamp|duration)'
                             r'_seconds\{rule_group="[^"]*;([^"]*)"\} (\S+)$', text, re.M):
            found.setdefault(m.group(2), {})[m.group(1)] = float(m.group(3))
        return {g: (v.get("evaluation_timestamp", 0.0), v.get("duration", 0.0))
                for g, v in found.items()}

    def check_rejected(self, when: str) -> dict[str, float]:
        """Prometheus' counts of scraped samples it did not append: all three, all 0."""
        text = self.http("/metrics", timeout=30).decode()
        found = {m.group(1): float(m.group(2)) for m in re.finditer(
            r"^prometheus_target_scrapes_sample_(out_of_bounds|out_of_order|"
            r"duplicate_timestamp)_total (\S+)$", text, re.M)}
        if len(found) != 3 or any(found.values()):
            raise RuntimeError(f"scraped samples rejected ({when}): {found}\n{self.logs()}")
        return found

    def first_scrape(self, lines_served: Callable[[float], int | None]
                     ) -> dict[str, Any] | None:
        """None until the target's first scrape is queryable (committed to the head); then
        its time, duration and samples, checked: every line served taken, none rejected.
        `lines_served` is Exposition.lines_served, passed in: bench/rules_tsdb.py imports
        this module (for tool()), not the other way round."""
        job = f'{{job="{JOB}"}}'
        at = self.scalar(f"timestamp(scrape_samples_scraped{job})", time.time())
        if math.isnan(at):
            return None
        seen = time.time()
        took = self.scalar(f"scrape_samples_scraped{job}", at)
        served = lines_served(at - 1.0)
        if took != served or not took:
            targets = self.http("/api/v1/targets", timeout=30).decode()[:2000]
            raise RuntimeError(f"the first scrape took {took} samples, {served} lines "
                               f"served:\n{targets}")
        return {"timestamp": at, "seen": seen, "samples": int(took), "served": served,
                "seconds": self.scalar(f"scrape_duration_seconds{job}", at),
                "added": self.scalar(f"scrape_series_added{job}", at),
                "rejected": self.check_rejected("first scrape")}

    def rss(self) -> int:
        try:
            return proc_status(self.proc.pid).get("VmHWM", 0)
        except OSError:
            return 0

    def stop(self, kill: bool = False) -> None:
        if kill:
            stop_process(self.proc, signal.SIGKILL)
        else:
            stop_process(self.proc, grace=60)
        self._log.close()


def parse_time(text: str) -> float:
    """RFC 3339 with nanoseconds (as Prometheus writes it) to unix seconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        return 0.0
    from datetime import datetime

    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float(m.group(2)) if m.group(2) else 0.0)
