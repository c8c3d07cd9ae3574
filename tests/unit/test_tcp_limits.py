"""TCP connection table: per-client cap, the idlest connection evicted at the global cap.

The table only needs a transport's write-buffer size and ``abort``; a small
in-process transport stands in for it here (the real listeners are exercised
in tests/integration/test_fairness.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resolver import config as config_mod
from resolver.operations.listeners import TcpConnection, TcpTable
from resolver.pipeline.identity import IdentityStage, PodIdentity, PodTable


class Transport:
    def __init__(self) -> None:
        self.unsent = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def abort(self) -> None:
        self.aborted = True


class Writer:
    def __init__(self) -> None:
        self.transport = Transport()


def conn(client: str, at: float) -> TcpConnection:
    writer: Any = Writer()
    return TcpConnection(client, client, writer, at)


def test_per_client_cap() -> None:
    table = TcpTable()
    held = [conn("10.0.0.1", i) for i in range(5)]
    assert [table.admit(c, 100, 3) for c in held] == [True, True, True, False, False]
    assert table.refused_per_client == 2
    assert table.admit(conn("10.0.0.2", 9), 100, 3)  # another client is not affected
    table.release(held[0])
    assert table.admit(conn("10.0.0.1", 10), 100, 3)


def test_global_cap_evicts_the_oldest_idle_connection() -> None:
    table = TcpTable()
    hog = [conn("10.0.0.1", float(i)) for i in range(4)]
    for c in hog:
        assert table.admit(c, 4, 4)
    hog[0].inflight = 1  # waiting on an upstream: not idle
    hog[1].writer.transport.unsent = 100  # type: ignore[attr-defined]  # replies not yet read: not idle
    newcomer = conn("10.0.0.2", 10.0)
    assert table.admit(newcomer, 4, 4)
    assert hog[2].writer.transport.aborted  # type: ignore[attr-defined]
    assert not hog[0].writer.transport.aborted
    assert not hog[1].writer.transport.aborted
    assert table.evicted_idle == 1
    assert len(table) == 4
    table.release(hog[2])  # the evicted connection's own task releases again: no double count
    assert len(table) == 4
    assert table.per_client == {"10.0.0.1": 3, "10.0.0.2": 1}


def test_global_cap_with_nothing_idle_refuses() -> None:
    table = TcpTable()
    busy = [conn("10.0.0.1", float(i)) for i in range(2)]
    for c in busy:
        c.inflight = 1
        assert table.admit(c, 2, 2)
    assert not table.admit(conn("10.0.0.2", 5.0), 2, 2)
    assert table.refused_full == 1


POD_CONFIG = """upstreams: [{address: 127.0.0.1}]
identity:
  kubernetes: {}
tcp_max_connections_per_client: 2
namespaces:
  agents: {allow: [a.test]}
  payments: {allow: [a.test]}
"""


def test_a_pods_addresses_share_one_slot_key_and_release_under_the_key_taken(tmp_path: Path) -> None:
    """A pod's connections count under its key whatever address they come from; a connection gives its
    slot back under the key it was admitted with, even after its address moved to another pod."""
    path = tmp_path / "c.yaml"
    path.write_text(POD_CONFIG)
    pods = PodTable()
    pods.put(PodIdentity("agents", "dual-0", "sa", "u1"), ("10.0.0.40", "fd00::40"))
    stage = IdentityStage(config_mod.load(path), pods)

    def keyed(client: str, at: float) -> TcpConnection:
        writer: Any = Writer()
        return TcpConnection(client, stage.client_key(client, None), writer, at)

    table = TcpTable()
    held = [keyed("10.0.0.40", 0.0), keyed("fd00::40", 1.0)]
    assert [table.admit(c, 100, 2) for c in held] == [True, True]
    assert not table.admit(keyed("fd00::40", 2.0), 100, 2)  # the pod's cap, not the address's
    assert table.per_client == {"pod:agents/dual-0": 2}
    assert table.refused_per_client == 1

    pods.drop("u1")
    pods.put(PodIdentity("payments", "pay-0", "sa", "u2"), ("10.0.0.40", "fd00::40"))
    table.release(held[0])
    assert table.per_client == {"pod:agents/dual-0": 1}  # dual-0's slot, not pay-0's (which has none)
    newcomer = keyed("10.0.0.40", 3.0)
    assert newcomer.key == "pod:payments/pay-0"
    assert table.admit(newcomer, 100, 2)
    table.release(held[1])
    table.release(newcomer)
    assert table.per_client == {}
    assert len(table) == 0
