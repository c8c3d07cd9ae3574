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
        from resolver.policy import compile_policies

        compile_policies(config)
    except ConfigError as exc:
        print(f"dnsgate: {exc}", file=sys.stderr)
        return 2
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        from dataclasses import replace

        config = replace(config, listen=(config_mod.Listen(host.strip("[]") or "127.0.0.1", int(port)),))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from resolver.server import run

    logging.getLogger("dnsgate").info("config %s", path)
    return asyncio.run(run(config))


def _check_config(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            config = config_mod.load(path)
            from resolver.policy import compile_policies

            policies = compile_policies(config)
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
