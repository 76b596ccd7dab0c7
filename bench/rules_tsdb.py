"""The estate's samples in Prometheus' TSDB, as in production: the history backfilled as
blocks (Backfill, with promtool), the current state served for Prometheus to scrape into
its head (Exposition, the exporter's stand-in)."""

from __future__ import annotations

import concurrent.futures
import http.server
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.rules_estate import Series, write_chunk
from bench.rules_prometheus import tool

# promtool reads about 300,000 samples a second on one core: two at once, on two windows.
PROMTOOLS = 2
BLOCK = 7200  # promtool's and Prometheus' block range (s): one backfill file per window


# -- backfill ------------------------------------------------------------------------------


class Backfill:
    """The history in a Prometheus data directory, from t0 up to the present: one
    OpenMetrics file per 2 h-aligned window, `promtool tsdb create-blocks-from openmetrics`
    on each (in a second thread, while the next file is written)."""

    def __init__(self, work: Path, fams: list[tuple[str, list[Series]]], t0: int,
                 step: int, log: Callable[[str], None]) -> None:
        self.work, self.fams, self.step, self.log = work, fams, step, log
        self.data = work / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.next = t0  # the first sample not backfilled yet
        self.samples = 0
        self.bytes = 0
        self.chunks = 0
        self.seconds = {"write": 0.0, "promtool": 0.0}
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        return self.next - self.step

    def _promtool(self, path: Path) -> None:
        out = path.with_suffix(".blocks")
        t = time.perf_counter()
        r = subprocess.run([tool("promtool"), "tsdb", "create-blocks-from", "openmetrics",
                            "-q", str(path), str(out)], capture_output=True, text=True)
        with self._lock:  # summed over the threads
            self.seconds["promtool"] += time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"promtool failed on {path.name}: {r.stderr[-2000:]}")
        for block in out.iterdir():
            if block.is_dir():
                block.rename(self.data / block.name)
        shutil.rmtree(out)
        path.unlink()

    def to_now(self, behind: int = 0) -> None:
        """Backfills every sample up to `behind` s before the present (the newest at most
        one step older)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=PROMTOOLS) as pool:
            while True:
                pending: list[concurrent.futures.Future[None]] = []
                now = (int(time.time()) - behind) // self.step * self.step
                while self.next <= now:
                    # At most PROMTOOLS files on disk besides the one being written.
                    while len(pending) >= PROMTOOLS:
                        pending.pop(0).result()
                    lo = self.next
                    window_end = (lo // BLOCK + 1) * BLOCK - 1
                    hi = min(now, lo + (window_end - lo) // self.step * self.step)
                    path = self.work / f"chunk-{self.chunks:03d}.om"
                    t = time.perf_counter()
                    with open(path, "w", buffering=8 << 20) as f:
                        self.samples += write_chunk(f, self.fams, lo, hi, self.step)
                    self.seconds["write"] += time.perf_counter() - t
                    self.bytes += path.stat().st_size
                    self.chunks += 1
                    self.next = hi + self.step
                    pending.append(pool.submit(self._promtool, path))
                for p in pending:
                    p.result()
                if (int(time.time()) - behind) // self.step * self.step < self.next:
                    return

    def reset_head(self) -> None:
        """Drops what a stopped Prometheus wrote (rule results, alert state): the next
        one starts from the backfilled blocks alone."""
        for name in ("wal", "chunks_head"):
            shutil.rmtree(self.data / name, ignore_errors=True)
        for name in ("lock", "queries.active"):
            (self.data / name).unlink(missing_ok=True)


# -- the exporter's stand-in: the estate's current state, scraped -------------------------


class Exposition:
    """An HTTP server on 127.0.0.1 serving, at any path, every series of the families
    except `up` (Prometheus writes it) at its value at the current step (the history's
    grid), in the Prometheus text format without timestamps, as the exporter would. One
    render per step, cached (about 45 MB and 0.3-1 s at 50,000 users)."""

    def __init__(self, fams: list[tuple[str, list[Series]]], step: int) -> None:
        self.series = [s for n, ss in fams if n != "up" for s in ss]
        self.step = step
        self.served: list[tuple[float, int]] = []  # (request time, lines) of each scrape
        self._cache: tuple[int, bytes, int] = (-1, b"", 0)
        self._lock = threading.Lock()
        self.body()  # the first render, before Prometheus starts
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                started = time.time()
                body, lines = owner.body()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                owner.served.append((started, lines))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def render(self, t: int) -> tuple[bytes, int]:
        out = [f"{s.head} {v}\n" for s in self.series if (v := s.at(t)) is not None]
        return "".join(out).encode(), len(out)

    def body(self) -> tuple[bytes, int]:
        """The exposition at the current step, and its line count."""
        t = int(time.time()) // self.step * self.step
        with self._lock:
            if self._cache[0] != t:
                self._cache = (t, *self.render(t))
            return self._cache[1], self._cache[2]

    def lines_served(self, since: float) -> int | None:
        """The lines of the first response served at or after `since`."""
        return next((n for t, n in list(self.served) if t >= since), None)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
