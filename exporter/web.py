"""The WSGI app (/metrics, /healthz, /readyz, /) and gunicorn embedded behind the CLI.

gunicorn runs one worker (the poller's state lives in that process) with threads. The
poller is started by ``load()``, which gunicorn calls in the worker after fork, never at
import time and never in the arbiter.
"""

from __future__ import annotations

import gzip
import html
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from exporter import __version__, metrics
from exporter.metrics import Exposition

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from exporter.poller import Poller

Response = tuple[str, list[tuple[str, str]], bytes]  # status, headers, body


class Store:
    """Holds the current exposition; replaced as one reference, read without locks."""

    def __init__(self, initial: Exposition) -> None:
        self.exposition = initial

    def set(self, exposition: Exposition) -> None:
        self.exposition = exposition


def _qvalue(params: list[str]) -> float:
    """The q weight among an Accept-Encoding entry's parameters; 0 if it is not valid."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (RFC 9110 §12.5.3).

    An explicit ``gzip`` entry wins over ``*``; ``q=0`` or an unparsable q refuses.
    """
    star = False
    for part in header.split(","):
        token, *params = part.split(";")
        coding = token.strip().lower()
        if coding == "gzip":
            return _qvalue(params) > 0
        if coding == "*":
            star = _qvalue(params) > 0
    return star


class App:
    def __init__(self, store: Store, poller: Poller | None = None) -> None:
        self.store = store
        self.poller = poller
        self.routes: dict[str, Callable[[WSGIEnvironment], Response]] = {
            "/metrics": self.metrics,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/": self.index,
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        handler = self.routes.get(path)
        if handler is None:
            status, headers, body = "404 Not Found", [], b"not found\n"
        elif method not in ("GET", "HEAD"):
            status, headers, body = ("405 Method Not Allowed", [("Allow", "GET, HEAD")],
                                     b"method not allowed\n")
        else:
            status, headers, body = handler(environ)
        if not any(h[0] == "Content-Type" for h in headers):
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [b"" if method == "HEAD" else body]

    def metrics(self, environ: WSGIEnvironment) -> Response:
        exp = self.store.exposition
        tail = metrics.process_metrics()
        headers = [("Content-Type", metrics.CONTENT_TYPE), ("Vary", "Accept-Encoding")]
        if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            # Two gzip members in one stream are valid gzip (RFC 1952 §2.2); the big one
            # is compressed once per cycle, only the small per-scrape tail here.
            headers.append(("Content-Encoding", "gzip"))
            return "200 OK", headers, exp.gzipped + gzip.compress(tail, compresslevel=1, mtime=0)
        return "200 OK", headers, exp.body + tail

    def healthz(self, _: WSGIEnvironment) -> Response:
        if self.poller is not None and not self.poller.alive():
            return "503 Service Unavailable", [], b"poller thread is not running\n"
        return "200 OK", [], b"ok\n"

    def readyz(self, _: WSGIEnvironment) -> Response:
        if not self.store.exposition.snapshot.ready:
            return "503 Service Unavailable", [], b"no collection cycle has succeeded yet\n"
        return "200 OK", [], b"ready\n"

    def index(self, _: WSGIEnvironment) -> Response:
        snap = self.store.exposition.snapshot
        rows = []
        for st in snap.accounts:
            users = len(st.inventory.users) if st.inventory else "-"
            when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st.last_success))
                    if st.last_success else "never")
            rows.append(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                    st.account_id, st.name, "ok" if st.success else f"failed: {st.error}",
                    users, f"{st.duration:.2f}s", when)) + "</tr>")
        table = "\n".join(rows) or '<tr><td colspan="6">first cycle not finished</td></tr>'
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>iam-key-exporter</title></head>
<body>
<h1>iam-key-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> ·
<a href="/readyz">/readyz</a></p>
<table border="1" cellpadding="4">
<tr><th>account</th><th>name</th><th>last cycle</th><th>users</th><th>duration</th>
<th>last success</th></tr>
{table}
</table>
</body></html>
"""
        return "200 OK", [("Content-Type", "text/html; charset=utf-8")], page.encode()


def serve(listen: str, factory: Callable[[], WSGIApplication], threads: int,
          grace: float, logconfig: dict[str, Any],
          on_exit: Callable[[], None] | None = None) -> int:
    """Runs gunicorn in the foreground until SIGTERM/SIGINT; returns the exit code."""
    from gunicorn.app.base import BaseApplication

    def worker_exit(_server: Any, _worker: Any) -> None:
        if on_exit is not None:
            on_exit()

    options: dict[str, Any] = {
        "bind": [listen],
        "workers": 1,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 60,
        "graceful_timeout": max(1, round(grace)),
        "keepalive": 5,
        "accesslog": None,
        "logconfig_dict": logconfig,
        "proc_name": "iam-key-exporter",
        "limit_request_line": 4094,
        "limit_request_fields": 50,
        "limit_request_field_size": 8190,
        "worker_exit": worker_exit,
        "control_socket_disable": True,  # gunicorn ≥ 25 would write a socket under $HOME
    }

    class Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> WSGIApplication:
            return factory()

    arbiter_pid = os.getpid()
    try:
        Gunicorn().run()
    except SystemExit as e:
        code = int(e.code or 0)
        if os.getpid() != arbiter_pid:
            # The worker is a fork of this very call stack: leaving it normally would run
            # the arbiter's clean-up (finally blocks, atexit) in the worker too.
            logging.shutdown()
            os._exit(code)
        return code
    return 0
