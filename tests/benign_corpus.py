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
    "api.github.com", "github.com", "objects.githubusercontent.com", "pkgidx.example",
    "files.pkghost.example", "registry-1.images.example", "auth.images.example",
    "production.cloudflare.images-cdn.example", "storage.googleapis.com", "oauth2.googleapis.com",
    "api.openai.com", "api.anthropic.com", "huggingface.co", "cdn-lfs.huggingface.co",
    "sts.us-east-1.amazonaws.com", "ec2.us-west-2.amazonaws.com", "s3.amazonaws.com",
    "dynamodb.eu-west-1.amazonaws.com", "login.microsoftonline.com", "graph.microsoft.com",
    "management.azure.com", "www.google.com", "time.google.com", "0.pool.ntp.org",
    "1.pool.ntp.org", "deb.distro.example", "security.distro.example", "archive.distro-two.example",
    "http-intake.logs.datadoghq.com", "api.datadoghq.com", "hooks.slack.com",
    "registry.jspkgs.example", "proxy.gomods.example", "sum.gomods.example", "crates.example",
    "static.crates.example", "index.crates.example", "containers.example", "gcr.example", "ghcr.example",
    "release-assets.githubusercontent.com", "api.stripe.com", "www.wikipedia.org",
]
_SEARCH = ["{ns}.svc.cluster.local", "svc.cluster.local", "cluster.local",
           "us-east-1.compute.internal", "c.my-project-123.internal"]
_NAMESPACES = ["agents", "ci", "web", "data"]
_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2", "eu-central-1"]
_WORDS = ["alpha", "beta", "gamma", "delta", "orders", "billing", "search", "users", "catalog", "checkout", "payments", "inventory", "shipping", "reports", "metrics", "auth", "gateway", "frontend", "backend", "worker", "queue", "cache", "media", "images", "video", "assets", "static", "docs", "status"]


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


# --- cloud shapes that look like a spread channel ----------------------------------------
# Each row: (ts, client, qname_wire, qtype, rcode). Every name here is answered NOERROR.

_TELEMETRY_PROVIDERS = (
    # (provider registrable domain, name template); {id} a per-query unique ID
    ("microsoft.com", "{id}.events.data.microsoft.com"),
    ("azure.com", "{id}.ingest.monitor.azure.com"),
    ("googleapis.com", "{id}.firebaselogging-pa.googleapis.com"),
    ("browser-intake-datadoghq.com", "{id}.rum.browser-intake-datadoghq.com"),
    ("newrelic.com", "{id}.bam.nr-data.newrelic.com"),
    ("segment.io", "{id}.api.segment.io"),
)


def _unique_id(rng: random.Random, style: int) -> str:
    if style == 0:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if style == 1:
        return f"{rng.getrandbits(32):08x}"
    if style == 2:
        return f"{rng.getrandbits(32):08x}-{rng.getrandbits(64):016x}"
    return f"{rng.getrandbits(32):08x}.{rng.choice(_REGIONS)}"


def sdk_telemetry(seed: int = 13, start: float = 1_795_300_000.0, clients: int = 40,
                  hours: float = 2.0, per_client: tuple[int, int] = (40, 90),
                  ) -> list[tuple[float, str, bytes, int, int]]:
    """Many clients of one namespace each send a few dozen names carrying per-query unique IDs
    (GUIDs, 8-hex prefixes) to one large provider, over ``hours``; one provider per run.

    No client comes near its own budget; added up over the namespace the names carry tens of KB.
    """
    rng = random.Random(seed)
    _, template = _TELEMETRY_PROVIDERS[seed % len(_TELEMETRY_PROVIDERS)]
    style = rng.randrange(4)
    hosts = [f"10.60.{i // 200}.{i % 200 + 10}" for i in range(clients)]
    out = []
    for client in hosts:
        for _ in range(rng.randint(*per_client)):
            ts = start + rng.random() * hours * 3600
            name = template.format(id=_unique_id(rng, style))
            for qtype in (A, AAAA):
                out.append((ts + (qtype == AAAA) * 0.001, client, wire(name), qtype, NOERROR))
    out.sort(key=lambda row: row[0])
    return out


def unique_id_beacons(seed: int = 17, start: float = 1_795_300_000.0, clients: int = 12,
                      hours: float = 24.0, every: float = 2400.0,
                      ) -> list[tuple[float, str, bytes, int, int]]:
    """Per-query unique IDs under large providers, all day: a few clients, one name every
    ``every`` seconds each (device check-ins, push tokens), two providers shared by all,
    beside the SDK's collector host re-resolved every five minutes.

    Each client carries well under 1 KB/day of ID bytes: a client sending a fresh 16-byte ID
    every few minutes to one domain *is* a channel of a few KB/day, whatever its purpose."""
    rng = random.Random(seed)
    hosts = [f"10.61.{i // 200}.{i % 200 + 10}" for i in range(clients)]
    out = []
    for n, client in enumerate(hosts):
        _, template = _TELEMETRY_PROVIDERS[n % 2]
        style = n % 4
        ts = start + rng.random() * every
        while ts < start + hours * 3600:
            out.append((ts, client, wire(template.format(id=_unique_id(rng, style))), A, NOERROR))
            ts += every * rng.uniform(0.5, 1.5)
        # The SDK's ordinary traffic: its collector host, re-resolved as the TTL expires.
        collector = template.split("}.", 1)[1]
        ts = start + rng.random() * 300
        while ts < start + hours * 3600:
            for qtype in (A, AAAA):
                out.append((ts, client, wire(collector), qtype, NOERROR))
            ts += 300 * rng.uniform(0.9, 1.1)
    out.sort(key=lambda row: row[0])
    return out


def cdn_content_hashes(seed: int = 19, start: float = 1_795_300_000.0, clients: int = 30,
                       hours: float = 8.0, published_per_hour: int = 120,
                       ) -> list[tuple[float, str, bytes, int, int]]:
    """Browsers fetching content-addressed host names (``<32 hex>.<edge>.<cdn>``) from one CDN:
    a pool that grows as content is published, Zipf-like popularity, each client re-resolving
    a name after its 60 s TTL."""
    rng = random.Random(seed)
    domain = rng.choice(("fbcdn.net", "twimg.com", "gstatic.com", "shopifycdn.com"))
    pool = [f"{rng.getrandbits(128):032x}.e{rng.randint(1, 16)}.{domain}"
            for _ in range(int(published_per_hour * hours) + 200)]
    weights = [1 / (k + 1) ** 1.05 for k in range(len(pool))]
    hosts = [f"10.62.{i // 200}.{i % 200 + 10}" for i in range(clients)]
    cached: dict[tuple[str, str], float] = {}
    out = []
    t = start
    while t < start + hours * 3600:
        t += rng.expovariate(1 / 2.0)
        live = min(len(pool), 200 + int((t - start) / 3600 * published_per_hour))
        client = rng.choice(hosts)
        for name in rng.choices(pool[:live], weights[:live], k=rng.randint(1, 6)):
            if cached.get((client, name), 0.0) > t:
                continue
            cached[(client, name)] = t + 60
            for qtype in (A, AAAA):
                out.append((t, client, wire(name), qtype, NOERROR))
    out.sort(key=lambda row: row[0])
    return out


_SITE_NAMES = ("www", "cdn", "api", "static", "img", "m", "login", "assets", "fonts", "media", "app", "auth")
_SELECTORS = ("selector1", "selector2", "google", "s1", "k1", "default", "mail", "dkim")
_B32 = string.ascii_lowercase + "234567"


def first_names(seed: int = 29, start: float = 1_795_300_000.0, sites: int = 3000, senders: int = 2000,
                hours: float = 24.0, browsers: int = 1, mail_servers: int = 1, names_per_site: int = 3,
                ) -> list[tuple[float, str, bytes, int, int]]:
    """The first names of many never-seen domains, from a few clients of one namespace, over ``hours``.

    A browser visits ``sites`` sites once each and asks 1-``names_per_site`` of their ordinary
    host names (``www``, ``cdn``, ``api`` ...), A and AAAA. A mail server checks ``senders``
    sender domains once each: the DKIM key (a named selector, or a third of the time a
    32-character token of the kind a bulk-mail service publishes), ``_dmarc`` and SPF (TXT), MX.
    With the defaults each domain gets at most three never-seen names: what a channel rotating
    over domains looks like by count, but each name carries a few bytes (a token ~20), not a
    hundred. ``browsers`` and ``mail_servers`` share the sites and senders out in turn (several
    clients of the namespace each visiting its own sites, as a rotation split over clients would)."""
    rng = random.Random(seed)
    browser_hosts = ["10.63.0.10", *(f"10.63.1.{i + 10}" for i in range(browsers - 1))]
    mail_hosts = ["10.63.0.25", *(f"10.63.2.{i + 25}" for i in range(mail_servers - 1))]
    tlds = ("com", "net", "org", "io", "de", "co.uk", "fr", "nl")
    domains: set[str] = set()
    while len(domains) < sites + senders:
        domains.add(f"{rng.choice(_WORDS)}{rng.choice(_WORDS)}{rng.randint(1, 9999)}.{rng.choice(tlds)}")
    ordered = sorted(domains)
    rng.shuffle(ordered)
    out = []
    for i, site in enumerate(ordered[:sites]):
        browser = browser_hosts[i % browsers]
        ts = start + rng.random() * hours * 3600
        for host in rng.sample(_SITE_NAMES, rng.randint(1, names_per_site)):
            for qtype in (A, AAAA):
                out.append((ts, browser, wire(f"{host}.{site}"), qtype, NOERROR))
            ts += rng.uniform(0.05, 2.0)
    for i, sender in enumerate(ordered[sites:]):
        mail_server = mail_hosts[i % mail_servers]
        ts = start + rng.random() * hours * 3600
        selector = _rand(rng, 32, _B32) if rng.random() < 1 / 3 else rng.choice(_SELECTORS)
        for name, qtype in ((f"{selector}._domainkey.{sender}", TXT), (f"_dmarc.{sender}", TXT),
                            (sender, TXT), (sender, MX)):
            out.append((ts, mail_server, wire(name), qtype, NOERROR))
            ts += rng.uniform(0.01, 0.2)
    out.sort(key=lambda row: row[0])
    return out


def case_randomised(rows: list[tuple[float, str, bytes, int, int]], seed: int = 23,
                    ) -> list[tuple[float, str, bytes, int, int]]:
    """The same lookups sent through a forwarder that randomises letter case (DNS 0x20):
    every letter of every query name is upper or lower case at random."""
    rng = random.Random(seed)
    out = []
    for ts, client, qname, qtype, rcode in rows:
        flips = rng.getrandbits(len(qname))
        name = bytes(
            b - 32 if 0x61 <= b <= 0x7A and flips >> i & 1 else b for i, b in enumerate(qname)
        )
        out.append((ts, client, name, qtype, rcode))
    return out


def cloud_shapes(start: float = 1_795_300_000.0) -> dict[str, list[tuple[float, str, bytes, int, int]]]:
    """The benign cloud workloads a namespace budget mistakes for a spread channel, by name.

    Three of them also come through a case-randomising (DNS 0x20) forwarder: mixed case
    in a never-seen name is priced a bit per letter, and must not make telemetry a channel."""
    shapes = {f"sdk telemetry {i}": sdk_telemetry(seed=13 + i, start=start) for i in range(6)}
    shapes["unique-id beacons"] = unique_id_beacons(start=start)
    shapes["cdn content hashes"] = cdn_content_hashes(start=start)
    shapes["sdk telemetry 0, 0x20 case"] = case_randomised(shapes["sdk telemetry 0"])
    shapes["sdk telemetry 1, 0x20 case"] = case_randomised(shapes["sdk telemetry 1"])
    shapes["unique-id beacons, 0x20 case"] = case_randomised(shapes["unique-id beacons"])
    shapes["first names of many domains"] = first_names(start=start)
    # A site's page load asks up to six of its host names (www, static, api, cdn, img ...).
    shapes["first names of many domains, 1-6 a site"] = first_names(seed=37, start=start, names_per_site=6)
    # Six browsers and two mail servers: few enough clients that the namespace's all-domain
    # meter is judged like one client's (heuristics/spread.py, effective_clients).
    shapes["first names of many domains, 8 clients"] = first_names(
        seed=31, start=start, sites=6000, senders=2000, browsers=6, mail_servers=2)
    return shapes
