"""The ``dnsgate`` command: serve, check-config, replay, propose."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from resolver import config as config_mod
from resolver.config import ConfigError

EPILOG = """examples:
  dnsgate serve                                  bundled example policy on 127.0.0.1:5353
  dnsgate serve --config /etc/dnsgate/dnsgate.yaml
  dnsgate check-config zones/default.yaml
  dnsgate replay capture.pcap --format table
  dnsgate propose capture.pcap > allowlist.yaml
"""


def _serve(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else config_mod.bundled_config_path()
    try:
        config = config_mod.load(path)
        from resolver.pipeline import check_sinks
        from resolver.policy import compile_policies

        compile_policies(config)
        check_sinks(config)
    except ConfigError as exc:
        print(f"dnsgate: {exc}", file=sys.stderr)
        return 2
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        from dataclasses import replace

        config = replace(config, listen=(config_mod.Listen(host.strip("[]") or "127.0.0.1", int(port)),))
    logging.getLogger("dnsgate").info("config %s", path)
    if config.workers > 1:
        return _serve_workers(config)
    return _run_one(config)


def _run_one(config: config_mod.Config) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from resolver.server import run

    return asyncio.run(run(config))


def _serve_workers(config: config_mod.Config) -> int:
    """``workers: N``: N processes share the listening ports through SO_REUSEPORT.

    The kernel spreads queries over them; each keeps its own cache and local
    detector view (use the Redis backend to share windows and quarantines).
    Only the first worker serves the admin HTTP endpoint. SIGTERM, SIGINT and
    SIGHUP sent to this parent are passed on to every worker.
    """
    import os
    import signal
    from dataclasses import replace

    log = logging.getLogger("dnsgate")
    children: list[int] = []
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:
            worker_config = config if index == 0 else replace(config, admin=None)
            os._exit(_run_one(worker_config))
        children.append(pid)
    log.info("started %d workers: %s", len(children), " ".join(map(str, children)))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        status = status or os.waitstatus_to_exitcode(code)
    return status


def _check_config(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            config = config_mod.load(path)
            from resolver.pipeline import check_sinks
            from resolver.policy import compile_policies

            policies = compile_policies(config)
            check_sinks(config)
        except ConfigError as exc:
            print(f"{exc}", file=sys.stderr)
            status = 1
            continue
        rules = sum(len(z) for p in policies.values() for z in p.zones)
        print(f"{path}: ok ({len(config.namespaces)} namespaces, {rules} policy triggers)")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dnsgate",
        description="Filtering DNS resolver with per-namespace allowlists and DNS-tunnelling detection.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the resolver (UDP and TCP)")
    serve.add_argument("--config", metavar="FILE", help="YAML config (default: the bundled example policy)")
    serve.add_argument("--listen", metavar="ADDR:PORT", help="override the config's listen addresses")
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate config files; errors name file:line and key")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_check_config)

    try:
        from resolver import replay

        replay.add_commands(sub)
    except ImportError:
        pass

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
