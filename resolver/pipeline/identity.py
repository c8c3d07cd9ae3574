"""Identify the client's namespace: listener binding, then pod identity, then longest prefix, then the default."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from heuristics.detector import address_owner
from resolver.config import Config, Namespace
from resolver.pipeline.query import NamespaceView, Query, Reply, pod_key
from resolver.wire.message import REFUSED, header_reply


def namespace_views(namespaces: dict[str, Namespace]) -> dict[str, NamespaceView]:
    """Each namespace's view, by name, in config order: what the stages read of it per query."""
    return {name: NamespaceView(ns) for name, ns in namespaces.items()}


class PrefixTable:
    """Longest-prefix match of client addresses to namespaces, memoised per address."""

    def __init__(self, namespaces: dict[str, NamespaceView], memo_size: int = 65_536) -> None:
        # (version, prefix length) -> {network int: namespace}; lengths checked longest first.
        self._tables: dict[int, list[tuple[int, dict[int, NamespaceView]]]] = {4: [], 6: []}
        by_len: dict[tuple[int, int], dict[int, NamespaceView]] = {}
        for view in namespaces.values():
            for net in view.namespace.clients:
                key = (net.version, net.prefixlen)
                by_len.setdefault(key, {})[int(net.network_address) >> (net.max_prefixlen - net.prefixlen)] = view
        for (version, plen), table in sorted(by_len.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            self._tables[version].append((bits - plen, table))
        self._memo: dict[str, NamespaceView | None] = {}
        self._memo_size = memo_size

    def lookup(self, client: str) -> NamespaceView | None:
        try:
            return self._memo[client]
        except KeyError:
            pass
        found: NamespaceView | None = None
        try:
            addr = ipaddress.ip_address(client.split("%")[0])
        except ValueError:
            addr = None
        if addr is not None:
            if addr.version == 6 and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            value = int(addr)
            for shift, table in self._tables[addr.version]:
                found = table.get(value >> shift)
                if found is not None:
                    break
        if len(self._memo) >= self._memo_size:
            self._memo.clear()
        self._memo[client] = found
        return found


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """Who a pod is, as alerts and learn records name it.

    ``created`` and ``terminating`` only decide which of two pods listing one
    address holds it (see :class:`PodTable`).
    """

    namespace: str  # the Kubernetes namespace
    name: str
    service_account: str
    uid: str
    labels: tuple[tuple[str, str], ...] = ()  # the pod's labels, for namespaces that select by label
    created: str = ""  # metadata.creationTimestamp, RFC 3339 as the API writes it (UTC, "Z"): compares as text
    terminating: bool = False  # metadata.deletionTimestamp is set: the pod is being deleted


def _claim(pod: PodIdentity) -> tuple[bool, str]:
    """How strongly a pod claims an address it lists: not terminating first, then the most recently created."""
    return (not pod.terminating, pod.created)


def canonical_address(text: str) -> str | None:
    """An address in the form listeners report it (IPv4-mapped IPv6 folded to IPv4); None if not one."""
    try:
        addr = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


class PodTable:
    """Client address -> the Running pod that owns it, kept current by the Pods watch.

    The table holds only pods that map (Running, not hostNetwork, with an
    address); the watch (``resolver/operations/kubernetes.py``) decides that and
    calls :meth:`put` / :meth:`drop` / :meth:`replace`. When two pods list one
    address (a reused address whose old pod is still being deleted), it goes
    to the pod that is not terminating over one that is, then to the one
    created last; between equals the later event wins (in a full list, the last
    by namespace/name). So an address handed to a new pod follows it at once,
    and neither the old pod's later events nor a relist give it back. A pod
    that lost an address does not hold it: should the winner go first, the
    address maps again with the loser's next event or the next list.
    Memory is one small object per pod plus two dict entries per address.
    """

    def __init__(self) -> None:
        self._by_address: dict[str, PodIdentity] = {}
        self._addresses: dict[str, tuple[str, ...]] = {}  # uid -> addresses it holds
        self.synced = False  # True once the first full list has been applied
        self.watched = False  # True while a Pods watch fills this table (started with the server)

    def __len__(self) -> int:
        return len(self._addresses)

    @property
    def addresses(self) -> int:
        return len(self._by_address)

    def lookup(self, client: str) -> PodIdentity | None:
        found = self._by_address.get(client)
        if found is None and (client.startswith("::ffff:") or "%" in client):
            canonical = canonical_address(client)
            if canonical is not None:
                found = self._by_address.get(canonical)
        return found

    def put(self, pod: PodIdentity, addresses: Iterable[str]) -> None:
        """Map ``addresses`` to ``pod``; addresses it held before and no longer lists stop mapping."""
        pod = PodIdentity(
            sys.intern(pod.namespace), pod.name, sys.intern(pod.service_account), pod.uid,
            tuple((sys.intern(k), sys.intern(v)) for k, v in pod.labels), pod.created, pod.terminating,
        )
        listed = tuple(a for a in (canonical_address(x) for x in addresses) if a is not None)
        old = self._addresses.get(pod.uid, ())
        for address in old:
            if address not in listed:
                self._unmap(address, pod.uid)
        claim = _claim(pod)
        new: list[str] = []
        for address in listed:
            previous = self._by_address.get(address)
            if previous is not None and previous.uid != pod.uid and _claim(previous) > claim:
                continue  # a live or newer pod holds it: a terminating or older one does not take it back
            new.append(address)
        if not new:
            self._addresses.pop(pod.uid, None)
            return
        for address in new:
            previous = self._by_address.get(address)
            if previous is not None and previous.uid != pod.uid:
                # The address moved to a new pod: the old one no longer holds it.
                held = tuple(a for a in self._addresses.get(previous.uid, ()) if a != address)
                if held:
                    self._addresses[previous.uid] = held
                else:
                    self._addresses.pop(previous.uid, None)
            self._by_address[address] = pod
        self._addresses[pod.uid] = tuple(new)

    def drop(self, uid: str) -> None:
        """The pod is gone (deleted, Succeeded, Failed, or no longer has an address)."""
        for address in self._addresses.pop(uid, ()):
            self._unmap(address, uid)

    def replace(self, pods: Iterable[tuple[PodIdentity, tuple[str, ...]]]) -> None:
        """Swap in the result of a full list: pods it does not name stop mapping.

        The list comes in namespace/name order, which says nothing of which pod
        got a shared address last; applied weakest claim first, each address
        ends with the pod :meth:`put` would give it.
        """
        self._by_address = {}
        self._addresses = {}
        ordered = sorted(pods, key=lambda entry: (_claim(entry[0]), entry[0].namespace, entry[0].name))
        for pod, addresses in ordered:
            self.put(pod, addresses)
        self.synced = True

    def _unmap(self, address: str, uid: str) -> None:
        current = self._by_address.get(address)
        if current is not None and current.uid == uid:
            del self._by_address[address]


def kubernetes_namespaces(config: Config) -> dict[str, Namespace]:
    """Kubernetes namespace -> the dnsgate namespace that serves its pods (label-selecting ones aside)."""
    out: dict[str, Namespace] = {}
    for ns in config.namespaces.values():
        if ns.pod_labels:
            continue
        for kube in ns.kubernetes_namespaces or (ns.name,):
            out.setdefault(kube, ns)
    return out


class PodSelectors:
    """Namespaces that serve pods by label, in config order; the first whose labels all match wins."""

    def __init__(self, namespaces: dict[str, NamespaceView]) -> None:
        self._rules = [
            (view, frozenset(view.namespace.pod_labels), frozenset(view.namespace.kubernetes_namespaces) or None)
            for view in namespaces.values()
            if view.namespace.pod_labels
        ]

    def __bool__(self) -> bool:
        return bool(self._rules)

    def match(self, pod: PodIdentity) -> NamespaceView | None:
        labels = frozenset(pod.labels)
        for view, wanted, kube_namespaces in self._rules:
            if wanted <= labels and (kube_namespaces is None or pod.namespace in kube_namespaces):
                return view
        return None


class IdentityStage:
    """Sets ``query.view`` (and ``query.pod``); unknown clients are REFUSED unless a default is set.

    Precedence: the listener's namespace, then the pod that owns the client
    address (when ``identity: {kubernetes: ...}`` is configured), then the
    longest ``clients:`` prefix, then ``unknown_clients``. Every table holds
    the namespaces' views (``query.view``), made once for this config generation:
    a reload builds a new stage, with views of the new config.
    """

    def __init__(self, config: Config, pods: PodTable | None = None) -> None:
        views = namespace_views(config.namespaces)
        self._namespaces = views
        self._prefixes = PrefixTable(views)
        self._fallback = None if config.unknown_clients == "refuse" else views[config.unknown_clients]
        self._pods = pods if config.identity.kubernetes is not None else None
        self._by_kube = {kube: views[ns.name] for kube, ns in kubernetes_namespaces(config).items()}
        self._selectors = PodSelectors(views)
        self._ipv6_prefix = config.ipv6_client_prefix

    def resolve(self, query: Query) -> Reply | None:
        view = None
        if query.listener_namespace is not None:
            view = self._namespaces.get(query.listener_namespace)
        if view is None and self._pods is not None:
            pod = self._pods.lookup(query.client)
            if pod is not None:
                view = self._pod_view(pod)
                if view is not None:
                    query.pod = pod
        if view is None:
            view = self._prefixes.lookup(query.client) or self._fallback
        if view is None:
            return Reply(header_reply(query.wire, query.question, REFUSED), REFUSED, "refused")
        query.view = view
        pod = query.pod
        query.owner = pod_key(pod) if pod is not None else address_owner(query.client, self._ipv6_prefix)
        return None

    def _pod_view(self, pod: PodIdentity) -> NamespaceView | None:
        # Label selectors first (the narrower rule), then the Kubernetes namespace's name.
        return (self._selectors.match(pod) if self._selectors else None) or self._by_kube.get(pod.namespace)

    def client_key(self, client: str, listener_namespace: str | None) -> str:
        """The key per-client state is held under for ``client``, as :meth:`resolve` would name it.

        ``pod_key`` of the pod when a query from ``client`` on this listener would
        be served as that pod (``query.pod`` set), else the address's owner
        (``query.owner``: an IPv6 address's network of ``ipv6_client_prefix``
        bits, an IPv4 address itself). For what is taken before any query is read
        (the TCP connection cap, at accept): one table lookup, no I/O.
        """
        pods = self._pods
        if pods is None or (listener_namespace is not None and listener_namespace in self._namespaces):
            return address_owner(client, self._ipv6_prefix)
        pod = pods.lookup(client)
        if pod is None or self._pod_view(pod) is None:
            return address_owner(client, self._ipv6_prefix)
        return pod_key(pod)
