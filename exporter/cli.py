"""Command line: serve (default), once, check-config, demo."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from exporter import __version__, config, logs, webconfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed.wsgi import WSGIApplication

    from exporter.aws.session import ApiStats
    from exporter.config import Config
    from exporter.inventory import Snapshot
    from exporter.metrics import Exposition
    from exporter.webconfig import WebConfig

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
DEMO_LISTEN = "127.0.0.1:9877"
DEMO_INTERVAL = 30.0

log = logging.getLogger("exporter")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"config file (default: ${config.ENV_CONFIG}, else built-in "
                             "defaults)")
    common.add_argument("--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
                        help="log line format (default: config log_format, text)")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default=argparse.SUPPRESS)
    listen = argparse.ArgumentParser(add_help=False)
    listen.add_argument("--listen", metavar="HOST:PORT", default=argparse.SUPPRESS,
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
        config.check_listen(args.listen, "--listen")
        overrides["listen"] = args.listen
    if getattr(args, "log_format", None):
        overrides["log_format"] = args.log_format
    if getattr(args, "log_level", None):
        overrides["log_level"] = args.log_level
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


def _expose(snap: Snapshot, stats: ApiStats, cfg: Config) -> Exposition:
    from exporter.metrics import Exposition, RenderInput

    return Exposition.of(RenderInput(snap, stats.counts(), cfg.interval_seconds, cfg.metrics))


def _collect_once(cfg: Config) -> int:
    from exporter.aws.accounts import AccountSet
    from exporter.aws.session import ApiStats
    from exporter.poller import Poller

    stats = ApiStats()
    poller = Poller(cfg, AccountSet(cfg, stats))
    snap = poller.run_cycle()
    sys.stdout.buffer.write(_expose(snap, stats, cfg).body)
    sys.stdout.flush()
    ok = all(a.success for a in snap.accounts) and (
        snap.discovery is None or snap.discovery.success)
    return EXIT_OK if ok else EXIT_FAILED


def _serve(cfg: Config, web_config: WebConfig | None = None,
           reload_config: Callable[[], Config] | None = None) -> int:
    from exporter import malloc, web
    from exporter.aws.accounts import AccountSet
    from exporter.aws.session import ApiStats
    from exporter.inventory import Snapshot
    from exporter.poller import Poller

    pollers: list[Poller] = []

    def factory() -> WSGIApplication:
        # Runs in gunicorn's worker, after fork.
        malloc.tune()
        stats = ApiStats()
        store = web.Store(_expose(Snapshot(), stats, cfg))

        def publish(snap: Snapshot) -> None:
            # poller.cfg: after a reload the interval and the metrics options may differ.
            store.replace(lambda: _expose(snap, stats, poller.cfg))

        poller = Poller(cfg, AccountSet(cfg, stats), publish=publish,
                        starting=store.shrink, finished=malloc.trim)
        pollers.append(poller)
        poller.start()
        log.info("poller started", extra={
            "accounts": len(cfg.accounts), "strategy": cfg.collection.strategy,
            "organizations": cfg.organizations.enabled,
            "interval_s": cfg.interval_seconds})
        reloader = (web.Reloader(reload_config, cfg, poller.reconfigure, web_config)
                    if reload_config is not None else None)
        return web.App(store, poller, web_config=web_config, reloader=reloader)

    def on_exit() -> None:
        for p in pollers:
            p.stop(timeout=1.0)

    return web.serve(cfg.listen, factory, cfg.web.threads, cfg.web.shutdown_grace_seconds,
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
        cfg = dataclasses.replace(
            cfg,
            aws=dataclasses.replace(cfg.aws, endpoint_url=endpoint, region="us-east-1"),
            interval_seconds=DEMO_INTERVAL, accounts=(),
            # The sample users carry a Team tag: show it as the team label.
            metrics=dataclasses.replace(cfg.metrics,
                                        user_tags=cfg.metrics.user_tags or {"Team": "team"}),
        )
        host, port = cfg.listen.rsplit(":", 1)
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        print(f"iam-key-exporter demo: fake AWS account at {endpoint} with "
              f"{len(demo.SAMPLE_USERS)} sample users; metrics at http://{shown}:{port}/metrics",
              file=sys.stderr, flush=True)
        return _serve(cfg, web_config)
    finally:
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
    if command == "once":
        return _collect_once(cfg)
    if command == "demo":
        return _demo(cfg, web_config)
    return _serve(cfg, web_config, reload_config=lambda: _load(args))
