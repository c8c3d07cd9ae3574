"""The Pods watch: keeps the identity stage's :class:`PodTable` current from the Kubernetes API.

List, then watch from the list's ``resourceVersion`` (kubernetes-asyncio), the
way an informer does:

- the first list is paged (``limit``) and applied as a whole; until it has
  completed the table is not ``synced``, ``/readyz`` answers 503 and clients
  no other rule maps get ``unknown_clients``;
- a watch that ends (its ``timeoutSeconds`` ran out, the connection closed) is
  renewed from the last version it delivered, BOOKMARKs included, so no event
  is lost; a watch answered ``410 Gone`` (an ERROR event or the HTTP status)
  is followed by a fresh list that replaces the table;
- any other failure (API unreachable, 401/403) is logged once, counted, and
  retried with backoff; the table keeps its last contents meanwhile.

A pod maps while it is Running, is not ``hostNetwork`` (those share the node's
address) and has addresses (``status.podIPs``, ``status.podIP``). Deleted,
Succeeded and Failed pods stop mapping as soon as their event arrives. A pod
being deleted (``deletionTimestamp`` set) still maps while Running, but loses
a shared address to a pod that is not, and an older pod to a newer one
(``creationTimestamp``): see ``PodTable``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from resolver.config import KubernetesIdentity
from resolver.pipeline.identity import PodIdentity, PodTable

log = logging.getLogger("dnsgate.kubernetes")

STATES = ("starting", "listing", "watching", "retrying")
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")


class WatchGone(Exception):
    """The API server no longer has the version we watch from (410): list again."""


def pod_entry(obj: dict[str, Any]) -> tuple[PodIdentity, tuple[str, ...]]:
    """The identity of a pod object and the addresses it should map (none when it must not map)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    pod = PodIdentity(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        service_account=str(spec.get("serviceAccountName") or "default"),
        uid=str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"),
        labels=tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())),
        created=str(meta.get("creationTimestamp") or ""),
        terminating=bool(meta.get("deletionTimestamp")),
    )
    if spec.get("hostNetwork") or status.get("phase") != "Running":
        return pod, ()
    addresses: list[str] = [str(item["ip"]) for item in status.get("podIPs") or () if item.get("ip")]
    primary = status.get("podIP")
    if primary and primary not in addresses:
        addresses.append(str(primary))
    return pod, tuple(addresses)


class PodWatch:
    """Runs list+watch against the API and applies every event to ``table``."""

    def __init__(
        self,
        settings: KubernetesIdentity,
        table: PodTable,
        page_size: int = 500,
        retry_max: float = 30.0,
    ) -> None:
        self.settings = settings
        self.table = table
        self.page_size = page_size
        self.retry_max = retry_max
        self.state = "starting"
        self.events: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
        self.lists = 0  # full lists done (the first one included)
        self.relists = 0  # lists after the first: 410 Gone, or recovery from an error
        self.watches = 0  # watch requests started
        self.errors = 0
        self.last_event = 0.0  # wall clock of the last event applied
        self.resource_version = ""
        self._api: Any = None

    def stats(self) -> dict[str, Any]:
        """The watch's figures, for metrics (``dnsgate_kubernetes_*``)."""
        return {
            "state": self.state,
            "events": dict(self.events),
            "lists": self.lists,
            "relists": self.relists,
            "errors": self.errors,
            "mapped_pods": len(self.table),
            "synced": self.table.synced,
        }

    # --- the loop ----------------------------------------------------------------
    async def run(self) -> None:
        """List and watch until cancelled."""
        backoff = 0.5
        failing = False
        self.table.watched = True
        try:
            while True:
                try:
                    api = await self._core_api()
                    await self._list(api)
                    if failing:
                        log.warning("kubernetes API reachable again: pod identity current")
                    failing, backoff = False, 0.5
                    while True:
                        await self._watch(api)
                except WatchGone:
                    log.info("pod watch from version %s expired (410): listing again", self.resource_version)
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - ApiException, aiohttp/OS errors, bad kubeconfig
                    self.errors += 1
                    self.state = "retrying"
                    if not failing:
                        log.warning("kubernetes API: %s; pod identity keeps its last state, retrying",
                                    _describe(exc))
                    failing = True
                    await asyncio.sleep(backoff)  # backoff pacing between attempts
                    backoff = min(backoff * 2, self.retry_max)
        finally:
            self.table.watched = False
            await self.close()

    async def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await api.api_client.close()

    async def _core_api(self) -> Any:
        if self._api is not None:
            return self._api
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        if self.settings.kubeconfig is not None:
            await config.load_kube_config(
                config_file=self.settings.kubeconfig,
                context=self.settings.context,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
        self._api = client.CoreV1Api(client.ApiClient(configuration))
        return self._api

    async def _list(self, api: Any) -> None:
        """A full, paged list; the table is replaced only once every page has arrived."""
        from kubernetes_asyncio.client.exceptions import ApiException

        self.state = "listing"
        entries: list[tuple[PodIdentity, tuple[str, ...]]] = []
        token: str | None = None
        version = ""
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_preload_content": False,
                                      "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            response = await api.list_pod_for_all_namespaces(**kwargs)
            try:
                if response.status != 200:
                    raise ApiException(status=response.status, reason=(await response.text())[:200])
                body = await response.json()
            finally:
                response.release()
            for obj in body.get("items") or ():
                pod, addresses = pod_entry(obj)
                if addresses:
                    entries.append((pod, addresses))
            meta = body.get("metadata") or {}
            version = version or str(meta.get("resourceVersion", ""))
            token = meta.get("continue")
            if not token:
                break
        first = not self.table.synced
        self.table.replace(entries)
        self.resource_version = version
        self.lists += 1
        if not first:
            self.relists += 1
        log.info("pod list at version %s: %d pods map", version, len(self.table))

    async def _watch(self, api: Any) -> None:
        """One watch request, from ``resource_version`` until the server ends it."""
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.exceptions import ApiException

        self.state = "watching"
        self.watches += 1
        timeout = self.settings.watch_timeout
        stream = watch.Watch(return_type="object")  # raw dicts: no model objects per event
        try:
            async with stream:
                async for event in stream.stream(
                    api.list_pod_for_all_namespaces,
                    resource_version=self.resource_version,
                    timeout_seconds=timeout,
                    allow_watch_bookmarks=True,
                    _request_timeout=timeout + 30,
                ):
                    self._apply(event["type"], event["raw_object"])
        except ApiException as exc:
            if exc.status == 410:
                raise WatchGone() from exc
            raise

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind in ("ADDED", "MODIFIED"):
            pod, addresses = pod_entry(obj)
            if addresses:
                self.table.put(pod, addresses)
            else:
                self.table.drop(pod.uid)
        elif kind == "DELETED":
            self.table.drop(pod_entry(obj)[0].uid)
        elif kind != "BOOKMARK":
            return
        self.events[kind] += 1
        self.last_event = time.time()
        if version:
            self.resource_version = version


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if status:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    return f"{type(exc).__name__}: {exc}"
