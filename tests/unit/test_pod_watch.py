"""The Pods watch, with the real kubernetes-asyncio client against the fake API server on loopback.

The API server is a fake (tests/support/fake_kube_api.py): no API server can
run here. It speaks the real list/watch wire protocol, so the client library,
its watch stream parser and our event handling are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.config import KubernetesIdentity
from resolver.operations.kubernetes import PodWatch, pod_entry
from resolver.pipeline.identity import PodIdentity, PodTable
from tests.support.fake_kube_api import FakeKubeAPI, make_pod


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    server = FakeKubeAPI(bookmark_seconds=0.2).start()
    try:
        yield server
    finally:
        server.stop()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll the condition; return how long it took to hold."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)  # poll interval
    return time.monotonic() - start


@contextlib.asynccontextmanager
async def watching(api: FakeKubeAPI, tmp_path: Path, watch_timeout: int = 30, page_size: int = 500,
                   token: str | None = None) -> AsyncIterator[PodWatch]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token)
    watch = PodWatch(KubernetesIdentity(str(kubeconfig), None, watch_timeout), PodTable(), page_size=page_size,
                     retry_max=0.2)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ns_of(table: PodTable, address: str) -> str | None:
    pod = table.lookup(address)
    return None if pod is None else f"{pod.namespace}/{pod.name}"


async def test_list_then_watch_maps_running_pods_only(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.load([
        make_pod("agents", "a1", "10.244.0.11", service_account="runner"),
        make_pod("payments", "p1", "10.244.0.12"),
        make_pod("agents", "hostnet", "10.0.0.5", host_network=True),
        make_pod("agents", "pending", None, phase="Pending"),
        make_pod("agents", "done", "10.244.0.13", phase="Succeeded"),
    ])
    async with watching(api, tmp_path) as watch:
        await until(lambda: watch.table.synced)
        table = watch.table
        assert ns_of(table, "10.244.0.11") == "agents/a1"
        assert table.lookup("10.244.0.11").service_account == "runner"  # type: ignore[union-attr]
        assert ns_of(table, "10.244.0.12") == "payments/p1"
        assert table.lookup("10.0.0.5") is None  # hostNetwork shares the node's address
        assert table.lookup("10.244.0.13") is None  # Succeeded
        assert len(table) == 2

        await until(lambda: watch.state == "watching")
        api.add(make_pod("agents", "a2", "10.244.0.21", extra_ips=("fd00::21",)))
        await until(lambda: table.lookup("10.244.0.21") is not None)
        assert ns_of(table, "fd00::21") == "agents/a2"
        assert ns_of(table, "::ffff:10.244.0.21") == "agents/a2"

        finished = dict(api.pods[("agents", "a1")])
        finished["status"] = {**finished["status"], "phase": "Failed"}
        api.modify(finished)
        await until(lambda: table.lookup("10.244.0.11") is None)

        api.delete("payments", "p1")
        await until(lambda: table.lookup("10.244.0.12") is None)
        assert watch.events["ADDED"] == 1
        assert watch.events["MODIFIED"] == 1
        assert watch.events["DELETED"] == 1
        assert watch.lists == 1
        assert watch.relists == 0


async def test_address_reused_by_other_namespace_follows_new_pod(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.load([make_pod("agents", "old", "10.244.0.30")])
    async with watching(api, tmp_path) as watch:
        await until(lambda: watch.table.synced and watch.state == "watching")
        # The new pod gets the address before the old one's deletion arrives (the kubelet races).
        api.add(make_pod("payments", "new", "10.244.0.30"))
        took = await until(lambda: ns_of(watch.table, "10.244.0.30") == "payments/new")
        assert took < 2.0
        api.delete("agents", "old")
        await until(lambda: watch.events["DELETED"] == 1)
        assert ns_of(watch.table, "10.244.0.30") == "payments/new"


async def test_410_gone_relists_without_losing_events(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.load([make_pod("agents", "a1", "10.244.0.41"), make_pod("agents", "a2", "10.244.0.42")])
    async with watching(api, tmp_path) as watch:
        await until(lambda: watch.table.synced and watch.state == "watching")
        # Changes land while the history is compacted away: only a relist can see them.
        api.end_watches()
        api.delete("agents", "a1")
        api.add(make_pod("payments", "p3", "10.244.0.43"))
        api.compact()
        await until(lambda: watch.relists >= 1)
        await until(lambda: ns_of(watch.table, "10.244.0.43") == "payments/p3")
        assert watch.table.lookup("10.244.0.41") is None
        assert ns_of(watch.table, "10.244.0.42") == "agents/a2"
        assert watch.errors == 0


async def test_watch_timeout_renews_from_last_version(api: FakeKubeAPI, tmp_path: Path) -> None:
    async with watching(api, tmp_path, watch_timeout=1) as watch:
        await until(lambda: watch.table.synced and watch.state == "watching")
        api.add(make_pod("agents", "a1", "10.244.0.51"))
        await until(lambda: len(api.watch_requests()) >= 3, timeout=8)
        api.add(make_pod("agents", "a2", "10.244.0.52"))
        await until(lambda: watch.table.lookup("10.244.0.52") is not None)
        watches = api.watch_requests()
        assert all(w["timeoutSeconds"] == "1" and w["allowWatchBookmarks"].lower() == "true" for w in watches)
        versions = [int(w["resourceVersion"]) for w in watches]
        assert versions == sorted(versions)
        assert versions[-1] > versions[0]
        assert len(api.list_requests()) == 1  # renewals never re-list
        assert watch.events["BOOKMARK"] >= 1


async def test_paged_list(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.load([make_pod("agents", f"a{i}", f"10.244.1.{i}") for i in range(1, 6)])
    async with watching(api, tmp_path, page_size=2) as watch:
        await until(lambda: watch.table.synced)
        assert len(watch.table) == 5
        pages = api.list_requests()
        assert [p.get("limit") for p in pages] == ["2", "2", "2"]
        assert "continue" not in pages[0]
        assert all("continue" in p for p in pages[1:])


async def test_unauthorized_is_retried_and_never_synced(api: FakeKubeAPI, tmp_path: Path) -> None:
    async with watching(api, tmp_path, token="wrong") as watch:
        await until(lambda: watch.errors >= 2)
        assert watch.state == "retrying"
        assert not watch.table.synced


def test_pod_entry_reads_pod_ips() -> None:
    pod, addresses = pod_entry(make_pod("agents", "dual", "10.244.2.2", extra_ips=("fd00::2",)))
    assert pod.labels == (("app", "dual"),)
    assert pod.namespace == "agents"
    assert pod.name == "dual"
    assert addresses == ("10.244.2.2", "fd00::2")


def test_table_replace_and_drop() -> None:
    table = PodTable()
    a = PodIdentity("agents", "a", "sa", "u1")
    b = PodIdentity("payments", "b", "sa", "u2")
    table.replace([(a, ("10.0.0.1",)), (b, ("10.0.0.2",))])
    assert table.synced
    assert len(table) == 2
    table.put(b, ("10.0.0.1",))  # b takes a's address and gives up its own
    assert table.lookup("10.0.0.1") == b
    assert table.lookup("10.0.0.2") is None
    table.drop("u1")  # a's late deletion does not unmap b
    assert table.lookup("10.0.0.1") == b
    assert len(table) == 1


ADDRESSES = [f"10.0.0.{i}" for i in range(1, 6)]
EVENT = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 4), st.lists(st.sampled_from(ADDRESSES), max_size=3, unique=True)),
    st.tuples(st.just("drop"), st.integers(0, 4), st.just([])),
)


@given(st.lists(EVENT, max_size=40))
@settings(max_examples=300, deadline=None)
def test_table_follows_the_latest_event_for_every_address(events: list[tuple[str, int, list[str]]]) -> None:
    """Any order of watch events: an address maps to the pod whose latest event claimed it, while that pod
    still claims it; never to a dropped pod; the table's size counts only pods holding an address."""
    table = PodTable()
    owner: dict[str, int] = {}  # address -> pod that claimed it last
    claims: dict[int, set[str]] = {}  # pod -> addresses its latest event listed
    for kind, pod, addresses in events:
        if kind == "put":
            table.put(PodIdentity("ns", f"p{pod}", "sa", f"u{pod}"), addresses)
            claims[pod] = set(addresses)
            for address in addresses:
                owner[address] = pod
        else:
            table.drop(f"u{pod}")
            claims.pop(pod, None)
        for address in ADDRESSES:
            expected = owner.get(address)
            if expected is not None and address not in claims.get(expected, set()):
                expected = None
            found = table.lookup(address)
            assert (None if found is None else int(found.name[1:])) == expected, (address, events)
    holding = {p for p, held in claims.items() if any(owner.get(a) == p for a in held)}
    assert len(table) == len(holding)


T1, T2, T3 = "2025-03-01T10:00:00Z", "2025-03-01T10:05:00Z", "2025-03-01T10:09:00Z"


def test_list_gives_a_shared_address_to_the_pod_not_terminating() -> None:
    """A full list comes in namespace/name order: the terminating pod last in that order must not win."""
    table = PodTable()
    new = PodIdentity("agents", "new", "sa", "u-new", created=T2)
    old = PodIdentity("payments", "old", "sa", "u-old", created=T1, terminating=True)
    table.replace([(new, ("10.0.0.50",)), (old, ("10.0.0.50",))])
    assert table.lookup("10.0.0.50") == new
    assert len(table) == 1  # the terminating pod holds nothing
    # Also when the terminating pod is the newer one: not terminating comes first.
    newer_but_going = PodIdentity("zz", "going", "sa", "u-going", created=T3, terminating=True)
    table.replace([(new, ("10.0.0.50",)), (newer_but_going, ("10.0.0.50",))])
    assert table.lookup("10.0.0.50") == new


def test_list_gives_a_shared_address_to_the_pod_created_last_then_by_name() -> None:
    table = PodTable()
    early = PodIdentity("zz", "early", "sa", "u1", created=T1)
    late = PodIdentity("aa", "late", "sa", "u2", created=T2)
    table.replace([(late, ("10.0.0.60",)), (early, ("10.0.0.60",))])
    assert table.lookup("10.0.0.60") == late
    # Equal claims: the last by namespace/name, whatever order the items come in.
    a, b = PodIdentity("aa", "x", "sa", "u3", created=T1), PodIdentity("bb", "x", "sa", "u4", created=T1)
    for items in ([(a, ("10.0.0.61",)), (b, ("10.0.0.61",))], [(b, ("10.0.0.61",)), (a, ("10.0.0.61",))]):
        table.replace(items)
        assert table.lookup("10.0.0.61") == b


def test_list_rule_is_per_address() -> None:
    """A dual-stack pod that loses one address to a newer pod keeps its other one."""
    table = PodTable()
    old = PodIdentity("payments", "old", "sa", "u-old", created=T1, terminating=True)
    new = PodIdentity("agents", "new", "sa", "u-new", created=T2)
    table.replace([(new, ("10.0.0.70",)), (old, ("10.0.0.70", "fd00::70"))])
    assert table.lookup("10.0.0.70") == new
    assert table.lookup("fd00::70") == old
    assert len(table) == 2


def test_terminating_pod_event_does_not_take_an_address_back() -> None:
    """A MODIFIED event of the old, terminating pod still listing the address arrives after the new pod's."""
    table = PodTable()
    old = PodIdentity("payments", "old", "sa", "u-old", created=T1)
    new = PodIdentity("agents", "new", "sa", "u-new", created=T2)
    table.replace([(old, ("10.0.0.80",))])
    table.put(new, ("10.0.0.80",))
    assert table.lookup("10.0.0.80") == new
    table.put(PodIdentity("payments", "old", "sa", "u-old", created=T1, terminating=True), ("10.0.0.80",))
    assert table.lookup("10.0.0.80") == new
    table.put(old, ("10.0.0.80",))  # an older pod's event, not terminating: still the newer pod's address
    assert table.lookup("10.0.0.80") == new
    assert len(table) == 1
    table.drop("u-old")  # its deletion, at last, does not unmap the new pod
    assert table.lookup("10.0.0.80") == new


def test_address_of_a_terminating_holder_goes_to_a_new_pod() -> None:
    """The other way round: a new pod's event takes an address from the terminating pod holding it."""
    table = PodTable()
    old = PodIdentity("payments", "old", "sa", "u-old", created=T2, terminating=True)
    table.replace([(old, ("10.0.0.90",))])
    assert table.lookup("10.0.0.90") == old  # alone, a terminating pod still maps while Running
    new = PodIdentity("agents", "new", "sa", "u-new", created=T1)  # created earlier, but not terminating
    table.put(new, ("10.0.0.90",))
    assert table.lookup("10.0.0.90") == new


def test_pod_entry_reads_creation_and_deletion() -> None:
    pod, _ = pod_entry(make_pod("agents", "p", "10.244.9.9", created=T1, deleting=T2))
    assert (pod.created, pod.terminating) == (T1, True)
    pod, _ = pod_entry(make_pod("agents", "p", "10.244.9.9"))
    assert (pod.created, pod.terminating) == ("", False)


async def test_relist_keeps_a_reused_address_with_the_new_pod(api: FakeKubeAPI, tmp_path: Path) -> None:
    """Through the fake API: payments/old is terminating with 10.244.0.50, agents/new is given it, the watch
    is compacted away and relists; the list (agents/new first in namespace order) must not hand it back."""
    api.load([make_pod("payments", "old", "10.244.0.50", created=T1)])
    async with watching(api, tmp_path) as watch:
        await until(lambda: watch.table.synced and watch.state == "watching")
        api.terminate("payments", "old")
        api.add(make_pod("agents", "new", "10.244.0.50", created=T2))
        await until(lambda: ns_of(watch.table, "10.244.0.50") == "agents/new")
        api.modify(api.pods[("payments", "old")])  # a late status update of the old pod
        await until(lambda: watch.events["MODIFIED"] >= 2)
        assert ns_of(watch.table, "10.244.0.50") == "agents/new"
        api.end_watches()
        api.add(make_pod("misc", "filler", None))  # a change only the relist can see
        api.compact()
        await until(lambda: watch.relists >= 1)
        assert ns_of(watch.table, "10.244.0.50") == "agents/new"
