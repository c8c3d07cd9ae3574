"""The ``dnsgate`` command: serve, check-config, replay, propose; every subcommand is defined here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from resolver.native import stale, stale_message

# Before any compiled module is imported: an extension older than its source runs old code.
if _stale := stale():
    print(f"dnsgate: {stale_message(_stale)}", file=sys.stderr)
    sys.exit(2)

from resolver import config as config_mod
from resolver.config import ConfigError
from resolver.offline.propose import DEFAULT_COLLAPSE, DEFAULT_MAX_NAMES
from resolver.offline.replay import StdoutClosed, keep_last_run
from resolver.pipeline.policy import compile_policies

# The live server's modules (resolver.app, resolver.operations: aiohttp, redis,
# prometheus-client, the Kubernetes client) are imported by the commands that use
# them, so the offline commands start in half the time.

EPILOG = """examples:
  dnsgate serve                                  bundled example policy on 127.0.0.1:5353
  dnsgate serve --config /etc/dnsgate/dnsgate.yaml
  dnsgate check-config zones/default.yaml
  dnsgate replay capture.pcap --format table
  dnsgate replay capture.pcap --report report.html
  dnsgate propose capture.pcap > allowlist.yaml
  dnsgate import serviceentries.yaml skill.json --namespace agents > declared.yaml
  dnsgate diff --declared serviceentries.yaml capture.pcap

exit status 141 (any command): stdout was closed before all output was written
(`dnsgate replay ... | head`); the status a shell reports for a command ended by SIGPIPE.
"""

# Exit status when the reader of stdout went away before all output was written: what
# a shell reports for a tool killed by SIGPIPE (128 + 13). No command gives it another meaning.
STDOUT_CLOSED = 141


def _serve(args: argparse.Namespace) -> int:
    from resolver.app import StartupError
    from resolver.operations.descriptors import check_fit, raise_soft_limit
    from resolver.operations.sinks import check_sinks

    path = Path(args.config) if args.config else config_mod.bundled_config_path()
    config = config_mod.load(path)
    compile_policies(config)
    check_sinks(config)
    # What the command line sets stays set when the file is loaded again (a reload).
    pinned: dict[str, object] = {}
    if args.listen:
        pinned["listen"] = (parse_listen(args.listen),)
    if args.user:
        pinned["user"] = args.user
    config = replace(config, **pinned)  # type: ignore[arg-type]
    if args.listen:
        config_mod.refuse_forwarding_loop(config.path, config.upstreams_line, config.listen, config.upstreams,
                                          f"(--listen {args.listen})")
    logging.getLogger("dnsgate").info("config %s", path)
    # Before the workers are forked: they inherit the limit.
    check_fit(config, raise_soft_limit())
    try:
        if config.workers > 1:
            return _serve_workers(config, pinned)
        return _run_one(config, pinned=pinned)
    except StartupError as exc:
        raise UsageError(str(exc)) from exc


def parse_listen(text: str) -> config_mod.Listen:
    """``ADDR:PORT`` (``[ADDR]:PORT`` for IPv6) as a Listen; the same rules as the config's ``listen``."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or (":" in host and not host.startswith("[")):
        raise UsageError(f"--listen {text!r}: write ADDR:PORT, e.g. 127.0.0.1:53 or [::1]:53")
    address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise UsageError(f"--listen {text!r}: {address!r} is not an IP address "
                         "(names are not resolved: write 127.0.0.1 or [::1])") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--listen {text!r}: the port must be 0..65535, not {port_text!r}")
    return config_mod.Listen(address, int(port_text))


class UsageError(Exception):
    """A command-line value dnsgate cannot use, or a server that cannot start (one line, exit status 2)."""


def _run_one(config: config_mod.Config, serve_admin: bool = True,
             reload_siblings: Callable[[], None] | None = None, pinned: dict[str, object] | None = None) -> int:
    from resolver.app import prepare, run

    prepared = prepare(config, serve_admin)  # binds and drops privileges before the event loop has threads
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(run(config, prepared, reload_siblings, pinned))


# A worker still running this long after the parent's SIGTERM is killed: longer than a
# worker's own shutdown (in-flight queries, 2 s for the alert sinks' queues).
WORKER_STOP_SECONDS = 10.0
# Sent by the first worker to the parent after POST /reload, so the other workers reload too.
RELOAD_SIBLINGS = signal.SIGUSR1


def _serve_workers(config: config_mod.Config, pinned: dict[str, object] | None = None) -> int:
    """``workers: N``: N processes share the listening ports through SO_REUSEPORT.

    The kernel spreads queries over them; each keeps its own cache and local
    detector view (use the Redis backend to share windows and quarantines).
    Only the first worker serves the admin HTTP endpoint; its POST /reload
    asks this parent (RELOAD_SIBLINGS) to send SIGHUP to the others. SIGTERM,
    SIGINT and SIGHUP sent to this parent are passed on to every worker.

    A worker that ends while the service is not being stopped (killed, crashed,
    failed to start) ends the service: one line names it, its pid and how it
    ended; the other workers get SIGTERM (SIGKILL after WORKER_STOP_SECONDS);
    the status is the worker's own when it exited with one, else 1, so that
    the supervisor (systemd, Kubernetes) restarts dnsgate whole rather than
    leaving it serving on fewer workers than configured.
    """
    from resolver.app import StartupError

    log = logging.getLogger("dnsgate")
    parent = os.getpid()
    workers: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        _signal_workers(list(workers), signum)

    def reload_siblings(_signum: int, _frame: object) -> None:
        _signal_workers([pid for pid, index in workers.items() if index != 0], signal.SIGHUP)

    def ask_parent() -> None:
        if os.getppid() == parent:  # not a parent that is gone (the worker would be init's)
            os.kill(parent, RELOAD_SIBLINGS)

    # Handlers are installed before the first fork, so no signal finds the parent unprepared;
    # the signals are blocked around each fork so that none runs a parent's handler in a child.
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, RELOAD_SIBLINGS)
    for signum in handled[:3]:
        signal.signal(signum, forward)
    signal.signal(RELOAD_SIBLINGS, reload_siblings)
    for index in range(config.workers):
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        pid = os.fork()
        if pid == 0:
            for signum in handled:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
            try:
                code = _run_one(config, serve_admin=index == 0,
                                reload_siblings=ask_parent if index == 0 and config.admin is not None else None,
                                pinned=pinned)
            except StartupError as exc:
                print(f"dnsgate: worker {index}: {exc}", file=sys.stderr)
                code = 2
            os._exit(code)
        workers[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    log.info("started %d workers: %s", len(workers), " ".join(map(str, workers)))

    status = 0
    while workers:
        pid, wait_status = os.wait()  # any worker; retried after a signal handler (PEP 475)
        if pid not in workers:
            continue
        index = workers.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping:
            status = status or (code if code >= 0 else 128 - code)
            continue
        status = code if code > 0 else 1
        log.error("worker %d (pid %d) %s; stopping the other %d and exiting with status %d so that the "
                  "supervisor restarts dnsgate", index, pid, _how_it_ended(code), len(workers), status)
        stopping = True
        _stop_workers(workers, WORKER_STOP_SECONDS)
    return status


def _signal_workers(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _how_it_ended(code: int) -> str:
    """A worker's end, from ``os.waitstatus_to_exitcode``: a status, or the signal that killed it."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"was killed by signal {name}"


def _stop_workers(workers: dict[int, int], grace: float) -> None:
    """SIGTERM to every worker left; SIGKILL to those still running after ``grace`` seconds."""
    log = logging.getLogger("dnsgate")
    _signal_workers(list(workers), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while workers:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            workers.pop(pid, None)
            continue
        if time.monotonic() >= deadline:
            for pid, index in workers.items():
                log.warning("worker %d (pid %d) still running %.0f s after SIGTERM: killed", index, pid, grace)
            _signal_workers(list(workers), signal.SIGKILL)
            for pid in list(workers):
                os.waitpid(pid, 0)
                del workers[pid]
            return
        time.sleep(0.05)  # the interval between checks while the workers shut down


def _check_config(args: argparse.Namespace) -> int:
    from resolver.operations.sinks import check_sinks

    status = 0
    for path in args.files:
        try:
            config = config_mod.load(path)
            policies = compile_policies(config)
            check_sinks(config)
        except ConfigError as exc:
            print(f"{exc}", file=sys.stderr)
            status = 1
            continue
        rules = sum(len(p) for p in policies.values())
        zones = {z.name: z for p in policies.values() for z in p.zones}
        for zone in zones.values():
            for item in zone.unsupported:
                print(f"{item}", file=sys.stderr)
        print(f"{path}: ok ({len(config.namespaces)} namespaces, {rules} policy triggers)")
    return status


def _capture_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pcaps", nargs="*", metavar="PCAP", help="pcap or pcapng files, merged in capture time")
    p.add_argument("--config", metavar="FILE", help="dnsgate config (default: every client in "
                   "namespace 'default', mode learn, detection observe)")
    p.add_argument("--port", action="append", metavar="N",
                   help="DNS port to look for (repeatable; default 53); 'any': UDP DNS on any port, "
                        "found by content. DNS seen on other ports is named on stderr")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a detector threshold in every namespace (repeatable)")


def _replay(args: argparse.Namespace) -> int:
    from resolver.offline.replay import run_replay

    return run_replay(args)


def _propose(args: argparse.Namespace) -> int:
    from resolver.offline.propose import run_propose

    return run_propose(args)


def _import(args: argparse.Namespace) -> int:
    from resolver.offline.declared import run_import

    return run_import(args)


def _diff(args: argparse.Namespace) -> int:
    from resolver.offline.diff import run_diff

    return run_diff(args)


def _declared_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", default="default", metavar="NAME",
                   help="namespace for documents without metadata.namespace (default: default)")
    p.add_argument("--registry-map", metavar="FILE",
                   help="YAML mapping of purl type to the hosts serving it, for CycloneDX SBOMs")
    p.add_argument("--ignore-unknown", action="store_true",
                   help="skip documents of other kinds (Deployments ...) instead of failing")
    p.add_argument("--mesh-export-to", metavar="LIST",
                   help="exportTo of ServiceEntries without one, as your mesh's defaultServiceExportTo: "
                        "'*' (Istio's default: every namespace), '.', '~' or namespace names, comma-separated; "
                        "without it such a ServiceEntry is declared for its own namespace only, with a warning")


# The cyclic garbage collector's default (a collection every 700 net allocations,
# the older generations every 10) keeps re-scanning the detector's long-lived
# state: windows, feature cache, pair tables, hundreds of thousands of container
# objects. dnsgate makes few reference cycles, so it collects the youngest
# generation every 100,000 allocations (a fraction of a second at full load) and
# the older ones less often; cycles are still freed, only later. Measured on
# `dnsgate replay` of 103k mostly-unique names: 15.5 s -> 10.0 s, same peak RSS.
GC_THRESHOLDS = (100_000, 50, 50)


def tune_gc() -> None:
    """Collect reference cycles less often (see GC_THRESHOLDS)."""
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit status (tests call this in process)."""
    return _main(argv)[0]


# Commands whose state (every name and window of a capture) can run to millions of
# objects: the console entry point exits without freeing them one by one.
_BIG_STATE = frozenset({"replay", "propose", "diff"})


def entry() -> None:
    """The ``dnsgate`` console command.

    After ``replay``, ``propose`` and ``diff``, output is flushed and the process
    exits at once: freeing a large capture's detector state object by object
    took over a second and does nothing the kernel does not do at exit. So that
    the last run's state is not freed either as ``replay()`` returns, it is kept
    until then (``keep_last_run``). Ctrl-C ends any command with one line and
    status 130. A stdout whose reader went away (``| head``) before all output was
    written ends any command quietly with status 141 (STDOUT_CLOSED); when
    nothing written was lost, the command's own status stands.
    """
    keep_last_run()
    try:
        status, command = _main(sys.argv[1:])
        sys.stdout.flush()  # what is still buffered, while a closed stdout can still be told apart
    except KeyboardInterrupt:
        # Ctrl-C: one line rather than the traceback of wherever a long replay was, and
        # the shell's status for a SIGINT (128 + 2). What was written so far stays written.
        sys.stderr.write("dnsgate: interrupted\n")
        _exit_now(130)
    except (BrokenPipeError, StdoutClosed):
        if not stdout_closed():
            raise  # some other pipe: not the reader of stdout going away
        # `dnsgate ... | head`: the reader has what it wanted. No traceback, and stdout
        # pointed at /dev/null so that the interpreter's last flush has nothing to complain of.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _exit_now(STDOUT_CLOSED)
    if command not in _BIG_STATE:
        sys.exit(status)
    _exit_now(status)


def stdout_closed() -> bool:
    """Stdout is a pipe or socket whose reader has gone (a write to it fails with EPIPE)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):  # no stdout at all: nothing to write to either
        return True
    return any(mask & (select.POLLERR | select.POLLHUP) for _fd, mask in events)


def _exit_now(status: int) -> NoReturn:
    """Flush what was written and leave at once, freeing nothing object by object."""
    with contextlib.suppress(BrokenPipeError, ValueError):  # a reader that went away: nothing left to say
        sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def _main(argv: list[str] | None) -> tuple[int, str]:
    parser = argparse.ArgumentParser(
        prog="dnsgate",
        description="Filtering DNS resolver with per-namespace allowlists and DNS-tunnelling detection.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error that stops dnsgate (normally one line)")
    parser.add_argument("--version", action="version", version=f"dnsgate {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the resolver (UDP and TCP)")
    serve.add_argument("--config", metavar="FILE", help="YAML config (default: the bundled example policy)")
    serve.add_argument("--listen", metavar="ADDR:PORT",
                       help="listen here instead of the config's listen addresses (IP literal: 127.0.0.1:53, [::1]:53)")
    serve.add_argument("--user", metavar="NAME",
                       help="when started as root: bind, then drop to this user with no capabilities "
                            "(overrides the config's user:)")
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate config files; errors name file:line and key")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=_check_config)

    replay = sub.add_parser(
        "replay", help="replay pcap/pcapng captures through the pipeline, offline",
        description="Replay captures through the same pipeline `dnsgate serve` runs, in capture "
                    "time, without sending anything upstream. Alerts: stdout (jsonl) or a table.",
    )
    _capture_arguments(replay)
    replay.add_argument("--format", choices=("jsonl", "table"), default=None,
                        help="jsonl: one alert object per line on stdout (default); table: a summary")
    replay.add_argument("--sweep", metavar="KEY=V1,V2,...",
                        help="replay once per value of a threshold and print flagged domains per value")
    replay.add_argument("--labels", metavar="FILE",
                        help="with --sweep: tunnel domains, one per line; adds TP/FP/FN columns")
    replay.add_argument("--jobs", type=int, metavar="N",
                        help="with --sweep: values replayed at once, each in its own process holding "
                             "one run's state (default: one per CPU)")
    replay.add_argument("--report", metavar="FILE.html",
                        help="also write a self-contained HTML page: alerts over capture time, top denied and "
                             "flagged domains with evidence; with --sweep, the tuning curve")
    replay.add_argument("--top", type=int, default=10, help="rows per list in the table (default 10)")
    replay.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr (auto: when stderr is a terminal)")
    replay.set_defaults(func=_replay)

    propose = sub.add_parser(
        "propose", help="print a YAML allowlist per namespace from captures or learned names",
        description="Propose allowlists from observed traffic: PCAP files replayed in learn "
                    "mode, or the names live learn-mode namespaces keep in Redis.",
    )
    _capture_arguments(propose)
    propose.add_argument("--from-redis", metavar="URL", help="read learned names from Redis instead of captures")
    propose.add_argument("--redis-prefix", default="dnsgate:learn", help="key prefix of the learned names")
    propose.add_argument("--collapse", type=int, default=DEFAULT_COLLAPSE, metavar="N",
                         help=f"write *.domain when N or more names share a registrable domain "
                              f"(default {DEFAULT_COLLAPSE}; 0 never collapses)")
    propose.add_argument("--mode", choices=("observe", "enforce"), default="observe",
                         help="mode written for namespaces that were learning (default observe)")
    propose.add_argument("--max-names", type=int, default=DEFAULT_MAX_NAMES,
                         help=f"distinct (namespace, name, type) records kept, at least 1; the least recently "
                              f"asked are dropped first (default {DEFAULT_MAX_NAMES:,})")
    propose.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                         help="progress bar on stderr (auto: when stderr is a terminal)")
    propose.set_defaults(func=_propose)

    importer = sub.add_parser(
        "import", help="print allowlists from declared egress (Istio, Cilium, skill manifests, SBOMs)",
        description="Read declared egress (Istio ServiceEntry and Sidecar, Cilium toFQDNs, skill manifest "
                    "egressRequirements, CycloneDX JSON SBOMs, plain host lists; YAML or JSON) and print a "
                    "config fragment `namespaces: {NAME: {allow: [...]}}`, every entry commented with its "
                    "sources. Values that are not names (IP addresses, ports, '*') are listed as skipped; "
                    "wildcards over a public suffix (*.com) are skipped with a warning.",
        epilog="example: dnsgate import deploy/istio/*.yaml skills/*.json --namespace agents > declared.yaml",
    )
    importer.add_argument("files", nargs="+", metavar="FILE", help="YAML (multi-document), JSON or text files")
    _declared_arguments(importer)
    importer.set_defaults(func=_import)

    diff = sub.add_parser(
        "diff", help="declared egress against observed traffic; exit 1 when something undeclared was seen",
        description="Compare what is declared (the files `dnsgate import` reads) with what was observed "
                    "(captures replayed in learn mode, or names learned live in Redis). Per namespace: "
                    "names observed but not declared, with counts, clients and first/last seen, and declared "
                    "entries never used. Exit 1 when anything undeclared was observed, 0 otherwise, 2 on error.",
        epilog="example: dnsgate diff --declared istio/*.yaml skill.json --namespace agents -- capture.pcap",
    )
    _capture_arguments(diff)
    diff.add_argument("--declared", nargs="+", required=True, metavar="FILE",
                      help="declaration files (ServiceEntry, Sidecar, Cilium, skill manifests, SBOMs, host lists)")
    _declared_arguments(diff)
    diff.add_argument("--from-redis", metavar="URL", help="read learned names from Redis instead of captures")
    diff.add_argument("--redis-prefix", default="dnsgate:learn", help="key prefix of the learned names")
    diff.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    diff.set_defaults(func=_diff)

    args = parser.parse_args(argv)
    tune_gc()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
    except (ConfigError, UsageError) as exc:
        if args.debug:
            raise
        print(f"dnsgate: {exc}", file=sys.stderr)
        return 2, args.command
    return result, args.command


def _version() -> str:
    try:
        return metadata.version("dnsgate")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


if __name__ == "__main__":
    entry()
