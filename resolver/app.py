"""The wiring: one place builds the server, its admin endpoint, reloader and background tasks.

Nothing below ``resolver.app`` imports it; the CLI calls :func:`run`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resolver.config import Config, ConfigError, Listen
from resolver.operations import privileges
from resolver.operations.admin import AdminServer, admin_token
from resolver.operations.kubernetes import PodWatch
from resolver.operations.listeners import BoundListener, ListenError, Server, bind_listeners, bind_socket
from resolver.operations.metrics import AlertCounts
from resolver.operations.reload import Reloader
from resolver.operations.sinks import connect_fallbacks
from resolver.pipeline.learn import RedisLearnStore

log = logging.getLogger("dnsgate.server")


class StartupError(Exception):
    """dnsgate cannot start; the message is one line naming what and where (exit status 2)."""


@dataclass(slots=True)
class Prepared:
    """What is done before the event loop starts: sockets bound, token read, privileges dropped."""

    listeners: list[BoundListener]
    admin: socket.socket | None
    token: str | None


def prepare(config: Config, serve_admin: bool = True) -> Prepared:
    """Bind every socket and read the admin token with the privileges dnsgate started with, then drop them.

    Runs before the event loop, while the process has one thread: capabilities
    are per thread, and a drop done here leaves no thread holding one.
    ``serve_admin`` False (the workers after the first of ``workers: N``) leaves
    the admin endpoint to another process; the config keeps its ``admin``, so
    a reload does not see it as changed.
    """
    admin = config.admin if serve_admin else None
    try:
        account = privileges.account(config.user) if config.user else None
        token = admin_token(admin, config.path) if admin is not None else None
        listeners = bind_listeners(config.listen, config.workers)
    except (ConfigError, privileges.PrivilegeError) as exc:
        raise StartupError(str(exc)) from exc
    except ListenError as exc:
        raise StartupError(exc.strerror) from exc
    admin_sock: socket.socket | None = None
    try:
        if admin is not None:
            try:
                admin_sock = bind_socket(Listen(admin.address, admin.port), socket.SOCK_STREAM)
            except ListenError as exc:
                raise StartupError(f"admin: {exc.strerror}") from exc
        if account is not None or os.geteuid() != 0:
            log.info("privileges dropped: %s, no capabilities", privileges.drop(account))
        else:
            log.warning("running as root: set user: (or --user) to drop privileges after binding")
    except (StartupError, privileges.PrivilegeError) as exc:
        for b in listeners:
            b.udp.close()
            b.tcp.close()
        if admin_sock is not None:
            admin_sock.close()
        raise StartupError(str(exc)) from exc
    return Prepared(listeners, admin_sock, token)


async def run(config: Config, prepared: Prepared | None = None,
              reload_siblings: Callable[[], None] | None = None, pinned: dict[str, object] | None = None) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config and reopens the jsonl sinks.

    Also starts the config-file watcher and, when ``admin`` is configured, the
    admin HTTP server (/metrics, /healthz, /readyz, POST /reload). ``prepared``
    comes from :func:`prepare` (called here when absent). ``reload_siblings``
    (the first of several workers) is called after each POST /reload so that
    the other workers reload too. ``pinned``: config fields the command line set
    (``--listen``, ``--user``), kept over what a reloaded file says. Raises
    :class:`StartupError` when it cannot start.
    """
    if prepared is None:
        prepared = prepare(config)
    try:
        server = Server(config, pinned=pinned)
    except ConfigError as exc:  # sink options are validated when the sinks are built
        raise StartupError(str(exc)) from exc
    alert_counts = AlertCounts()
    server.engine.alerts.sinks.append(alert_counts)
    connect_fallbacks(server.engine.alerts.sinks)
    for upstream in config.upstreams:
        log.info("upstream %s (from %s)", upstream.label, upstream.source or "the config")
    await server.start(prepared.listeners)
    reloader = Reloader(server)
    pod_watch: PodWatch | None = None
    if config.identity.kubernetes is not None:
        pod_watch = PodWatch(config.identity.kubernetes, server.engine.pods)
    admin: AdminServer | None = None
    if config.admin is not None and prepared.admin is not None:
        admin = AdminServer(server, reloader, alert_counts, prepared.token, pod_watch, reload_siblings)
        await admin.start(config.admin.address, config.admin.port, prepared.admin)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stop)
    loop.add_signal_handler(signal.SIGINT, server.stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: on_sighup(server, reloader))
    background = [
        asyncio.ensure_future(sweep_alerts(server)),
        asyncio.ensure_future(reloader.watch()),
    ]
    if config.state.backend == "redis":
        background.append(asyncio.ensure_future(share_learned(server, config.state.url, config.state.cluster)))
    if pod_watch is not None:
        background.append(asyncio.ensure_future(pod_watch.run()))
    try:
        await server.serve_forever()
    finally:
        for task in background:
            task.cancel()
        log.info("shutting down: finishing %d in-flight queries", len(server.inflight))
        await server.shutdown()
        if admin is not None:
            await admin.stop()
    return 0


def on_sighup(server: Server, reloader: Reloader | None = None) -> None:
    for sink in server.engine.alerts.sinks:
        reopen = getattr(sink, "reopen", None)
        if reopen is not None:
            reopen()
    if reloader is not None:
        reloader.reload("SIGHUP")
    else:
        server.reload()


LEARN_PUSH_SECONDS = 2.0


async def share_learned(server: Server, url: str, cluster: bool = False) -> None:
    """Push learn-mode names to Redis in the background, for ``dnsgate propose --from-redis``."""
    import redis.asyncio as aioredis

    store = RedisLearnStore()
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        client: Any = RedisCluster.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    else:
        client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    failing = False
    try:
        while True:
            await asyncio.sleep(LEARN_PUSH_SECONDS)  # pacing of a background loop
            try:
                await store.apush(client, server.engine.learned)
                if failing:
                    log.info("redis %s is back: learned names shared again", url)
                failing = False
            except (OSError, aioredis.RedisError) as exc:
                if not failing:
                    log.warning("redis %s unavailable, learned names kept locally: %s", url, exc)
                failing = True
    finally:
        await client.aclose()


async def sweep_alerts(server: Server) -> None:
    """Report folded policy-alert repeats once their window closes."""
    while True:
        await asyncio.sleep(min(5.0, server.config.policy_alert_window))
        server.engine.alerts.sweep(time.time())
