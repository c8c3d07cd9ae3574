"""`dnsgate import` and `dnsgate diff --declared`: declared egress read from every format, in-process.

The documents are in tests/data/declared/ (ServiceEntries, a Sidecar, Cilium
policies with patterns, skill manifests in YAML and JSON, a CycloneDX SBOM, a
registry map, a plain host list). Integration tests with captures of real
traffic are in tests/integration/test_declared_egress.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from heuristics import names as _names
from resolver import config as config_mod
from resolver.offline.declared import (
    Importer,
    NotAName,
    PublicSuffixWildcard,
    declared_name,
    load_declarations,
    load_registry_map,
    render,
)
from resolver.offline.diff import Observation, compare
from resolver.wire.message import NXDOMAIN, name_from_text

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "declared"
ALL = ["istio-serviceentries.yaml", "istio-sidecar.yaml", "cilium-policies.yaml", "skill-web-search.yaml",
       "skill-summarise.json", "sbom.cdx.json", "hosts.txt"]


def files(*names: str) -> list[str]:
    return [str(DATA / n) for n in names]


def skipped(decl: object, value: str) -> list[str]:
    return [s.reason for s in decl.skipped if s.value == value]  # type: ignore[attr-defined]


def test_service_entries_namespace_and_export_to() -> None:
    decl = load_declarations(files("istio-serviceentries.yaml"))
    assert set(decl.entries("agents")) == {
        "api.github.com", "uploads.github.com", "*.inference.example.net", "models.example.net",
        "telemetry.example.org",  # exportTo '*': every namespace
    }
    # exportTo names "research": the entries go there too; notebook-kernels has no exportTo: research only
    assert set(decl.entries("research")) == {"*.inference.example.net", "models.example.net", "telemetry.example.org",
                                             "kernels.notebooks.example.org"}
    assert decl.entries("istio-system") == ("telemetry.example.org",)
    assert skipped(decl, "billing.legacy.example.com") == ["exportTo '~': visible to no namespace"]
    sources = decl.allow["agents"]["api.github.com"]
    assert [(s.kind, s.name) for s in sources] == [("ServiceEntry", "github-api")]
    # Every export beyond the object's own namespace is listed for review, explicit or not.
    assert [line.split(": ", 1)[1] for line in decl.exports] == [
        "ServiceEntry model-endpoints (namespace agents): exportTo '.', 'research': namespace(s) research",
        "ServiceEntry cluster-telemetry (namespace istio-system): exportTo '*': every namespace of this output",
    ]


def test_sidecar_hosts_go_to_the_sidecar_namespace() -> None:
    decl = load_declarations(files("istio-sidecar.yaml"))
    assert set(decl.entries("agents")) == {
        "telemetry.example.org", "api.github.com", "vector-db.agents.svc.cluster.local", "*.papers.example.edu",
    }
    for value in ("./*", "*/*"):
        assert skipped(decl, value)[0].startswith("not a name, skipped")
    assert skipped(decl, "~/*") == ["'~/' imports nothing"]


def test_cilium_patterns_translated_or_reported() -> None:
    decl = load_declarations(files("cilium-policies.yaml"), namespace="agents")
    entries = set(decl.entries("agents"))
    assert {"api.github.com", "*.blob.storage.example.com", "*.cdn.example.net"} <= entries
    # the clusterwide policy has no namespace: --namespace decides
    assert {"time.example.org", "packages.mirror.example.com"} <= entries
    assert "widened" in decl.notes[("agents", "*.blob.storage.example.com")][0]
    assert ("agents", "*.cdn.example.net") not in decl.notes  # '**.' translates exactly
    assert "no dnsgate equivalent" in skipped(decl, "api-*.example.org")[0]
    assert "matches every name" in skipped(decl, "*")[0]


def test_skill_manifests_yaml_and_nested_json() -> None:
    decl = load_declarations(files("skill-web-search.yaml", "skill-summarise.json"))
    assert set(decl.entries("default")) == {
        "search.example.com", "api.example.com", "xn--bcher-kva.example", "news.example.org",
        "docs.example.org", "translate.example.net",
    }
    assert skipped(decl, "https://198.51.100.7/metrics") == ["an IP address, not a name"]
    assert skipped(decl, "10.0.0.7") == ["an IP address, not a name"]
    assert "port 8443 skipped" in skipped(decl, "news.example.org:8443")[0]
    assert skipped(decl, '{"port": 443}') == ["an object without host or url"]
    names = {s.name for e in decl.allow["default"].values() for s in e}
    assert names == {"web-search", "summarise"}


def test_cyclonedx_urls_purl_qualifiers_and_registry_map() -> None:
    decl = load_declarations(files("sbom.cdx.json"), namespace="build")
    plain = set(decl.entries("build"))
    assert plain == {
        "agents.example.com", "git.example.org", "repo.example.org", "downloads.example.com",
        "tokenizer.docs.example.net", "telemetry.example.net",
    }
    reasons = [s.reason for s in decl.skipped]
    assert any("purl type 'npm'" in r for r in reasons)
    assert any("purl type 'pypi'" in r for r in reasons)
    assert skipped(decl, "https://[2001:db8::10]/model-cli-1.2.tar.gz") == ["an IP address, not a name"]
    mapped = load_declarations(files("sbom.cdx.json"), namespace="build",
                               registry_map=load_registry_map(str(DATA / "registry-map.yaml")))
    assert set(mapped.entries("build")) - plain == {
        "pypi-mirror.corp.example", "files.pypi-mirror.corp.example", "npm-mirror.corp.example",
    }
    assert not any("--registry-map" in s.reason for s in mapped.skipped)


def test_plain_list_normalised() -> None:
    decl = load_declarations(files("hosts.txt"))
    assert set(decl.entries("default")) == {
        "api.github.com", "objects.githubusercontent.com", "*.s3.example.com", "example.net",
    }
    assert skipped(decl, "192.0.2.1") == ["an IP address, not a name"]


def test_duplicates_merged_keeping_every_source() -> None:
    decl = load_declarations(files(*ALL), namespace="agents")
    kinds = {s.kind for s in decl.allow["agents"]["api.github.com"]}
    assert kinds == {"ServiceEntry", "Sidecar", "CiliumNetworkPolicy", "list"}
    text = render(decl)
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("- 'api.github.com'"))
    for kind in ("ServiceEntry github-api", "Sidecar agents-egress", "CiliumNetworkPolicy agents-fqdn-egress",
                 "list line 2"):
        assert kind in line


def test_rendered_fragment_passes_check_config(tmp_path: Path) -> None:
    decl = load_declarations(files(*ALL), namespace="agents",
                             registry_map=load_registry_map(str(DATA / "registry-map.yaml")))
    out = tmp_path / "declared.yaml"
    out.write_text("upstreams: [{address: 127.0.0.1, port: 5400}]\n" + render(decl))
    config = config_mod.load(out)
    assert set(config.namespaces) == {"agents", "research", "istio-system"}
    assert "xn--bcher-kva.example" in config.namespaces["agents"].allow
    assert yaml.safe_load(out.read_text())["namespaces"]["research"]["allow"][0] == "*.inference.example.net"


@pytest.mark.parametrize(
    ("value", "entry"),
    [
        ("API.GitHub.com.", "api.github.com"),
        ("https://user:pw@Docs.Example.org:8443/x?y#z", "docs.example.org"),
        ("git@git.example.org:team/repo.git", "git.example.org"),
        ("repo.example.org/maven2", "repo.example.org"),
        ("*.Example.com", "*.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("*.octocat.github.io", "*.octocat.github.io"),  # below a public suffix: one owner's names
        ("*.www.ck", "*.www.ck"),  # the list's exception !www.ck: a registered domain
        ("*.svc.cluster.local", "*.svc.cluster.local"),
        ("com", "com"),  # an exact name allows that one name only
    ],
)
def test_declared_name_normalises(value: str, entry: str) -> None:
    assert declared_name(value)[0] == entry


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("203.0.113.9", "an IP address"),
        ("2001:db8::1", "an IP address"),
        ("http://[::1]:8080/", "an IP address"),
        ("10.0.0.0/8", "an IP prefix"),
        ("*", "matches every name"),
        ("a.*.example.com", "wildcard inside a name"),
        ("mailto:ops@example.com", "not a host name"),
        ("x" * 64 + ".example.com", "not a valid name"),
        ("", "empty"),
        ("*.com", "'com' is a public suffix"),
        ("*.CO.UK.", "'co.uk' is a public suffix"),
        ("*.github.io", "'github.io' is a public suffix"),  # the list's private section
        ("https://*.s3.amazonaws.com/bucket", "'s3.amazonaws.com' is a public suffix"),
        ("*.anything.ck", "'anything.ck' is a public suffix"),  # the list's wildcard rule *.ck
        ("*.internal", "'internal' is a public suffix"),  # one label: the default rule '*'
        ("*.рф", "'xn--p1ai' is a public suffix"),
    ],
)
def test_declared_name_refuses(value: str, reason: str) -> None:
    with pytest.raises(NotAName, match=reason):
        declared_name(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.from_regex(r"\A(https?://)?[\w.*:@\[\]/-]{1,60}\Z")))
def test_declared_name_is_an_entry_or_a_reason(value: str) -> None:
    """Any text either becomes an entry the config accepts, or a NotAName with a reason."""
    try:
        entry, _ = declared_name(value)
    except NotAName as exc:
        assert str(exc)  # noqa: PT017 - the reason is the property under test
        return
    assert config_mod._check_name("x", 1, "allow[0]", entry) == entry


def test_unrecognised_document_names_file_and_index() -> None:
    out = subprocess.run([sys.executable, "-m", "resolver.cli", "import", str(DATA / "not-a-declaration.yaml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not-a-declaration.yaml: document 2: not a recognised declaration (kind 'Deployment')" in lines[0]
    ok = subprocess.run([sys.executable, "-m", "resolver.cli", "import", "--ignore-unknown",
                         str(DATA / "not-a-declaration.yaml")],
                        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ok.returncode == 0
    assert "'ok.example.com'" in ok.stdout


def _observed(ns: str, *names: tuple[str, int, set[int]]) -> dict[str, dict[bytes, Observation]]:
    out: dict[bytes, Observation] = {}
    for text, count, rcodes in names:
        obs = Observation(name_from_text(text))
        obs.saw("10.0.0.5", 100.0, count)
        obs.rcodes = rcodes
        out[obs.qname] = obs
    return {ns: out}


def test_compare_undeclared_unused_and_search_expansions() -> None:
    decl = load_declarations(files("istio-serviceentries.yaml"))
    observed = _observed(
        "agents",
        ("api.github.com", 5, {0}),
        ("eu.inference.example.net", 2, {0}),
        ("api.github.com.agents.svc.cluster.local", 3, {NXDOMAIN}),  # search path: never undeclared
        ("exfil.example.biz", 4, {0}),
    )
    by_ns = {d.namespace: d for d in compare(decl, observed)}
    agents = by_ns["agents"]
    assert [o.qname for o in agents.undeclared] == [name_from_text("exfil.example.biz")]
    assert agents.search_expansions == 1
    assert {e for e, _ in agents.unused} == {"uploads.github.com", "models.example.net", "telemetry.example.org"}
    assert by_ns["research"].undeclared == []  # declared there, nothing observed


def test_service_entry_without_hosts_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "se.yaml"
    path.write_text("kind: ServiceEntry\nmetadata: {name: empty, namespace: agents}\nspec: {addresses: [10.1.2.3]}\n")
    decl = load_declarations([str(path)])
    assert decl.allow == {}
    assert [(s.source.name, s.reason) for s in decl.skipped] == [("empty", "no hosts declared")]


# --- the security review's reproduction: exportTo widening, wildcards over public suffixes ---

REVIEW = DATA / "review-team-namespace.yaml"


def test_service_entry_without_export_to_stays_in_its_namespace() -> None:
    """A ServiceEntry a team writes in its own namespace, without exportTo, does not reach
    another namespace's declared egress unless --mesh-export-to says the mesh exports it."""
    path = REVIEW
    decl = load_declarations([str(path)])
    assert decl.entries("prod-agents") == ("api.internal.example",)
    assert decl.entries("sandbox") == ("paste.evil-c2.net",)
    assert "default" not in decl.allow
    assert decl.exports == []
    assert decl.assumed == [f"{path}: ServiceEntry my-tools (namespace sandbox): no exportTo: declared for namespace "
                            "sandbox only, not every namespace as Istio's default would (--mesh-export-to '*' if "
                            "your mesh keeps that default)"]
    assert decl.assumed[0] in decl.warnings
    assert "# declared for their own namespace only:" in render(decl)
    # Istio's default, asked for: every namespace, reported for review.
    mesh = load_declarations([str(path)], mesh_export_to=("*",))
    assert "paste.evil-c2.net" in mesh.entries("prod-agents")
    assert mesh.assumed == []
    assert mesh.exports == [f"{path}: ServiceEntry my-tools (namespace sandbox): no exportTo, --mesh-export-to '*': "
                            "every namespace of this output"]
    assert "# declared beyond their own namespace (review these):" in render(mesh)
    assert mesh.notes[("prod-agents", "paste.evil-c2.net")] == ["no exportTo, --mesh-export-to '*'"]
    # A mesh default naming a namespace: that namespace and no other.
    named = load_declarations([str(path)], mesh_export_to=(".", "prod-agents"))
    assert set(named.namespaces()) == {"sandbox", "prod-agents"}
    assert "namespace(s) prod-agents" in named.exports[0]


def test_public_suffix_wildcards_are_skipped_with_a_warning() -> None:
    path = REVIEW
    decl = load_declarations([str(path)])
    every = {e for ns in decl.namespaces() for e in decl.entries(ns)}
    assert every == {"paste.evil-c2.net", "api.internal.example"}
    assert skipped(decl, "*.com") == ["'com' is a public suffix: the wildcard would allow every domain registered "
                                      "under it"]
    assert skipped(decl, "**.co.uk")  # the pattern as the policy wrote it
    assert skipped(decl, "*.ngrok-free.app")  # ngrok-free.app is on the list's private section
    assert [w.split(": ", 1)[1] for w in decl.warnings if w not in decl.assumed] == [
        "ServiceEntry my-tools: *.ngrok-free.app: skipped: 'ngrok-free.app' is a public suffix: the wildcard would "
        "allow every domain registered under it",
        "CiliumNetworkPolicy web: *.com: skipped: 'com' is a public suffix: the wildcard would allow every domain "
        "registered under it",
        "CiliumNetworkPolicy web: **.co.uk: skipped: 'co.uk' is a public suffix: the wildcard would allow every "
        "domain registered under it",
    ]


def test_import_prints_one_line_per_warning_and_export() -> None:
    path = REVIEW
    run = [sys.executable, "-m", "resolver.cli", "import", str(path)]
    out = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == (f"dnsgate import: warning: {path}: ServiceEntry my-tools (namespace sandbox): no exportTo: "
                        "declared for namespace sandbox only, not every namespace as Istio's default would "
                        "(--mesh-export-to '*' if your mesh keeps that default)")
    assert lines[2] == (f"dnsgate import: warning: {path}: CiliumNetworkPolicy web: *.com: skipped: 'com' is a "
                        "public suffix: the wildcard would allow every domain registered under it")
    assert lines[-1] == "dnsgate import: 2 allow entries in 2 namespace(s), 3 value(s) skipped"
    assert len(lines) == 5
    assert yaml.safe_load(out.stdout)["namespaces"]["prod-agents"]["allow"] == ["api.internal.example"]
    mesh = subprocess.run([*run, "--mesh-export-to", "*"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert mesh.returncode == 0, mesh.stderr
    assert mesh.stderr.splitlines()[-2:] == [
        "dnsgate import: 4 allow entries in 3 namespace(s), 3 value(s) skipped, 1 ServiceEntry(s) declared beyond "
        "their namespace",
        f"dnsgate import: declared beyond its namespace: {path}: ServiceEntry my-tools (namespace sandbox): "
        "no exportTo, --mesh-export-to '*': every namespace of this output",
    ]
    for bad, says in (("Prod_Agents", "'Prod_Agents' is not '.', '*', '~' or a namespace name"),
                      ("~,.", "'~' (no namespace) cannot be combined with other values")):
        wrong = subprocess.run([*run, "--mesh-export-to", bad], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert wrong.returncode == 2
        assert wrong.stdout == ""
        assert wrong.stderr.splitlines() == [f"dnsgate import: --mesh-export-to: {says}"]


# Every importer, one public-suffix wildcard each: skipped and warned about, whoever declared it.
_KINDS = {
    "ServiceEntry": lambda v: {"kind": "ServiceEntry", "metadata": {"name": "o", "namespace": "n"},
                               "spec": {"hosts": [v], "exportTo": ["*"]}},
    "Sidecar": lambda v: {"kind": "Sidecar", "metadata": {"name": "o", "namespace": "n"},
                          "spec": {"egress": [{"hosts": ["*/" + v]}]}},
    "CiliumNetworkPolicy": lambda v: {"kind": "CiliumNetworkPolicy", "metadata": {"name": "o", "namespace": "n"},
                                      "spec": {"egress": [{"toFQDNs": [{"matchPattern": v}]}]}},
    "CiliumClusterwideNetworkPolicy": lambda v: {"kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "o"},
                                                 "specs": [{"egress": [{"toFQDNs": [{"matchPattern": v}]}]}]},
    "skill manifest": lambda v: {"name": "o", "egressRequirements": [v, {"url": f"https://{v}/api"}]},
    "CycloneDX": lambda v: {"bomFormat": "CycloneDX", "components": [
        {"name": "o", "externalReferences": [{"type": "website", "url": f"https://{v}:8443/x"}]}]},
}


def _public_suffixes() -> list[str]:
    """Every ASCII public suffix of the list the resolver loads, wildcard rules with a label in front."""
    out = [".".join(p.decode() for p in rule) for rule in _names._EXACT]
    out += ["x1." + ".".join(p.decode() for p in rule) for rule in _names._WILD
            if (b"x1", *rule) not in _names._EXCEPTION]
    return sorted(s for s in out if s.isascii())


_SUFFIXES = _public_suffixes()


def _respelled(text: str, upper: list[bool], dot: bool) -> str:
    return "".join(c.upper() if u else c for c, u in zip(text, upper * len(text), strict=False)) + ("." if dot else "")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_SUFFIXES), st.sampled_from(sorted(_KINDS)), st.sampled_from(["*.", "**."]),
       st.lists(st.booleans(), min_size=1, max_size=5), st.booleans())
def test_no_importer_declares_a_wildcard_over_a_public_suffix(
        suffix: str, kind: str, star: str, upper: list[bool], dot: bool) -> None:
    """Whatever the list entry (its private section included), spelling (case, trailing dot,
    Cilium's ``**.``, a URL, a port) and importer: no allow entry, a skip and a warning naming
    the file and the object."""
    value = (star if kind.startswith("Cilium") else "*.") + _respelled(suffix, upper, dot)
    importer = Importer("n")
    importer._document("decl.yaml", 1, _KINDS[kind](value))
    decl = importer.finish()
    assert decl.allow == {}, (value, decl.allow)
    assert decl.skipped
    assert decl.warnings
    assert all(w.startswith("decl.yaml: ") and " o" in w and "is a public suffix" in w for w in decl.warnings)


_PSL = __import__("publicsuffixlist").PublicSuffixList()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["www", "a", "x1", "s3", "co", "com", "uk", "jp", "kobe", "city", "github", "io",
                                 "amazonaws", "blogspot", "ck", "appspot", "eu-west-1", "compute"]),
                max_size=4),
       st.sampled_from(_SUFFIXES))
def test_a_declared_wildcard_is_never_over_a_public_suffix(front: list[str], suffix: str) -> None:
    """Wildcards made of real list labels: the entry, when there is one, sits below a registrable
    domain by the publicsuffixlist package's own reckoning (an independent implementation)."""
    value = "*." + ".".join([*front, suffix])
    try:
        entry, _ = declared_name(value)
    except PublicSuffixWildcard:
        assert _PSL.is_public(value[2:].lower())
        return
    except NotAName:
        return
    assert not _PSL.is_public(entry[2:]), entry


_NS = ["a", "b", "c", "d"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_NS[:3]),
                          st.one_of(st.none(), st.lists(st.sampled_from([".", "*", "~", *_NS]), max_size=3))),
                min_size=1, max_size=6))
def test_a_service_entry_reaches_another_namespace_only_when_it_says_so(
        objects: list[tuple[str, list[str] | None]]) -> None:
    """Without --mesh-export-to, a ServiceEntry's host lands in a namespace other than its own only
    when its exportTo names that namespace or '*'; every such object is listed for review, and every
    object without exportTo is listed as assumed."""
    importer = Importer("a")
    for i, (own, export) in enumerate(objects):
        spec: dict[str, object] = {"hosts": [f"h{i}.example.com"]}
        if export is not None:
            spec["exportTo"] = export
        importer._document("se.yaml", i + 1, {"kind": "ServiceEntry", "metadata": {"name": f"o{i}", "namespace": own},
                                              "spec": spec})
    decl = importer.finish()
    for ns in decl.namespaces():
        for entry in decl.entries(ns):
            i = int(entry.split(".")[0][1:])
            own, export = objects[i]
            if ns != own:
                assert export, (ns, objects[i])
                assert ns in export or "*" in export, (ns, objects[i])
                assert any(line.startswith(f"se.yaml: ServiceEntry o{i} ") for line in decl.exports)
    assumed = {line.split(": ")[1].split(" ")[1] for line in decl.assumed}
    assert assumed == {f"o{i}" for i, (_, export) in enumerate(objects) if not export}
