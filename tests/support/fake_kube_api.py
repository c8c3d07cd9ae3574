"""A FAKE Kubernetes API server for Pods: the real list/watch protocol on loopback.

No API server can run on the test machines, so this serves just enough of
``/api/v1/pods`` for a real client library (kubernetes-asyncio) to list and
watch pods against it, the way a kube-apiserver does:

- list: ``GET /api/v1/pods?limit=N&continue=TOKEN`` returns a ``PodList`` whose
  ``metadata.resourceVersion`` is the snapshot's version; ``limit``/``continue``
  page through one consistent snapshot;
- watch: ``GET /api/v1/pods?watch=true&resourceVersion=RV&timeoutSeconds=S
  &allowWatchBookmarks=true`` answers 200 with a chunked stream of JSON lines
  ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": ...}``: every event
  after RV, then new ones as they happen, BOOKMARKs while idle, and the stream
  ends after ``timeoutSeconds``;
- a watch from a version older than the last compaction gets one
  ``{"type": "ERROR", "object": Status{code: 410, reason: Expired}}`` event,
  as a real API server sends ``410 Gone``;
- a bearer token is required when one is set (401 ``Status`` otherwise).

It runs in its own thread and event loop so tests (and dnsgate processes
started by tests) can use it while the test drives pods with :meth:`add`,
:meth:`modify`, :meth:`terminate`, :meth:`delete`, :meth:`compact` and
:meth:`end_watches`. Like an API server it stamps ``creationTimestamp`` on a
pod it is given without one.
It is a fake: no field/label selectors, no other resources, no RBAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web


def make_pod(
    namespace: str,
    name: str,
    ip: str | None,
    *,
    phase: str = "Running",
    host_network: bool = False,
    service_account: str = "default",
    extra_ips: tuple[str, ...] = (),
    uid: str | None = None,
    created: str | None = None,
    deleting: str | None = None,
) -> dict[str, Any]:
    """A Pod object as the API serves it (only the fields a consumer of identity reads, plus a few).

    ``created`` is ``metadata.creationTimestamp`` (the server stamps the time of
    :meth:`FakeKubeAPI.add` when it is not given); ``deleting`` sets
    ``metadata.deletionTimestamp``, as a pod in its grace period has.
    """
    status: dict[str, Any] = {"phase": phase}
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}] + [{"ip": x} for x in extra_ips]
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()), "labels": {"app": name}}
    if created is not None:
        meta["creationTimestamp"] = created
    if deleting is not None:
        meta["deletionTimestamp"] = deleting
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {
            "serviceAccountName": service_account,
            "hostNetwork": host_network,
            "containers": [{"name": "main", "image": "agent:1"}],
        },
        "status": status,
    }


def timestamp(when: float | None = None) -> str:
    """A time as the API writes it in ``metadata`` (RFC 3339, UTC, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))


def _flag(value: str | None) -> bool:
    """A boolean query parameter, parsed as the API server does (Go's strconv.ParseBool)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeKubeAPI:
    """The fake API server; ``url`` once started. Thread-safe control methods."""

    def __init__(
        self, token: str = "fake-token", host: str = "127.0.0.1", bookmark_seconds: float = 1.0, port: int = 0
    ) -> None:
        self.token = token
        self.host = host
        self.bookmark_seconds = bookmark_seconds
        self.port = port
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (rv, type, object)
        self.rv = 1000
        self.oldest_rv = 1000  # watches from before this get 410
        self.requests: list[dict[str, str]] = []  # query parameters of every pods request, in order
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._tokens = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._changed: asyncio.Condition | None = None
        self._closing: asyncio.Event | None = None
        self._generation = 0  # bumped by end_watches(): open streams close
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    # --- lifecycle -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeKubeAPI:
        self._thread = threading.Thread(target=self._serve, name="fake-kube-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake API server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._closing is None:
            return
        self._loop.call_soon_threadsafe(self._closing.set)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.run_until_complete(self._main())
        loop.close()

    async def _main(self) -> None:
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        app = web.Application()
        app.add_routes([web.get("/api/v1/pods", self._pods), web.get("/api/v1/namespaces/{ns}/pods", self._pods)])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._ready.set()
        await self._closing.wait()
        await self._wake()
        await self._runner.cleanup()

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig naming this server, authenticated by bearer token."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "dnsgate", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "dnsgate"}}],
        }))
        return path

    # --- control (from the test's thread) ------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def add(self, pod: dict[str, Any]) -> int:
        return int(self._call(self._event("ADDED", pod)))

    def modify(self, pod: dict[str, Any]) -> int:
        return int(self._call(self._event("MODIFIED", pod)))

    def terminate(self, namespace: str, name: str) -> int:
        """Start a graceful deletion: the pod stays, with ``deletionTimestamp`` set (a MODIFIED event)."""
        pod = json.loads(json.dumps(self.pods[(namespace, name)]))
        pod["metadata"]["deletionTimestamp"] = timestamp()
        return self.modify(pod)

    def delete(self, namespace: str, name: str) -> int:
        pod = self.pods[(namespace, name)]
        return int(self._call(self._event("DELETED", pod)))

    def load(self, pods: list[dict[str, Any]]) -> None:
        """Many pods at once, as if they had been there before anyone watched (also before start)."""
        async def apply() -> None:
            for pod in pods:
                self.rv += 1
                pod["metadata"]["resourceVersion"] = str(self.rv)
                pod["metadata"].setdefault("creationTimestamp", timestamp())
                self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
            self.oldest_rv = self.rv
            self.events.clear()
        if self._loop is None:
            asyncio.run(apply())
        else:
            self._call(apply())

    def compact(self) -> None:
        """Forget the event history: watches from older versions now get 410 Gone."""
        async def apply() -> None:
            self.oldest_rv = self.rv
            self.events.clear()
            await self._wake()
        self._call(apply())

    def end_watches(self) -> None:
        """Close every open watch stream (an API server restart or a load balancer timeout)."""
        async def apply() -> None:
            self._generation += 1
            await self._wake()
        self._call(apply())

    def watch_requests(self) -> list[dict[str, str]]:
        return [r for r in list(self.requests) if _flag(r.get("watch"))]

    def list_requests(self) -> list[dict[str, str]]:
        return [r for r in list(self.requests) if not _flag(r.get("watch"))]

    # --- the server ------------------------------------------------------------------
    async def _wake(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _event(self, kind: str, pod: dict[str, Any]) -> int:
        self.rv += 1
        pod = json.loads(json.dumps(pod))
        pod["metadata"]["resourceVersion"] = str(self.rv)
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if kind != "DELETED":  # kept from the stored object, as the API server keeps it
            stored = self.pods.get(key, {}).get("metadata", {}).get("creationTimestamp")
            pod["metadata"].setdefault("creationTimestamp", stored or timestamp())
        if kind == "DELETED":
            self.pods.pop(key, None)
        else:
            self.pods[key] = pod
        self.events.append((self.rv, kind, pod))
        await self._wake()
        return self.rv

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        self.requests.append(params)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        namespace = request.match_info.get("ns")
        if _flag(params.get("watch")):
            return await self._watch(request, params, namespace)
        return self._list(params, namespace)

    def _list(self, params: dict[str, str], namespace: str | None) -> web.Response:
        token = params.get("continue")
        if token:
            snap_id, _, offset_text = token.partition(":")
            if snap_id not in self._snapshots:
                return web.json_response(_status(410, "Expired", "continue token expired"), status=410)
            rv, items = self._snapshots[snap_id]
            offset = int(offset_text)
        else:
            items = [p for (ns, _), p in sorted(self.pods.items()) if namespace in (None, ns)]
            rv, offset = self.rv, 0
            snap_id = str(next(self._tokens))
            self._snapshots = {snap_id: (rv, items)}  # one open paged list at a time is enough here
        limit = int(params.get("limit") or 0) or len(items) or 1
        page = items[offset : offset + limit]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if offset + limit < len(items):
            meta["continue"] = f"{snap_id}:{offset + limit}"
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page}
        return web.json_response(body)

    async def _watch(self, request: web.Request, params: dict[str, str], namespace: str | None) -> web.StreamResponse:
        assert self._changed is not None
        assert self._closing is not None
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
        except ConnectionResetError:
            return response  # the client went away before the headers
        loop = asyncio.get_running_loop()
        timeout = float(params.get("timeoutSeconds") or 1800)
        deadline = loop.time() + timeout
        bookmarks = _flag(params.get("allowWatchBookmarks"))
        since = int(params.get("resourceVersion") or self.rv)
        generation = self._generation

        async def send(kind: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        if since < self.oldest_rv:
            await send("ERROR", _status(410, "Expired", f"too old resource version: {since} ({self.oldest_rv})"))
            await response.write_eof()
            return response
        next_bookmark = loop.time() + self.bookmark_seconds
        try:
            while not self._closing.is_set() and generation == self._generation:
                if since < self.oldest_rv:  # compacted while we watched
                    await send("ERROR", _status(410, "Expired", f"too old resource version: {since}"))
                    break
                for rv, kind, obj in list(self.events):
                    if rv > since:
                        since = rv
                        if namespace in (None, obj["metadata"]["namespace"]):
                            await send(kind, obj)
                now = loop.time()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    await send("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(since)}})
                    next_bookmark = now + self.bookmark_seconds
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), timeout=max(wait, 0.001))
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away
        return response
