"""The WSGI app (/metrics, /healthz, /readyz, /) and gunicorn embedded behind the CLI.

gunicorn runs one worker (the poller's state lives in that process) with threads. The
poller is started by ``load()``, which gunicorn calls in the worker after fork, never at
import time and never in the arbiter.

Optional TLS and basic auth come from an exporter-toolkit style web config file
(``exporter.webconfig``). SIGHUP reloads the config inside the running worker (gunicorn's
own HUP would start a fresh worker and lose the collected data); see ``Reloader``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import gzip
import hashlib
import hmac
import html
import itertools
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import bcrypt

from exporter import __version__, logs, metrics, webconfig
from exporter.config import Config, ConfigError
from exporter.metrics import Exposition
from exporter.webconfig import WebConfig

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

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
# A client that sends nothing for this long while its request is being read (or reads
# nothing of its response for SEND_TIMEOUT) is disconnected, freeing its worker thread.
CLIENT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
# How long a worker thread waits for a new connection's first bytes before parking it.
IDLE_HANDOFF = 0.05


# Plain expositions larger than this are kept only as gzip while a cycle collects.
SHRINK_ABOVE = 8 << 20


class Store:
    """Holds the current exposition; replaced as one reference, read without locks."""

    def __init__(self, initial: Exposition) -> None:
        self.exposition = initial

    def set(self, exposition: Exposition) -> None:
        self.exposition = exposition

    def shrink(self) -> None:
        """Cuts a large exposition down to its gzip while the next cycle collects: its
        plain copy (30 MB at 50,000 users) would otherwise sit beside the cycle's peak.
        Meanwhile a plain scrape is decompressed on the fly (gzip ones, Prometheus's
        default, are not affected)."""
        if self.exposition.size > SHRINK_ABOVE:
            self.exposition = self.exposition.gzip_only()

    def replace(self, render: Callable[[], Exposition]) -> None:
        """Renders the next exposition with the current one cut down to its gzip, so
        that two plain copies (~30 MB each at 50,000 users) never exist at once. For the
        second or so of the render, a plain scrape is decompressed on the fly."""
        self.exposition = self.exposition.gzip_only()
        self.exposition = render()


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


class BasicAuth:
    """HTTP basic auth against bcrypt hashes; with no users every request is let through.

    bcrypt is slow on purpose (tens of milliseconds a check), so a successful check is
    remembered by an HMAC of the credentials under a per-process random key: a scrape
    with the right password costs one hash, not one bcrypt. Failures are never
    remembered, and an unknown user costs a bcrypt check too, so timing tells nothing.
    """

    MAX_CACHED = 256

    def __init__(self, users: Mapping[str, str] | None = None) -> None:
        self._key = os.urandom(32)
        self.set_users(users or {})

    def set_users(self, users: Mapping[str, str]) -> None:
        table = {name.encode(): hashed.encode() for name, hashed in users.items()}
        dummy = b""
        if table:
            cost = min(int(h[4:6]) for h in table.values())
            dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost))
        # One reference, swapped whole: a check in flight sees the old or the new table.
        self._state: tuple[dict[bytes, bytes], set[bytes], bytes] = (table, set(), dummy)

    @property
    def enabled(self) -> bool:
        return bool(self._state[0])

    def check(self, header: str) -> bool:
        """Whether an Authorization header holds valid credentials."""
        table, cache, dummy = self._state
        if not table:
            return True
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = raw.partition(b":")
        if not sep:
            return False
        digest = hmac.new(self._key, raw, hashlib.sha256).digest()
        if digest in cache:
            return True
        hashed = table.get(user)
        try:
            ok = bcrypt.checkpw(password, hashed or dummy) and hashed is not None
        except ValueError:  # e.g. a password over bcrypt's 72 bytes
            ok = False
        if ok:
            if len(cache) >= self.MAX_CACHED:
                cache.clear()
            cache.add(digest)
        return ok


class ReloadState:
    """Outcome of the last config reload, served on every scrape.

    Like Prometheus' own ``prometheus_config_last_reload_*``: the config loaded at start
    counts as the first successful load.
    """

    def __init__(self) -> None:
        self.successful = True
        self.success_timestamp = time.time()
        self.exposition = self._render()

    def record(self, ok: bool) -> None:
        self.successful = ok
        if ok:
            self.success_timestamp = time.time()
        self.exposition = self._render()

    def _render(self) -> bytes:
        return metrics.gauge(
            "iam_exporter_config_last_reload_successful",
            "1 if the last config reload (SIGHUP) succeeded, 0 if it was rejected and the "
            "previous config is still in use.", 1 if self.successful else 0,
        ) + metrics.gauge(
            "iam_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load (start-up or SIGHUP).",
            self.success_timestamp)


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


class App:
    def __init__(self, store: Store, poller: Poller | None = None, *,
                 web_config: WebConfig | None = None,
                 reloader: Reloader | None = None) -> None:
        self.store = store
        self.poller = poller
        self.auth = BasicAuth(web_config.basic_auth_users if web_config else None)
        self.reloader = reloader
        if reloader is not None:
            reloader.auth = self.auth
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
        tail = metrics.process_metrics()
        if self.reloader is not None:
            tail += self.reloader.state.exposition
        headers = [("Content-Type", metrics.CONTENT_TYPE), ("Vary", "Accept-Encoding")]
        if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            # Two gzip members in one stream are valid gzip (RFC 1952 §2.2); the big one
            # is compressed once per cycle, only the small per-scrape tail here.
            headers.append(("Content-Encoding", "gzip"))
            gz_tail = gzip.compress(tail, compresslevel=1, mtime=0)
            return "200 OK", headers, Sized([exp.gzipped, gz_tail],
                                            len(exp.gzipped) + len(gz_tail))
        return "200 OK", headers, Sized(itertools.chain(exp.plain(), [tail]),
                                        exp.size + len(tail))

    def healthz(self, _: WSGIEnvironment) -> Response:
        if self.poller is not None and not self.poller.alive():
            return "503 Service Unavailable", [], b"poller thread is not running\n"
        return "200 OK", [], b"ok\n"

    def readyz(self, _: WSGIEnvironment) -> Response:
        if not self.store.exposition.snapshot.ready:
            return "503 Service Unavailable", [], b"no collection cycle has succeeded yet\n"
        return "200 OK", [], b"ready\n"

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


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))


# SO_RCVTIMEO / SO_SNDTIMEO values set on every client socket.
_RECV_TIMEVAL = _timeval(CLIENT_TIMEOUT)
_SEND_TIMEVAL = _timeval(SEND_TIMEOUT)


class _SlowClientFilter(logging.Filter):
    """gunicorn logs a timed-out read as a socket error with a traceback: one warning line
    without it is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (BlockingIOError, TimeoutError)):
            record.msg, record.args, record.exc_info, record.exc_text = (
                f"client too slow: nothing received or sent for {CLIENT_TIMEOUT:g}s; "
                "connection closed", (), None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _worker_class() -> type:
    from gunicorn.workers import gthread
    from gunicorn.workers.gthread import ThreadWorker

    # gunicorn ≥ 24 lets a thread wait up to 5 s for a new connection's first bytes before
    # handing it to the poller: a few idle connections would then starve the scrapes.
    if hasattr(gthread, "DEFAULT_WORKER_DATA_TIMEOUT"):
        gthread.DEFAULT_WORKER_DATA_TIMEOUT = IDLE_HANDOFF

    class Worker(ThreadWorker):  # type: ignore[misc]
        """gunicorn's threaded worker, plus: SIGHUP reloads the config here (see
        ``App.reload``) and client sockets get read and write timeouts."""

        def init_signals(self) -> None:
            super().init_signals()
            signal.signal(signal.SIGHUP, self.handle_hup)
            logging.getLogger("gunicorn.error").addFilter(_SlowClientFilter())

        def handle_hup(self, _sig: int, _frame: Any) -> None:
            # A signal handler must not block: the reload runs in its own thread.
            app = getattr(self, "wsgi", None)
            reload = getattr(app, "reload", None)
            if reload is None:
                return  # still starting: the config just loaded is current anyway
            threading.Thread(target=reload, name="iam-reload", daemon=True).start()

        def handle(self, conn: Any) -> Any:
            # OS-level timeouts hold whatever gunicorn does with the socket's blocking
            # mode, and survive its TLS wrapping (same file descriptor).
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _RECV_TIMEVAL)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _SEND_TIMEVAL)
            except OSError:
                pass
            return super().handle(conn)

    return Worker


def serve(listen: str, factory: Callable[[], WSGIApplication], threads: int,
          grace: float, logconfig: dict[str, Any],
          on_exit: Callable[[], None] | None = None, *,
          web_config: WebConfig | None = None) -> int:
    """Runs gunicorn in the foreground until SIGTERM/SIGINT; returns the exit code.

    SIGHUP is passed to the worker, which calls ``reload()`` on the app ``factory``
    returned (``App.reload``) instead of gunicorn's default of replacing the worker.
    With ``web_config.tls`` the listener speaks only TLS.
    """
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    def worker_exit(_server: Any, _worker: Any) -> None:
        if on_exit is not None:
            on_exit()

    options: dict[str, Any] = {
        "bind": [listen],
        "workers": 1,
        "worker_class": _worker_class(),
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
    tls = web_config.tls if web_config else None
    if tls is not None:
        def ssl_context(_conf: Any, factory: Callable[[], Any]) -> Any:
            return tls.apply(factory())

        options.update(certfile=tls.cert_file, keyfile=tls.key_file,
                       ca_certs=tls.client_ca_file, cert_reqs=tls.verify_mode,
                       ssl_context=ssl_context)

    class HupArbiter(Arbiter):  # type: ignore[misc]
        def handle_hup(self) -> None:
            self.log.info("SIGHUP: passed to the worker to reload the config")
            self.kill_workers(signal.SIGHUP)

    class Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> WSGIApplication:
            return factory()

        def run(self) -> None:
            HupArbiter(self).run()

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
