"""gunicorn embedded behind the CLI: one worker (the poller's state lives in that process)
with threads. The app factory runs in the worker after fork, never at import time and
never in the arbiter. SIGHUP is passed to the worker, which reloads the config there."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from exporter.webconfig import WebConfig

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

# A client that sends nothing for this long while its request is being read (or reads
# nothing of its response for SEND_TIMEOUT) is disconnected, freeing its worker thread.
CLIENT_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
# How long a worker thread waits for a new connection's first bytes before parking it.
IDLE_HANDOFF = 0.05

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

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Stop taking events at once, not after the graceful drain: during a rollout
            # each event this pod took would be missing from the new pod until its
            # resync (docs/deployment.md, "Rollouts").
            draining = getattr(getattr(self, "wsgi", None), "draining", None)
            if draining is not None:
                threading.Thread(target=draining, name="iam-drain", daemon=True).start()
            super().handle_exit(sig, frame)

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
