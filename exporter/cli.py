"""Command line: serve (default), once, check-config, demo."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from exporter import __version__, config, logs, validate, webconfig
from exporter.reload import Reloader

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed.wsgi import WSGIApplication

    from exporter.config import Config
    from exporter.inventory import Snapshot
    from exporter.webconfig import WebConfig

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
DEMO_LISTEN = "127.0.0.1:9877"
DEMO_INTERVAL = 30.0

log = logging.getLogger("exporter")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "--config.file", dest="config", metavar="PATH",
                        default=argparse.SUPPRESS,
                        help=f"config file (default: ${config.ENV_CONFIG}, else built-in "
                             "defaults)")
    common.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                        help="log line format (default: config log_format, text)")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default=argparse.SUPPRESS)
    common.add_argument("--web.config.file", dest="web_config_file", metavar="PATH",
                        default=argparse.SUPPRESS,
                        help="web config file: TLS and basic auth (default: config "
                             "web.config_file)")
    listen = argparse.ArgumentParser(add_help=False)
    listen.add_argument("--listen", "--web.listen-address", dest="listen",
                        metavar="HOST:PORT", default=argparse.SUPPRESS,
                        help=f"address to serve on (default: config listen, "
                             f"{config.DEFAULT_LISTEN})")

    p = argparse.ArgumentParser(
        prog="iam-key-exporter", parents=[common, listen],
        description="Prometheus exporter for AWS IAM access keys.")
    p.add_argument("--version", action="version", version=f"iam-key-exporter {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", parents=[common, listen], help="serve /metrics (the default)")
    sub.add_parser("once", parents=[common],
                   help="collect once, print the exposition on stdout (exit 1 if any "
                        "account failed)")
    sub.add_parser("check-config", parents=[common],
                   help="validate the config and print the effective config")
    sub.add_parser("demo", parents=[common, listen],
                   help="serve against an embedded fake AWS account with sample users")
    return p


def _load(args: argparse.Namespace) -> Config:
    cfg = config.load(getattr(args, "config", None))
    overrides: dict[str, object] = {}
    if getattr(args, "listen", None):
        validate.check_listen(args.listen, "--listen")
        overrides["listen"] = args.listen
    if getattr(args, "log_format", None):
        overrides["log_format"] = args.log_format
    if getattr(args, "log_level", None):
        overrides["log_level"] = args.log_level
    if getattr(args, "web_config_file", None):
        overrides["web"] = dataclasses.replace(cfg.web, config_file=args.web_config_file)
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


def _collect_once(cfg: Config) -> int:
    from exporter.aws.accounts import AccountSet
    from exporter.aws.session import ApiStats
    from exporter.metrics import RenderInput, render
    from exporter.poller import Poller

    stats = ApiStats()
    poller = Poller(cfg, AccountSet(cfg, stats))
    try:
        snap = poller.run_once()
    finally:
        poller.stop()
    sys.stdout.buffer.write(render(RenderInput(snap, stats.counts(), cfg.interval_seconds,
                                               cfg.metrics)))
    sys.stdout.flush()
    ok = all(a.success for a in snap.accounts) and (
        snap.discovery is None or snap.discovery.success)
    return EXIT_OK if ok else EXIT_FAILED


def _serve(cfg: Config, web_config: WebConfig | None = None,
           reload_config: Callable[[], Config] | None = None) -> int:
    from exporter import server, web
    from exporter.aws.accounts import AccountSet
    from exporter.aws.session import ApiStats
    from exporter.collector.exporter import ExporterCollector
    from exporter.metrics import AccountCache, Exposition, Live, RenderInput
    from exporter.poller import Poller

    pollers: list[Poller] = []
    stops: list[Callable[[], None]] = []

    def factory() -> WSGIApplication:
        # Runs in gunicorn's worker, after fork.
        stats = ApiStats()
        cache = AccountCache()
        render_lock = threading.Lock()

        def render() -> Exposition:
            return Exposition.of(RenderInput(poller.snapshot, stats.counts(),
                                             poller.cfg.interval_seconds, poller.cfg.metrics),
                                 cache)

        def publish(_: Snapshot) -> None:
            # Always the newest snapshot (poller.cfg: after a reload the options may
            # differ).
            with render_lock:
                store.set(render())

        poller = Poller(cfg, AccountSet(cfg, stats), publish=publish)
        own = Live(ExporterCollector(lambda: poller.snapshot, stats.counts,
                                     lambda: poller.cfg.interval_seconds), process=False)
        rendered: list[Any] = [None, None, b""]  # snapshot, counts, bytes

        def own_families() -> bytes:
            # Rendered again only when something changed.
            snap, counts = poller.snapshot, (stats.counts(), poller.cfg.interval_seconds)
            if snap is not rendered[0] or counts != rendered[1]:
                rendered[:] = [snap, counts, own.render()]
            return rendered[2]  # type: ignore[no-any-return]

        store = web.Store(render(), extra=own_families)
        store.start_refreshing()
        stops.append(store.stop)
        pollers.append(poller)
        stops.append(poller.stop)
        live = Live()  # per scrape: process metrics, reload state, events
        drain: list[Callable[[], None]] = []
        if cfg.events.queue_url:
            from exporter.events.consumer import Consumer

            consumer = Consumer(cfg, poller)
            live.registry.register(consumer.stats)
            consumer.start()
            stops.append(consumer.stop)
            drain.append(lambda: consumer.stop(timeout=0))  # joined at exit
        poller.start()
        log.info("poller started", extra={
            "accounts": len(cfg.accounts), "strategy": cfg.collection.strategy,
            "organizations": cfg.organizations.enabled,
            "interval_s": cfg.interval_seconds,
            "events": bool(cfg.events.queue_url)})
        reloader = (Reloader(reload_config, cfg, poller.reconfigure, web_config)
                    if reload_config is not None else None)
        app = web.App(store, poller, web_config=web_config, reloader=reloader, live=live)
        app.on_drain.extend(drain)
        return app

    def on_exit() -> None:
        for stop in stops:
            stop()

    return server.serve(cfg.listen, factory, cfg.web.threads, cfg.web.shutdown_grace_seconds,
                        logs.gunicorn_logconfig(cfg.log_format, cfg.log_level), on_exit,
                        web_config=web_config)


def _demo(cfg: Config, web_config: WebConfig | None = None) -> int:
    from exporter import demo

    try:
        server, endpoint = demo.start_fake_aws()
    except demo.DemoUnavailable as e:
        print(f"iam-key-exporter demo: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        demo.use_demo_credentials()
        demo.seed(endpoint)
        queue_url = demo.events_queue(endpoint)
        state = demo.write_state(endpoint, queue_url)
        cfg = dataclasses.replace(
            cfg,
            aws=dataclasses.replace(cfg.aws, endpoint_url=endpoint, region="us-east-1"),
            interval_seconds=DEMO_INTERVAL, accounts=(),
            # The sample users carry a Team tag: show it as the team label.
            metrics=dataclasses.replace(cfg.metrics,
                                        user_tags=cfg.metrics.user_tags or {"Team": "team"}),
            events=dataclasses.replace(cfg.events, queue_url=queue_url),
        )
        host, port = cfg.listen.rsplit(":", 1)
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        print(f"iam-key-exporter demo: fake AWS account at {endpoint} with "
              f"{len(demo.SAMPLE_USERS)} sample users; metrics at http://{shown}:{port}/metrics",
              file=sys.stderr, flush=True)
        if state is not None:
            print(f"iam-key-exporter demo: see a key change arrive in a second (events, not "
                  f"the {DEMO_INTERVAL:g} s poll): {sys.executable} -m exporter.demo add-key "
                  f"alice (creates a key in the fake account and sends its CloudTrail event "
                  f"to the demo's SQS queue; finds the demo through {state})",
                  file=sys.stderr, flush=True)
        return _serve(cfg, web_config)
    finally:
        demo.remove_state()
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    if command == "demo" and not getattr(args, "listen", None):
        args.listen = DEMO_LISTEN
    try:
        cfg = _load(args)
        web_config = webconfig.load(cfg.web.config_file)
    except config.ConfigError as e:
        print(f"iam-key-exporter: invalid config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "check-config":
        sys.stdout.write(config.dump(cfg))
        return EXIT_OK
    logs.setup(cfg.log_format, cfg.log_level)
    for key in cfg.deprecated():
        log.warning("config key is deprecated and ignored: the exporter reads users "
                    "continuously, without collection cycles; remove it", extra={"key": key})
    if command == "once":
        return _collect_once(cfg)
    if command == "demo":
        return _demo(cfg, web_config)
    return _serve(cfg, web_config, reload_config=lambda: _load(args))
