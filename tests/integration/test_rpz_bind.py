"""Differential test: dnsgate's RPZ against BIND 9 (`named -g`), with Unbound as a second opinion.

The three resolvers load the same two policy zones (tests/data/rpz_differential),
in the same order, and forward to the same upstream: Unbound resolving the
``test.`` zone it holds, CNAME chains returned whole as a recursive upstream does. Every question
is asked of each; a reply is compared as (rcode, TC, the answer section
without TTLs, owner names compared without regard to case, as DNS compares them).
(The questions that made Unbound 1.17 stop answering are asked last.) dnsgate must agree with BIND on every question but the ones in
KNOWN_DIFFERENCES: the triggers dnsgate leaves out, and local CNAME targets,
which dnsgate decides as queries before following them and BIND does not. Unbound's
agreement with BIND is measured and printed, not asserted.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.harness import free_port
from tests.support.rpz_references import Bind, UnboundRpz, ZoneUpstream
from tests.support.upstream_servers import Dnsgate, start_dnsgate

DATA = Path(__file__).resolve().parents[1] / "data" / "rpz_differential"
ZONES = (("first.rpz", DATA / "first.rpz"), ("second.rpz", DATA / "second.rpz"))
PROBE = "other.plain.test"

QUESTIONS: list[tuple[str, str, bool]] = [
    (name, rdtype, tcp) for name, rdtype, *rest in (line.split() for line in """
other.plain.test A
nonexist.plain.test A
nx.plain.test A
nx.plain.test AAAA
nodata.plain.test A
nodata.plain.test TXT
pass.plain.test A
pass.plain.test CNAME
drop.plain.test A
tcp.plain.test A
tcp.plain.test A tcp
local.plain.test A
local.plain.test AAAA
local.plain.test TXT
local.plain.test MX
local.plain.test ANY
tochain.plain.test A
tochain.plain.test CNAME
tochain2.plain.test A
tonodata.plain.test A
tolocal.plain.test A
tolocal.plain.test AAAA
topass.plain.test A
topass2.plain.test A
clean.plain.test A
clean.plain.test AAAA
hop.plain.test A
y.shadow.test A
y.shadow.test TXT
other.shadow.test A
x.mid.shadow.test A
x.mid.shadow.test TXT
mid.shadow.test A
mid.shadow.test TXT
deep.x.mid.shadow.test A
shadow.test A
a.b.ent.test A
b.ent.test A
b.ent.test TXT
z.b.ent.test A
q.ent.test A
r.q.ent.test A
ent.test A
www.garden.test A
www.garden.test CNAME
a.b.garden.test A
garden.test A
walled.plain.test A
walled.plain.test TXT
walled.plain.test CNAME
walled.plain.test ANY
walled-nx.plain.test A
shop.plain.test A
w.wild.test A
exact.wild.test A
a.exact.wild.test A
x.deep.wild.test A
y.x.deep.wild.test A
deep.wild.test A
wild.test A
v.order.test A
u.order.test A
order.test A
ipbad.plain.test A
towalled.plain.test A
togarden.plain.test A
toshadow.plain.test A
toshadow.plain.test TXT
tomid.plain.test A
todrop.plain.test A
www.dn.test A
nx.dn.test A
local.dn.test A
NX.Plain.TEST A
Y.Shadow.Test A
WALLED.plain.test A
totcp.plain.test A
totcp.plain.test A tcp
""".strip().splitlines()) for tcp in [bool(rest)]
]



def random_policy(seed: int = 4592) -> tuple[str, list[str], list[tuple[str, str, bool]]]:
    """A third policy zone drawn at random under r.test: exact triggers, wildcards, empty non-terminals.

    Each trigger answers in a way that says which trigger it was (its own local
    address, or NXDOMAIN/NODATA/PASSTHRU), and the upstream has an address for
    every name asked, so a reply tells which rule, if any, matched.
    """
    rng = random.Random(seed)
    names = [".".join(p) for depth in (1, 2, 3) for p in itertools.product("abc", repeat=depth)]
    deep = [".".join(p) for p in itertools.product("abc", repeat=4)]
    exact = rng.sample(names, 14)
    wild = rng.sample(["", *names], 7)
    lines = ["$ORIGIN random.rpz.", "$TTL 60", "@ SOA localhost. root.localhost. 1 3600 600 86400 60", "@ NS localhost."]
    actions = [("CNAME", "."), ("CNAME", "*."), ("CNAME", "rpz-passthru.")]
    for i, owner in enumerate(exact):
        rtype, rdata = actions[i % 4] if i % 4 < 3 else ("A", f"198.51.100.{100 + i}")
        lines.append(f"{owner}.r.test {rtype} {rdata}")
    for i, parent in enumerate(wild):  # each wildcard answers its own address: a reply names it
        lines.append(f"*.{parent + '.' if parent else ''}r.test A 198.51.100.{150 + i}")
    asked = [*names, *rng.sample(deep, 30), "r.test"]
    questions = [(f"{n}.r.test" if n != "r.test" else n, "A", False) for n in asked]
    records = [f"{name}. 300 IN A 192.0.2.200" for name, _, _ in questions]
    return "\n".join(lines) + "\n", records, questions


RANDOM_ZONE, RANDOM_RECORDS, RANDOM_QUESTIONS = random_policy()

# Questions on which dnsgate differs from BIND by design, and why.
KNOWN_DIFFERENCES = {
    ("ipbad.plain.test", "A", False): "rpz-ip (response IP) triggers are not supported",
    # BIND sends a local CNAME's target upstream whatever the target's own triggers say;
    # dnsgate decides the target as a query for it first (it leaves for the client's sake).
    ("walled-nx.plain.test", "A", False): "the target nx.plain.test has CNAME . of its own: NXDOMAIN after the CNAME",
    ("shop.plain.test", "A", False): "the target walled.plain.test is a local CNAME of its own: followed too",
}


@dataclass(frozen=True)
class Outcome:
    rcode: str
    tc: bool
    answer: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.rcode}{' TC' if self.tc else ''} [{'; '.join(self.answer)}]"


def outcome(port: int, name: str, rdtype: str, tcp: bool) -> Outcome:
    query = dns.message.make_query(name, rdtype)
    # A silent drop is an outcome to compare, so waiting is bounded; names the zones drop
    # are waited on briefly, every other question gets time for a loaded machine and one retry.
    waits = (0.8,) if "drop" in name else (2.0, 3.0)
    try:
        for attempt, wait in enumerate(waits, 1):
            try:
                if tcp:
                    reply = dns.query.tcp(query, "127.0.0.1", port=port, timeout=wait)
                else:
                    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=wait)
                break
            except dns.exception.Timeout:
                if attempt == len(waits):
                    raise
    except dns.exception.Timeout:
        return Outcome("no answer", False, ())
    except OSError as exc:  # the server went away (seen with Unbound: see the report line)
        return Outcome(f"unreachable: {exc.strerror}", False, ())
    answer = tuple(sorted(
        f"{rrset.name.to_text().lower()} {dns.rdatatype.to_text(rrset.rdtype)} {rdata.to_text()}"
        for rrset in reply.answer for rdata in rrset
    ))
    return Outcome(dns.rcode.to_text(reply.rcode()), bool(reply.flags & dns.flags.TC), answer)


@dataclass
class Resolvers:
    bind: Bind
    unbound: UnboundRpz
    dnsgate: Dnsgate


@pytest.fixture(scope="module")
def resolvers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolvers]:
    records = [line for line in (DATA / "upstream.records").read_text().splitlines() if line.strip()]
    records += RANDOM_RECORDS
    random_zone = tmp_path_factory.mktemp("rpz-random") / "random.rpz"
    random_zone.write_text(RANDOM_ZONE)
    zones = (*ZONES, ("random.rpz", random_zone))
    upstream = ZoneUpstream(free_port(), tmp_path_factory.mktemp("rpz-upstream"))
    upstream.start("test", records, PROBE)
    bind = Bind(free_port(), tmp_path_factory.mktemp("rpz-bind"))
    unbound = UnboundRpz(free_port(), tmp_path_factory.mktemp("rpz-unbound"))
    gate: Dnsgate | None = None
    try:
        bind.start(upstream.port, zones, PROBE)
        unbound.start(upstream.port, zones, PROBE)
        port = free_port()
        config = f"""
listen: [{{address: 127.0.0.1, port: {port}}}]
upstreams: [{{address: 127.0.0.1, port: {upstream.port}}}]
namespaces:
  agents:
    clients: [127.0.0.0/8]
    rpz: [{zones[0][1]}, {zones[1][1]}, {zones[2][1]}]
    allow: ["*.test"]
"""
        gate = start_dnsgate(config, tmp_path_factory.mktemp("rpz-dnsgate"), port, probe=PROBE)
        yield Resolvers(bind, unbound, gate)
    finally:
        if gate is not None:
            gate.stop()
        unbound.stop()
        bind.stop()
        upstream.stop()


def test_dnsgate_answers_as_bind_does(resolvers: Resolvers) -> None:
    gate_agrees = unbound_agrees = 0
    differences = []
    unbound_gone = ""
    for question in RANDOM_QUESTIONS + QUESTIONS:
        bind = outcome(resolvers.bind.port, *question)
        gate = outcome(resolvers.dnsgate.port, *question)
        proc = resolvers.unbound.proc
        if proc is None or proc.poll() is not None:
            unbound = Outcome("unreachable: exited", False, ())  # asking a dead port would only time out
        else:
            unbound = outcome(resolvers.unbound.port, *question)
        gate_agrees += gate == bind
        unbound_agrees += unbound == bind
        if unbound.rcode.startswith("unreachable") and not unbound_gone:
            unbound_gone = f" (Unbound stopped answering at {' '.join(map(str, question))})"
        if gate != bind and question not in KNOWN_DIFFERENCES:
            differences.append(f"{' '.join(map(str, question))}\n  BIND    {bind}\n  dnsgate {gate}")
        if question in KNOWN_DIFFERENCES:
            assert gate != bind, f"{question} now agrees with BIND: take it out of KNOWN_DIFFERENCES"
    total = len(QUESTIONS) + len(RANDOM_QUESTIONS)
    print(f"\nRPZ differential: dnsgate agrees with BIND on {gate_agrees}/{total}; "
          f"Unbound agrees with BIND on {unbound_agrees}/{total}{unbound_gone}")
    assert not differences, "\n".join(differences)


def test_unsupported_triggers_are_logged_with_file_and_line(resolvers: Resolvers) -> None:
    stderr = (resolvers.dnsgate.config_path.parent / "dnsgate.stderr").read_text()
    first = ZONES[0][1]
    lines = first.read_text().splitlines()
    for trigger in ("32.77.113.0.203.rpz-ip", "ns.evil.test.rpz-nsdname"):
        number = next(i for i, line in enumerate(lines, 1) if line.startswith(trigger))
        assert f"{first}:{number}: rpz: {trigger}:" in stderr
