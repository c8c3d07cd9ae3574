"""Identify the client's namespace: listener binding, then longest prefix, then the default."""

from __future__ import annotations

import ipaddress

from resolver.config import Config, Namespace
from resolver.query import Query, Reply
from resolver.wire import REFUSED, header_reply


class PrefixTable:
    """Longest-prefix match of client addresses to namespaces, memoised per address."""

    def __init__(self, namespaces: dict[str, Namespace], memo_size: int = 65_536) -> None:
        # (version, prefix length) -> {network int: namespace}; lengths checked longest first.
        self._tables: dict[int, list[tuple[int, dict[int, Namespace]]]] = {4: [], 6: []}
        by_len: dict[tuple[int, int], dict[int, Namespace]] = {}
        for ns in namespaces.values():
            for net in ns.clients:
                key = (net.version, net.prefixlen)
                by_len.setdefault(key, {})[int(net.network_address) >> (net.max_prefixlen - net.prefixlen)] = ns
        for (version, plen), table in sorted(by_len.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            self._tables[version].append((bits - plen, table))
        self._memo: dict[str, Namespace | None] = {}
        self._memo_size = memo_size

    def lookup(self, client: str) -> Namespace | None:
        try:
            return self._memo[client]
        except KeyError:
            pass
        found: Namespace | None = None
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


class IdentityStage:
    """Sets ``query.namespace``; unknown clients are REFUSED unless a default namespace is set."""

    def __init__(self, config: Config) -> None:
        self._namespaces = config.namespaces
        self._prefixes = PrefixTable(config.namespaces)
        self._fallback = None if config.unknown_clients == "refuse" else config.namespaces[config.unknown_clients]

    def resolve(self, query: Query) -> Reply | None:
        ns = None
        if query.listener_namespace is not None:
            ns = self._namespaces.get(query.listener_namespace)
        if ns is None:
            ns = self._prefixes.lookup(query.client) or self._fallback
        if ns is None:
            return Reply(header_reply(query.wire, query.question, REFUSED), REFUSED, "refused")
        query.namespace = ns
        return None
