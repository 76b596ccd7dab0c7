"""The WSGI app: /metrics (the published exposition plus the per-scrape families),
/healthz, /readyz and a small index page.

Optional basic auth comes from an exporter-toolkit style web config file
(``exporter.webconfig``); gunicorn runs the app (``exporter.server``).
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from exporter import __version__, metrics
from exporter.auth import BasicAuth
from exporter.metrics import Exposition, Live
from exporter.reload import Reloader
from exporter.webconfig import WebConfig

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from exporter.poller import Poller

# status, headers, body (bytes, or chunks sent one after the other: the exposition is
# never copied into one string per scrape)
Response = tuple[str, list[tuple[str, str]], "bytes | Sized"]


class Sized:
    """A body sent piece by piece, whose length is known up front."""

    def __init__(self, pieces: Iterable[bytes], length: int) -> None:
        self.pieces, self.length = pieces, length


log = logging.getLogger("exporter.web")

# Probes answer without authentication: kubelet cannot easily send basic auth, and they
# reveal nothing but "up" and "has data".
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
REALM = "iam-key-exporter"


# How often the exporter's own families (API and request counters, per account) are
# rendered again: often enough for counters, and never during a scrape.
REFRESH_SECONDS = 5.0


# Plain bodies are sent in pieces of about this size: the exposition is thousands of small
# chunks (a family of one account each), and a write per chunk doubles a scrape's time.
PIECE = 1 << 20


def _pieces(chunks: list[bytes]) -> Iterator[bytes]:
    run: list[bytes] = []
    size = 0
    for chunk in chunks:
        run.append(chunk)
        size += len(chunk)
        if size >= PIECE:
            yield b"".join(run)
            run, size = [], 0
    if run:
        yield b"".join(run)


class Store:
    """Holds the current exposition, read without locks: the published accounts part,
    extended with ``extra()`` (the exporter's own families) at each publish and every
    REFRESH_SECONDS, so that a scrape only appends the few per-scrape families."""

    def __init__(self, initial: Exposition, extra: Callable[[], bytes] | None = None) -> None:
        self._lock = threading.Lock()
        self._base = initial
        self._extra = extra
        self._stop = threading.Event()
        self._last_extra = b""
        self.exposition = initial
        self._set(initial)

    def set(self, exposition: Exposition) -> None:
        with self._lock:
            self._set(exposition)

    def _set(self, exposition: Exposition) -> None:
        self._base = exposition
        if self._extra is None:
            self.exposition = exposition
            return
        self._last_extra = self._extra()
        self.exposition = exposition.extend(self._last_extra)

    def refresh(self) -> None:
        """Appends the exporter's own families again, unless they did not change (then
        nothing is copied or compressed: an idle exporter does no work between scrapes)."""
        with self._lock:
            if self._extra is not None and self._extra() is self._last_extra:
                return
            self._set(self._base)

    def start_refreshing(self, every: float = REFRESH_SECONDS) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.refresh()
                except Exception:  # a bug here must not stop the counters for good
                    log.exception("rendering the exporter's own metrics failed")

        threading.Thread(target=loop, name="iam-metrics-refresh", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


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
    def __init__(self, store: Store, poller: Poller | None = None, *,
                 web_config: WebConfig | None = None,
                 reloader: Reloader | None = None, live: Live | None = None) -> None:
        self.store = store
        self.poller = poller
        # Rendered per scrape after the published exposition; process metrics by default.
        self.live = live or Live()
        if reloader is not None:
            self.live.registry.register(reloader.state)
        self.auth = BasicAuth(web_config.basic_auth_users if web_config else None)
        self.reloader = reloader
        if reloader is not None:
            reloader.auth = self.auth
        self.on_drain: list[Callable[[], None]] = []
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
        body: bytes | Sized
        if (path not in OPEN_PATHS and self.auth.enabled
                and not self.auth.check(environ.get("HTTP_AUTHORIZATION", ""))):
            status, headers, body = ("401 Unauthorized", [
                ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')],
                b"unauthorized\n")
        elif handler is None:
            status, headers, body = "404 Not Found", [], b"not found\n"
        elif method not in ("GET", "HEAD"):
            status, headers, body = ("405 Method Not Allowed", [("Allow", "GET, HEAD")],
                                     b"method not allowed\n")
        else:
            status, headers, body = handler(environ)
        if not any(h[0] == "Content-Type" for h in headers):
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        if isinstance(body, bytes):
            body = Sized([body], len(body))
        headers.append(("Content-Length", str(body.length)))
        start_response(status, headers)
        return [b""] if method == "HEAD" else body.pieces

    def metrics(self, environ: WSGIEnvironment) -> Response:
        exp = self.store.exposition
        tail = self.live.render()
        headers = [("Content-Type", metrics.CONTENT_TYPE), ("Vary", "Accept-Encoding")]
        if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            # One gzip member: the published part was compressed once, the tail goes
            # into a copy of its compressor.
            headers.append(("Content-Encoding", "gzip"))
            pieces = exp.gzip_with(tail)
            return "200 OK", headers, Sized(pieces, sum(map(len, pieces)))
        return "200 OK", headers, Sized(_pieces([*exp.chunks, tail]), exp.size + len(tail))

    def healthz(self, _: WSGIEnvironment) -> Response:
        if self.poller is not None and not self.poller.alive():
            return "503 Service Unavailable", [], b"poller thread is not running\n"
        return "200 OK", [], b"ok\n"

    def readyz(self, _: WSGIEnvironment) -> Response:
        if not self.store.exposition.snapshot.ready:
            return ("503 Service Unavailable", [],
                    b"not every watched account has been listed and each of its users "
                    b"read once yet\n")
        return "200 OK", [], b"ready\n"

    def draining(self) -> None:
        """The process is stopping (SIGTERM): what must stop first stops (the event
        consumer); scrapes are still answered until the end."""
        for stop in self.on_drain:
            try:
                stop()
            except Exception:
                log.exception("stopping for shutdown failed")

    def reload(self) -> None:
        """Reloads the config (SIGHUP in the worker); never raises."""
        if self.reloader is None:
            log.warning("SIGHUP ignored: config reload is not available in this mode")
            return
        try:
            self.reloader()
        except Exception:
            log.exception("config reload crashed; keeping the running config")

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
        table = "\n".join(rows) or '<tr><td colspan="6">no account listed yet</td></tr>'
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>iam-key-exporter</title></head>
<body>
<h1>iam-key-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> ·
<a href="/readyz">/readyz</a></p>
<table border="1" cellpadding="4">
<tr><th>account</th><th>name</th><th>status</th><th>users</th><th>last pass</th>
<th>last success</th></tr>
{table}
</table>
</body></html>
"""
        return "200 OK", [("Content-Type", "text/html; charset=utf-8")], page.encode()
