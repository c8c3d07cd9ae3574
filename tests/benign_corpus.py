"""A realistic, seeded benign day of DNS traffic: the shapes that fool naive rules.

``benign_day()`` returns ``(ts, client, qname_wire, qtype)`` tuples sorted by
time: Kubernetes ndots:5 search expansion, CDN and cloud names with random
looking labels, mail (DKIM/DMARC TXT, DNSBL), ACME challenges, reverse
lookups, telemetry, typos and browser-style random probes. ``rcode_for`` says
how a resolver would answer each name, so tests can feed NXDOMAIN ratios.
"""

from __future__ import annotations

import random
import string
import uuid

import dns.name

A, NS, CNAME, MX, TXT, AAAA, SRV, PTR = 1, 2, 5, 15, 16, 28, 33, 12

_POPULAR = [
    "api.github.com", "github.com", "objects.githubusercontent.com", "pypi.org",
    "files.pythonhosted.org", "registry-1.docker.io", "auth.docker.io",
    "production.cloudflare.docker.com", "storage.googleapis.com", "oauth2.googleapis.com",
    "api.openai.com", "api.anthropic.com", "huggingface.co", "cdn-lfs.huggingface.co",
    "sts.us-east-1.amazonaws.com", "ec2.us-west-2.amazonaws.com", "s3.amazonaws.com",
    "dynamodb.eu-west-1.amazonaws.com", "login.microsoftonline.com", "graph.microsoft.com",
    "management.azure.com", "www.google.com", "time.google.com", "0.pool.ntp.org",
    "1.pool.ntp.org", "deb.debian.org", "security.debian.org", "archive.ubuntu.com",
    "http-intake.logs.datadoghq.com", "api.datadoghq.com", "hooks.slack.com",
    "registry.npmjs.org", "proxy.golang.org", "sum.golang.org", "crates.io",
    "static.crates.io", "index.crates.io", "quay.io", "gcr.io", "ghcr.io",
    "pkg-containers.githubusercontent.com", "api.stripe.com", "www.wikipedia.org",
]
_SEARCH = ["{ns}.svc.cluster.local", "svc.cluster.local", "cluster.local",
           "us-east-1.compute.internal", "c.my-project-123.internal"]
_NAMESPACES = ["agents", "ci", "web", "data"]
_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2", "eu-central-1"]
_WORDS = ("alpha beta gamma delta orders billing search users catalog checkout "
          "payments inventory shipping reports metrics auth gateway frontend backend "
          "worker queue cache media images video assets static docs status").split()


_ALNUM = string.ascii_lowercase + string.digits
_DNSBLS = ["zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org"]


def _rand(rng: random.Random, n: int, alphabet: str = _ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def wire(name: str) -> bytes:
    """Lowercased uncompressed wire format of a presentation name."""
    return dns.name.from_text(name).to_wire().lower()


def _pools(rng: random.Random) -> dict[str, list[str]]:
    hexd = "0123456789abcdef"
    return {
        "cloudfront": [f"d{_rand(rng, 13)}.cloudfront.net" for _ in range(60)],
        "akamai": [f"e{rng.randint(1000, 99999)}.{rng.choice(['dscb', 'dscx', 'a', 'b'])}"
                   f".akamaiedge.net" for _ in range(800)],
        "akamai_net": [f"a{rng.randint(100, 9999)}.dscr.akamai.net" for _ in range(300)],
        "elb": [f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{rng.randint(10**9, 10**10 - 1)}"
                f".{rng.choice(_REGIONS)}.elb.amazonaws.com" for _ in range(40)],
        "lambda": [f"{_rand(rng, 32)}.lambda-url.{rng.choice(_REGIONS)}.on.aws"
                   for _ in range(20)],
        "iot": [f"{_rand(rng, 14)}-ats.iot.{rng.choice(_REGIONS)}.amazonaws.com"
                for _ in range(5)],
        "opinsights": [f"{uuid.UUID(int=rng.getrandbits(128))}.ods.opinsights.azure.com"
                       for _ in range(4)],
        "run": [f"{rng.choice(_WORDS)}-{_rand(rng, 10)}-uc.a.run.app" for _ in range(30)],
        "azurefd": [f"{rng.choice(_WORDS)}-{_rand(rng, 16, hexd)}.z01.azurefd.net"
                    for _ in range(20)],
        "googlevideo": [f"r{rng.randint(1, 20)}---sn-{_rand(rng, 8)}.googlevideo.com"
                        for _ in range(300)],
        "s3": [f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{rng.randint(1, 999)}"
               f".s3.{rng.choice(_REGIONS)}.amazonaws.com" for _ in range(50)],
        "blob": [f"{rng.choice(_WORDS)}{_rand(rng, 8)}.blob.core.windows.net" for _ in range(30)],
        "sentry": [f"o{rng.randint(10**5, 10**7)}.ingest.sentry.io" for _ in range(5)],
        "apigw": [f"{_rand(rng, 10)}.execute-api.{rng.choice(_REGIONS)}.amazonaws.com"
                  for _ in range(15)],
        "senders": [f"{rng.choice(_WORDS)}{rng.choice(_WORDS)}{rng.randint(1, 999)}."
                    f"{rng.choice(['com', 'net', 'org', 'co.uk', 'de', 'io'])}"
                    for _ in range(2500)],
        "corp": [f"{rng.choice(_WORDS)}-{rng.randint(1, 40):02d}.corp.example.com"
                 for _ in range(300)],
    }


def _reverse_v4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4)) + ".in-addr.arpa"


def _reverse_v6(rng: random.Random) -> str:
    return ".".join(rng.choice("0123456789abcdef") for _ in range(32)) + ".ip6.arpa"


def benign_day(seed: int = 7, queries: int = 120_000, start: float = 1_795_300_000.0
               ) -> list[tuple[float, str, bytes, int]]:
    """A mixed benign day: ``queries`` lookups from ~40 clients in 4 namespaces."""
    rng = random.Random(seed)
    pools = _pools(rng)
    clients = [f"10.{i // 10}.{i % 10}.{rng.randint(2, 250)}" for i in range(40)]
    client_ns = {c: _NAMESPACES[i % len(_NAMESPACES)] for i, c in enumerate(clients)}
    mail_server, browser, crawler = clients[0], clients[1], clients[2]
    out: list[tuple[float, str, bytes, int]] = []

    def emit(ts: float, client: str, name: str, qtype: int) -> None:
        out.append((ts, client, wire(name), qtype))

    def k8s_lookup(ts: float, client: str, name: str) -> None:
        # ndots:5: every name with fewer than 5 dots walks the search path first.
        if name.count(".") < 5:
            for suffix in _SEARCH:
                for qtype in (A, AAAA):
                    emit(ts, client, f"{name}.{suffix.format(ns=client_ns[client])}", qtype)
        for qtype in (A, AAAA):
            emit(ts, client, name, qtype)

    while len(out) < queries:
        ts = start + rng.random() * 86400
        client = rng.choice(clients)
        roll = rng.random()
        if client == mail_server:
            sender = rng.choice(pools["senders"])
            kind = rng.random()
            if kind < 0.3:
                emit(ts, client, f"{rng.choice(['selector1', 'selector2', 'google', 's1', 'k1'])}"
                                 f"._domainkey.{sender}", TXT)
            elif kind < 0.5:
                emit(ts, client, f"_dmarc.{sender}", TXT)
            elif kind < 0.6:
                emit(ts, client, sender, TXT)  # SPF
            elif kind < 0.7:
                emit(ts, client, sender, MX)
            elif kind < 0.9:
                ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
                emit(ts, client, f"{ip}.{rng.choice(_DNSBLS)}", A)
            else:
                emit(ts, client, _reverse_v4(rng), PTR)
        elif client == browser and roll < 0.8:
            pool = rng.choice(["googlevideo", "akamai", "cloudfront", "akamai_net", "azurefd"])
            emit(ts, client, rng.choice(pools[pool]), rng.choice((A, AAAA)))
            if rng.random() < 0.02:  # Chrome's random intranet-redirect probes
                emit(ts, client, _rand(rng, rng.randint(7, 15), string.ascii_lowercase), A)
        elif client == crawler and roll < 0.7:
            site = f"{rng.choice(_WORDS)}{rng.choice(_WORDS)}{rng.randint(1, 9999)}.com"
            emit(ts, client, rng.choice(["www.", ""]) + site, A)
        elif roll < 0.45:
            k8s_lookup(ts, client, rng.choice(_POPULAR))
        elif roll < 0.55:
            k8s_lookup(ts, client, f"{rng.choice(_WORDS)}.{client_ns[client]}")
        elif roll < 0.8:
            pool = rng.choice(list(p for p in pools if p not in ("senders",)))
            k8s_lookup(ts, client, rng.choice(pools[pool]))
        elif roll < 0.85:
            emit(ts, client, _reverse_v4(rng), PTR)
            if rng.random() < 0.3:
                emit(ts, client, _reverse_v6(rng), PTR)
        elif roll < 0.87:
            emit(ts, client, f"_acme-challenge.{rng.choice(_WORDS)}.example.org", TXT)
        elif roll < 0.9:
            emit(ts, client, f"_{rng.choice(['https', 'grpc', 'ldap'])}._tcp."
                             f"{rng.choice(_WORDS)}.example.org", SRV)
        elif roll < 0.93:
            # typos and stale names: NXDOMAIN from the real internet
            emit(ts, client, f"{rng.choice(_WORDS)}{rng.choice(_WORDS)}.example.invalid", A)
        else:
            emit(ts, client, rng.choice(pools["sentry"] + pools["opinsights"] + pools["iot"]), A)
    out.sort(key=lambda row: row[0])
    return out


NXDOMAIN, NOERROR = 3, 0


def rcode_for(qname: bytes) -> int:
    """How a resolver would answer: search-path expansions and typos are NXDOMAIN."""
    text = dns.name.from_wire(qname, 0)[0].to_text(omit_final_dot=True)
    if text.endswith((".cluster.local", ".internal", ".invalid")) and not text.startswith(
        tuple(f"{w}." for w in _WORDS)
    ):
        return NXDOMAIN
    if "." not in text:
        return NXDOMAIN
    return NOERROR


def client_namespace(client: str) -> str:
    """Namespace a benign client belongs to (stable for the seeded clients)."""
    _, tens, units, _ = client.split(".")
    return _NAMESPACES[(int(tens) * 10 + int(units)) % len(_NAMESPACES)]
