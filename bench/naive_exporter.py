"""The render-on-scrape baseline: the same samples, rendered by generate_latest per scrape.

This is how a straightforward exporter is written: labelled Gauges in a registry, and
``generate_latest`` (and gzip, when asked) on every scrape, as prometheus_client's own
HTTP server does. It loads the samples from an exposition file (the daemon's own output),
so both sides serve the very same data.

    python -m bench.naive_exporter --exposition metrics.txt --port 0   # prints LISTENING <port>
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import re
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return value.replace("\\\\", "\x00").replace('\\"', '"').replace(
        "\\n", "\n").replace("\x00", "\\")


def load(text: str) -> tuple[CollectorRegistry, int]:
    """A registry of labelled Gauges holding every sample of ``text``; (registry, samples).

    Parses the text format line by line (prometheus_client's own parser takes a minute at
    250,000 samples); counters are loaded as gauges, which render the same way.
    """
    registry = CollectorRegistry(auto_describe=False)
    helps: dict[str, str] = {}
    gauges: dict[str, tuple[Gauge, list[str]]] = {}
    n = 0
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = doc
            continue
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels_text = head.partition("{")
        labels = [(k, _unescape(v)) for k, v in _LABEL.findall(labels_text)]
        found = gauges.get(name)
        if found is None:
            names = [k for k, _ in labels]
            base = name.removesuffix("_total")
            found = (Gauge(name, helps.get(name) or helps.get(base) or name, names,
                           registry=registry), names)
            gauges[name] = found
        g, names = found
        target = g.labels(*[v for _, v in labels]) if names else g
        target.set(float(value))
        n += 1
    return registry, n


def serve(registry: CollectorRegistry, port: int = 0) -> ThreadingHTTPServer:
    """HTTP/1.1 keep-alive with TCP_NODELAY, like the daemon's gunicorn: only the
    per-scrape rendering differs (prometheus_client's own server is HTTP/1.0 and would add
    a connection per scrape)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = generate_latest(registry)
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            if gz:
                body = gzip.compress(body)  # as prometheus_client does, per scrape
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            if gz:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exposition", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    registry, n = load(Path(args.exposition).read_text())
    server = serve(registry, args.port)
    print(f"LISTENING {server.server_port} {n}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
