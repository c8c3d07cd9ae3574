"""The ``identity:`` key and ``kubernetes_namespaces``: validated at load, errors name file:line: key."""

from __future__ import annotations

from pathlib import Path

import pytest

from resolver import config as config_mod
from resolver.config import ConfigError
from resolver.pipeline.identity import kubernetes_namespaces

BASE = """upstreams: [{address: 127.0.0.1}]
namespaces:
  agents: {allow: [a.test]}
  payments: {allow: [b.test], kubernetes_namespaces: [payments, payments-batch]}
"""


def load(tmp_path: Path, text: str) -> config_mod.Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return config_mod.load(path)


def test_identity_absent_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, BASE).identity.kubernetes is None


def test_kubeconfig_resolved_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "kc").write_text("{}")
    cfg = load(tmp_path, BASE + "identity:\n  kubernetes: {kubeconfig: kc, watch_timeout: 60}\n")
    assert cfg.identity.kubernetes is not None
    assert cfg.identity.kubernetes.kubeconfig == str((tmp_path / "kc").resolve())
    assert cfg.identity.kubernetes.watch_timeout == 60
    in_cluster = load(tmp_path, BASE + "identity:\n  kubernetes: {}\n")
    assert in_cluster.identity.kubernetes is not None
    assert in_cluster.identity.kubernetes.kubeconfig is None


def test_kubernetes_namespaces_map(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE)
    mapping = {k: v.name for k, v in kubernetes_namespaces(cfg).items()}
    assert mapping == {"agents": "agents", "payments": "payments", "payments-batch": "payments"}


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("identity:\n  kubernetes: {kubeconfig: missing}\n", "c.yaml:6: identity.kubernetes.kubeconfig: no such file"),
        ("identity:\n  kubernetes: {watch: 1}\n", "c.yaml:6: identity.kubernetes.watch: unknown key"),
        ("identity:\n  kubernetes: {watch_timeout: 0}\n", "identity.kubernetes.watch_timeout: must be greater than 0"),
        ("identity:\n  consul: {}\n", "c.yaml:6: identity.consul: unknown key"),
    ],
)
def test_errors_name_line_and_key(tmp_path: Path, extra: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, BASE + extra)
    assert where in str(info.value)


def test_bad_kubernetes_namespace_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, BASE.replace("payments-batch", "Payments_Batch"))
    assert "namespaces.payments.kubernetes_namespaces[1]: not a Kubernetes namespace name" in str(info.value)


PRECEDENCE = """upstreams: [{address: 127.0.0.1}]
listen: [{address: 127.0.0.1, port: 5353}, {address: 127.0.0.1, port: 5354, namespace: bound}]
identity:
  kubernetes: {}
namespaces:
  bound: {allow: [a.test]}
  agents: {allow: [a.test]}
  office: {allow: [a.test], clients: [10.244.0.0/16]}
"""


def test_precedence_listener_then_pod_then_cidr(tmp_path: Path) -> None:
    from resolver.pipeline.identity import IdentityStage, PodIdentity, PodTable
    from resolver.pipeline.query import Query
    from resolver.wire.message import U16, name_from_text, parse_query

    wire = U16.pack(7) + bytes.fromhex("0100 0001 0000 0000 0000") + name_from_text("a.test") + b"\x00\x01\x00\x01"
    pods = PodTable()
    pods.replace([(PodIdentity("agents", "agent-0", "runner", "u1"), ("10.244.1.5",)),
                  (PodIdentity("kube-system", "coredns", "coredns", "u2"), ("10.244.1.6",))])
    stage = IdentityStage(load(tmp_path, PRECEDENCE), pods)

    def who(client: str, listener: str | None = None) -> tuple[str | None, str | None]:
        query = Query(wire, parse_query(wire), client, "udp", 0.0, listener_namespace=listener)
        reply = stage.resolve(query)
        if reply is not None:
            return None, None
        assert query.namespace is not None
        return query.namespace.name, None if query.pod is None else query.pod.name

    assert who("10.244.1.5", listener="bound") == ("bound", None)  # the listener decides first
    assert who("10.244.1.5") == ("agents", "agent-0")  # then the pod, over the CIDR
    assert who("::ffff:10.244.1.5") == ("agents", "agent-0")
    assert who("10.244.1.6") == ("office", None)  # a pod of a namespace no one serves: CIDR
    assert who("10.244.9.9") == ("office", None)
    assert who("192.0.2.1") == (None, None)  # unknown_clients: refuse
    pods.drop("u1")
    assert who("10.244.1.5") == ("office", None)


LABELS = """upstreams: [{address: 127.0.0.1}]
identity:
  kubernetes: {}
namespaces:
  sandbox: {allow: [a.test], pod_labels: {dnsgate.io/profile: sandbox}}
  batch: {allow: [a.test], pod_labels: {tier: batch}, kubernetes_namespaces: [agents]}
  agents: {allow: [a.test]}
"""


def test_pod_labels_select_before_the_namespace_name(tmp_path: Path) -> None:
    from resolver.pipeline.identity import IdentityStage, PodIdentity, PodTable
    from resolver.pipeline.query import Query
    from resolver.wire.message import U16, name_from_text, parse_query

    cfg = load(tmp_path, LABELS)
    assert cfg.namespaces["sandbox"].pod_labels == (("dnsgate.io/profile", "sandbox"),)
    assert set(kubernetes_namespaces(cfg)) == {"agents"}  # label-selecting namespaces are not names
    wire = U16.pack(7) + bytes.fromhex("0100 0001 0000 0000 0000") + name_from_text("a.test") + b"\x00\x01\x00\x01"
    pods = PodTable()
    pods.replace([
        (PodIdentity("agents", "plain", "sa", "u1", (("app", "x"),)), ("10.0.0.1",)),
        (PodIdentity("agents", "job", "sa", "u2", (("app", "x"), ("tier", "batch"))), ("10.0.0.2",)),
        (PodIdentity("other", "job", "sa", "u3", (("tier", "batch"),)), ("10.0.0.3",)),
        (PodIdentity("other", "box", "sa", "u4", (("dnsgate.io/profile", "sandbox"),)), ("10.0.0.4",)),
    ])
    stage = IdentityStage(cfg, pods)

    def served_by(client: str) -> str | None:
        query = Query(wire, parse_query(wire), client, "udp", 0.0)
        return None if stage.resolve(query) is not None or query.namespace is None else query.namespace.name

    assert served_by("10.0.0.1") == "agents"
    assert served_by("10.0.0.2") == "batch"  # the label, within the namespaces it names
    assert served_by("10.0.0.3") is None  # tier=batch outside "agents": nobody serves it
    assert served_by("10.0.0.4") == "sandbox"  # any Kubernetes namespace


def test_pod_labels_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, LABELS.replace("{tier: batch}", "[tier]"))
    assert "namespaces.batch.pod_labels: must be a mapping of label: value" in str(info.value)


def test_client_key_is_the_key_per_client_state_is_held_under(tmp_path: Path) -> None:
    """``client_key`` (the TCP connection cap's key, taken at accept) names a client as ``resolve`` would:
    the pod when a query would be served as the pod (``query.pod``), the address otherwise."""
    from resolver.pipeline.identity import IdentityStage, PodIdentity, PodTable, pod_key
    from resolver.pipeline.query import Query
    from resolver.wire.message import U16, name_from_text, parse_query

    wire = U16.pack(7) + bytes.fromhex("0100 0001 0000 0000 0000") + name_from_text("a.test") + b"\x00\x01\x00\x01"
    pods = PodTable()
    agent = PodIdentity("agents", "agent-0", "runner", "u1")
    coredns = PodIdentity("kube-system", "coredns", "coredns", "u2")
    pods.replace([(agent, ("10.244.1.5", "fd00::5")), (coredns, ("10.244.1.6",))])
    stage = IdentityStage(load(tmp_path, PRECEDENCE), pods)

    def resolved(client: str, listener: str | None) -> str:
        query = Query(wire, parse_query(wire), client, "udp", 0.0, listener_namespace=listener)
        stage.resolve(query)
        return client if query.pod is None else pod_key(query.pod)

    cases = [
        ("10.244.1.5", None, "pod:agents/agent-0"),
        ("fd00::5", None, "pod:agents/agent-0"),  # the pod's other address: the same key
        ("::ffff:10.244.1.5", None, "pod:agents/agent-0"),
        ("10.244.1.5", "bound", "10.244.1.5"),  # the listener decides: served per address
        ("10.244.1.6", None, "10.244.1.6"),  # a pod no namespace serves: its address
        ("10.244.9.9", None, "10.244.9.9"),  # CIDR
        ("192.0.2.1", None, "192.0.2.1"),  # refused: its address
    ]
    for client, listener, key in cases:
        assert stage.client_key(client, listener) == key == resolved(client, listener), (client, listener)
    # Without identity.kubernetes the pod table is not consulted: every client is its address.
    plain = IdentityStage(load(tmp_path, PRECEDENCE.replace("identity:\n  kubernetes: {}\n", "")), pods)
    assert plain.client_key("10.244.1.5", None) == "10.244.1.5"
