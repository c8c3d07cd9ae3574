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

from resolver import config as config_mod
from resolver.offline.declared import (
    NotAName,
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
        "telemetry.example.org",  # exportTo absent: every namespace
    }
    # exportTo names "research": the entries go there too
    assert set(decl.entries("research")) == {"*.inference.example.net", "models.example.net", "telemetry.example.org"}
    assert decl.entries("istio-system") == ("telemetry.example.org",)
    assert skipped(decl, "billing.legacy.example.com") == ["exportTo '~': visible to no namespace"]
    sources = decl.allow["agents"]["api.github.com"]
    assert [(s.kind, s.name) for s in sources] == [("ServiceEntry", "github-api")]


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
