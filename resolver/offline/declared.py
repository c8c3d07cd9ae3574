"""``dnsgate import``: allowlists from what platform teams already declared.

Declared egress is read from the documents that say where a workload may go:

- Istio ``ServiceEntry`` (``spec.hosts``, ``spec.exportTo``) and ``Sidecar``
  (``spec.egress[].hosts`` in ``namespace/host`` form);
- Cilium ``CiliumNetworkPolicy`` / ``CiliumClusterwideNetworkPolicy``
  (``toFQDNs[].matchName`` and ``matchPattern``);
- skill manifests (an ``egressRequirements`` list, top level or nested, of host
  names, URLs, or objects with ``host`` or ``url``);
- CycloneDX JSON SBOMs (``externalReferences`` URLs, service ``endpoints``,
  purl ``repository_url`` / ``download_url`` qualifiers, and purl types mapped to
  hosts by a ``--registry-map`` file);
- plain text lists, one host per line, ``#`` comments.

Every value becomes an allow entry in dnsgate's syntax (an exact name or
``*.domain``) or a :class:`Skipped` record that says why it could not be one.
The result renders as a config fragment that ``dnsgate check-config`` accepts,
each entry commented with every source that declared it.

Nothing widens a namespace's egress silently: a ServiceEntry without ``exportTo``
is declared for its own namespace only (Istio's default, every namespace, only
with ``--mesh-export-to '*'``), exports beyond a namespace are listed, and a
wildcard over a public suffix (``*.com``, ``*.github.io``) is skipped, with a
one-line warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dns.exception
import dns.name
import yaml

from heuristics.names import is_public_suffix, wire_of

__all__ = [
    "Declaration",
    "DeclarationError",
    "PublicSuffixWildcard",
    "Skipped",
    "Source",
    "declared_name",
    "load_declarations",
    "load_registry_map",
    "parse_mesh_export_to",
    "render",
]

DEFAULT_NAMESPACE = "default"
ISTIO_KINDS = ("ServiceEntry", "Sidecar")
CILIUM_KINDS = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a Kubernetes namespace (RFC 1123 label)
MAX_DEPTH = 32  # nesting searched for egressRequirements / externalReferences


class DeclarationError(ValueError):
    """A file that is not a declaration dnsgate knows, located by file and document index."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a declared value came from: the file, the kind of document, the object's name."""

    file: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind} {self.name}".rstrip()


@dataclass(frozen=True, slots=True)
class Skipped:
    """A declared value that is not an allow entry, and why."""

    source: Source
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {_printable(self.value)!s}: {self.reason}"


class NotAName(ValueError):
    """A declared value that cannot become an allow entry; the message is the reason."""


class PublicSuffixWildcard(NotAName):
    """A wildcard over a public suffix (``*.com``, ``*.github.io``): skipped, and warned about."""


@dataclass(slots=True)
class Declaration:
    """Allow entries per namespace, each with every source that declared it."""

    allow: dict[str, dict[str, list[Source]]] = field(default_factory=dict)
    notes: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # One line each, printed on stderr by `import` and `diff`: what was assumed, what was refused.
    warnings: list[str] = field(default_factory=list)
    # ServiceEntries declared for no namespace but their own because they had no exportTo.
    assumed: list[str] = field(default_factory=list)
    # ServiceEntries whose hosts were declared for namespaces other than their own.
    exports: list[str] = field(default_factory=list)

    def add(self, namespace: str, entry: str, source: Source, note: str = "") -> None:
        sources = self.allow.setdefault(namespace, {}).setdefault(entry, [])
        if source not in sources:
            sources.append(source)
        if note:
            notes = self.notes.setdefault((namespace, entry), [])
            if note not in notes:
                notes.append(note)

    def skip(self, source: Source, value: Any, reason: str) -> None:
        self.skipped.append(Skipped(source, str(value), reason))

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def entries(self, namespace: str) -> tuple[str, ...]:
        """The allow entries of one namespace, sorted by domain (reversed labels)."""
        return tuple(sorted(self.allow.get(namespace, {}), key=entry_sort_key))

    def namespaces(self) -> list[str]:
        return sorted(self.allow)


def entry_sort_key(entry: str) -> tuple[tuple[str, ...], str]:
    body = entry[2:] if entry.startswith("*.") else entry
    return tuple(reversed(body.split("."))), entry


def _printable(text: str) -> str:
    """Text safe inside a one-line YAML comment or an error message."""
    out = []
    for ch in text:
        out.append(ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
    return "".join(out)


# --- one declared value -> one allow entry -------------------------------------------------


def _split_host(value: str) -> tuple[str, str | None, list[str]]:
    """(host, port, notes) of a host name, ``host:port``, URL or ``user@host:path``."""
    text = value.strip()
    if "://" in text:
        try:
            parts = urlsplit(text)
            host = parts.hostname
            url_port = parts.port
        except ValueError as exc:
            raise NotAName(f"not a valid URL ({exc})") from None
        if not host:
            raise NotAName("a URL without a host")
        if parts.netloc.rpartition("@")[2].startswith("["):
            raise NotAName("an IP address, not a name")
        return host, str(url_port) if url_port is not None else None, []
    if text.startswith("["):
        raise NotAName("an IP address, not a name")
    if "@" in text and ":" in text.partition("@")[2]:  # scp-like git remote: git@host:org/repo.git
        text = text.partition("@")[2].partition(":")[0]
    if "/" in text:  # host/path without a scheme (purl repository_url is often written so)
        text = text.partition("/")[0]
    host, colon, tail = text.rpartition(":")
    if colon and tail.isdigit() and host and ":" not in host:
        return host, tail, []
    return text, None, []


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_prefix(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def declared_name(value: Any) -> tuple[str, list[str]]:
    """The dnsgate allow entry for one declared host, name, URL or wildcard.

    Returns (entry, notes); raises :class:`NotAName` with the reason when the
    value cannot be an entry (an IP address, ``*`` alone, an inner wildcard, ...).
    Names are lower case, without the trailing dot, IDNA-encoded when Unicode.
    """
    if not isinstance(value, str):
        raise NotAName(f"not a host name ({type(value).__name__})")
    if not value.strip():
        raise NotAName("empty")
    host, port, notes = _split_host(value)
    if port is not None:
        notes.append(f"port {port} skipped (ports are not names); the host is kept")
    if "/" in value and "://" not in value and _is_prefix(value.strip()):
        raise NotAName("an IP prefix, not a name")
    if _is_ip(host.strip("[]")):
        raise NotAName("an IP address, not a name")
    host = host.rstrip(".")
    if host in ("*", ""):
        raise NotAName("not a name: matches every name")
    wildcard = host.startswith("*.")
    body = host[2:] if wildcard else host
    if "*" in body:
        raise NotAName("a wildcard inside a name has no dnsgate equivalent (only a leading '*.' has)")
    try:
        if body.isascii():
            name = dns.name.from_text(body)
        else:
            name = dns.name.from_unicode(body, idna_codec=dns.name.IDNA_2008_Practical)
    except dns.exception.DNSException as exc:
        raise NotAName(f"not a valid name ({exc})") from None
    text = name.to_text(omit_final_dot=True).lower()
    if text in ("", "@", "."):
        raise NotAName("not a name: the root")
    if not HOST_NAME.fullmatch(text):
        raise NotAName("not a host name: only letters, digits, '-' and '_' belong in its labels")
    if wildcard and is_public_suffix(wire_of(text)):
        raise PublicSuffixWildcard(
            f"'{text}' is a public suffix: the wildcard would allow every domain registered under it")
    return ("*." + text if wildcard else text), notes


# --- documents -----------------------------------------------------------------------------


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based document index, parsed document) of a YAML, JSON or plain-text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeclarationError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DeclarationError(f"{path}: not UTF-8 text") from None
    if _plain_list(path, text):
        yield 1, _PlainList(text)
        return
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith(("{", "[")):
        try:
            yield 1, json.loads(text)
            return
        except json.JSONDecodeError as exc:
            if path.suffix.lower() == ".json":
                raise DeclarationError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    try:
        yield from enumerate(yaml.safe_load_all(text), start=1)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise DeclarationError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


class _PlainList(str):
    """The text of a one-host-per-line file."""


def _plain_list(path: Path, text: str) -> bool:
    if path.suffix.lower() in (".txt", ".list"):
        return True
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        return False
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    # One token per line, none of YAML's or JSON's structure: a list of hosts.
    return bool(lines) and all(
        len(ln.split()) == 1 and not ln.startswith(("-", "{", "[", "---")) and not ln.endswith(":")
        for ln in lines
    )


def _name_of(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):
        return str(meta["name"])
    for key in ("name", "id"):
        if isinstance(doc.get(key), str):
            return str(doc[key])
    return "(unnamed)"


def _namespace_of(doc: dict[str, Any], default: str) -> str:
    meta = doc.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("namespace"), str) and meta["namespace"]:
        return str(meta["namespace"])
    return default


def _export_text(items: list[str] | tuple[str, ...]) -> str:
    """exportTo values as written in messages: ``'.', 'research'``."""
    return ", ".join(f"'{_printable(item)}'" for item in items)


def parse_mesh_export_to(text: str) -> tuple[str, ...]:
    """``--mesh-export-to``: Istio's defaultServiceExportTo, comma-separated ``.``, ``*``, ``~``
    or namespace names. Raises DeclarationError (one line) on anything else."""
    items = tuple(item.strip() for item in text.split(","))
    for item in items:
        if item not in (".", "*", "~") and not NAMESPACE_NAME.fullmatch(item):
            raise DeclarationError(f"--mesh-export-to: {_printable(item)!r} is not '.', '*', '~' or a namespace name")
    if "~" in items and len(items) > 1:
        raise DeclarationError("--mesh-export-to: '~' (no namespace) cannot be combined with other values")
    return items


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Importer:
    """Reads declaration files into one :class:`Declaration`."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, registry_map: dict[str, tuple[str, ...]] | None = None,
                 ignore_unknown: bool = False, mesh_export_to: tuple[str, ...] | None = None) -> None:
        self.namespace = namespace
        self.registry_map = registry_map or {}
        self.ignore_unknown = ignore_unknown
        # Istio's meshConfig.defaultServiceExportTo, for ServiceEntries without exportTo. None:
        # not given, so such a ServiceEntry is declared for its own namespace only, with a warning.
        self.mesh_export_to = mesh_export_to
        self.out = Declaration()
        # ServiceEntries exported to every namespace are added to every namespace at the end.
        self._everywhere: list[tuple[str, Source, str]] = []

    def read(self, path: str) -> None:
        p = Path(path)
        self.out.files.append(path)
        for index, doc in _documents(p):
            if doc is None:
                continue
            if isinstance(doc, _PlainList):
                self._plain(path, doc)
                continue
            self._document(path, index, doc)

    def finish(self) -> Declaration:
        targets = set(self.out.allow) | {self.namespace}
        for entry, source, note in self._everywhere:
            for ns in sorted(targets):
                self.out.add(ns, entry, source, note)
        self._everywhere.clear()
        return self.out

    # -- dispatch --
    def _document(self, path: str, index: int, doc: Any) -> None:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            for item in doc["items"]:
                self._document(path, index, item)
            return
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if isinstance(doc, dict) and kind == "ServiceEntry":
            self._service_entry(path, doc)
        elif isinstance(doc, dict) and kind == "Sidecar":
            self._sidecar(path, doc)
        elif isinstance(doc, dict) and kind in CILIUM_KINDS:
            self._cilium(path, doc, str(kind))
        elif isinstance(doc, dict) and doc.get("bomFormat") == "CycloneDX":
            self._cyclonedx(path, doc)
        elif isinstance(doc, dict | list) and any(True for _ in _find(doc, "egressRequirements")):
            self._skill(path, doc)
        else:
            what = f"kind {kind!r}" if isinstance(kind, str) else f"a {type(doc).__name__}"
            message = (
                f"{path}: document {index}: not a recognised declaration ({_printable(what)}); expected an "
                "Istio ServiceEntry or Sidecar, a Cilium(Clusterwide)NetworkPolicy, a skill manifest with "
                "egressRequirements, a CycloneDX JSON SBOM, or a plain host list"
            )
            if not self.ignore_unknown:
                raise DeclarationError(message)
            self.out.skip(Source(path, f"document {index}", ""), what, "not a recognised declaration")

    def _entry(self, value: Any, source: Source, shown: Any = None) -> str | None:
        """The allow entry for a declared value, or None with the value recorded as skipped
        (and warned about, when it is a wildcard over a public suffix). ``shown``: the value
        as the document wrote it, when ``value`` is a translation (Cilium's ``**.``)."""
        shown = value if shown is None else shown
        try:
            entry, notes = declared_name(value)
        except PublicSuffixWildcard as exc:
            self.out.skip(source, shown, str(exc))
            self.out.warn(f"{source}: {_printable(str(shown))}: skipped: {exc}")
            return None
        except NotAName as exc:
            self.out.skip(source, shown, str(exc))
            return None
        for n in notes:
            self.out.skip(source, shown, n)
        return entry

    def _add(self, namespace: str, value: Any, source: Source, note: str = "", shown: Any = None) -> None:
        entry = self._entry(value, source, shown)
        if entry is not None:
            self.out.add(namespace, entry, source, note)

    # -- formats --
    def _plain(self, path: str, text: str) -> None:
        for number, line in enumerate(text.splitlines(), start=1):
            value = line.split("#", 1)[0].strip()
            if value:
                self._add(self.namespace, value, Source(path, "list", f"line {number}"))

    def _service_entry(self, path: str, doc: dict[str, Any]) -> None:
        spec = _dict(doc.get("spec"))
        own = _namespace_of(doc, self.namespace)
        source = Source(path, "ServiceEntry", _name_of(doc))
        hosts = _list(spec.get("hosts"))
        if not hosts:
            self.out.skip(source, "spec.hosts", "no hosts declared")
            return
        raw = spec.get("exportTo")
        written = [str(x) for x in (raw if isinstance(raw, list) else [raw] if isinstance(raw, str) else [])]
        where = f"{source} (namespace {own})"
        if written:
            export, how = written, f"exportTo {_export_text(written)}"
        elif self.mesh_export_to is not None:
            export = list(self.mesh_export_to)
            how = f"no exportTo, --mesh-export-to {_export_text(export)}"
        else:
            # Istio's own default is every namespace (unless the mesh's defaultServiceExportTo
            # says otherwise): whoever may write a ServiceEntry in one namespace would widen every
            # namespace's declared egress. Declared for its own namespace only, and said so.
            export, how = ["."], ""
            assumed = (f"{where}: no exportTo: declared for namespace {own} only, not every namespace "
                       "as Istio's default would (--mesh-export-to '*' if your mesh keeps that default)")
            self.out.assumed.append(assumed)
            self.out.warn(assumed)
        targets: list[str] = []
        everywhere = False
        for item in export:
            if item == ".":
                targets.append(own)
            elif item == "*":
                everywhere = True
            elif item != "~" and item not in targets:
                targets.append(item)
        if not targets and not everywhere:
            for host in hosts:
                self.out.skip(source, host, "exportTo '~': visible to no namespace")
            return
        beyond = [ns for ns in targets if ns != own]
        if everywhere:
            self.out.exports.append(f"{where}: {how}: every namespace of this output")
        elif beyond:
            self.out.exports.append(f"{where}: {how}: namespace(s) {', '.join(beyond)}")
        note = how if everywhere else ""
        for host in hosts:
            entry = self._entry(host, source)
            if entry is None:
                continue
            for ns in targets:
                self.out.add(ns, entry, source)
            if everywhere:
                self.out.add(own, entry, source, note)
                self._everywhere.append((entry, source, note))

    def _sidecar(self, path: str, doc: dict[str, Any]) -> None:
        spec = _dict(doc.get("spec"))
        own = _namespace_of(doc, self.namespace)
        source = Source(path, "Sidecar", _name_of(doc))
        for listener in _list(spec.get("egress")):
            for host in _list(_dict(listener).get("hosts")):
                if not isinstance(host, str) or "/" not in host:
                    self.out.skip(source, host, "not in namespace/host form")
                    continue
                where, _, name = host.partition("/")
                if where == "~":
                    self.out.skip(source, host, "'~/' imports nothing")
                    continue
                if name == "*":
                    self.out.skip(source, host, "not a name, skipped: every service of "
                                  + ("the Sidecar's namespace" if where == "." else
                                     "every namespace" if where == "*" else f"namespace {where}"))
                    continue
                # The namespace part says where the service is declared; the workload
                # asking for it lives in the Sidecar's namespace.
                self._add(own, name, source)

    def _cilium(self, path: str, doc: dict[str, Any], kind: str) -> None:
        ns = _namespace_of(doc, self.namespace)
        source = Source(path, kind, _name_of(doc))
        rules = [doc.get("spec"), *_list(doc.get("specs"))]
        for rule in rules:
            for egress in _list(_dict(rule).get("egress")):
                for selector in _list(_dict(egress).get("toFQDNs")):
                    selector = _dict(selector)
                    if "matchName" in selector:
                        self._add(ns, selector["matchName"], source)
                    if "matchPattern" in selector:
                        self._cilium_pattern(ns, selector["matchPattern"], source)

    def _cilium_pattern(self, ns: str, pattern: Any, source: Source) -> None:
        """Translate a Cilium matchPattern: ``*`` matches within one label, ``**.`` any depth."""
        if not isinstance(pattern, str):
            self.out.skip(source, pattern, "matchPattern is not text")
            return
        text = pattern.strip().rstrip(".")
        if text in ("*", "**"):
            self.out.skip(source, pattern, "matchPattern '*' matches every name: not a name")
            return
        if text.startswith("**.") and "*" not in text[3:]:
            self._add(ns, "*." + text[3:], source, shown=pattern)
            return
        if text.startswith("*.") and "*" not in text[2:]:
            self._add(ns, text, source, note="widened: Cilium's '*.' matches one label, dnsgate's any depth",
                      shown=pattern)
            return
        if "*" in text:
            self.out.skip(source, pattern, "a '*' inside a label or below the first label has no dnsgate "
                          "equivalent (dnsgate wildcards are a leading '*.' only)")
            return
        self._add(ns, text, source)

    def _skill(self, path: str, doc: Any) -> None:
        ns = _namespace_of(doc, self.namespace) if isinstance(doc, dict) else self.namespace
        for found, owners in _find_owned(doc, "egressRequirements", []):
            # The skill's name is the nearest enclosing object's name (nested manifests).
            named: dict[str, Any] = next((o for o in reversed(owners) if _name_of(o) != "(unnamed)"), {})
            source = Source(path, "skill manifest", _name_of(named))
            if not isinstance(found, list):
                self.out.skip(source, found, "egressRequirements is not a list")
                continue
            for item in found:
                if isinstance(item, dict):
                    value = item.get("host", item.get("url"))
                    if value is None:
                        self.out.skip(source, json.dumps(item, default=str), "an object without host or url")
                        continue
                    self._add(ns, value, source)
                else:
                    self._add(ns, item, source)

    def _cyclonedx(self, path: str, doc: dict[str, Any]) -> None:
        ns = self.namespace
        unmapped: dict[str, int] = {}
        for owner in _walk_objects(doc):
            label = _component_label(owner)
            for ref in _list(owner.get("externalReferences")):
                ref = _dict(ref)
                if "url" in ref:
                    kind = str(ref.get("type", "reference"))
                    self._add(ns, ref["url"], Source(path, "CycloneDX", f"{label} externalReference {kind}"))
            for endpoint in _list(owner.get("endpoints")):
                self._add(ns, endpoint, Source(path, "CycloneDX", f"{label} service endpoint"))
            purl = owner.get("purl")
            if isinstance(purl, str) and purl.startswith("pkg:"):
                ptype, qualifiers = _purl(purl)
                explicit = False
                for key in ("repository_url", "download_url"):
                    if key in qualifiers:
                        explicit = True
                        self._add(ns, qualifiers[key], Source(path, "CycloneDX", f"{label} purl {key}"))
                hosts = self.registry_map.get(ptype)
                if hosts:
                    for host in hosts:
                        self._add(ns, host, Source(path, "CycloneDX", f"purl type {ptype} via --registry-map"))
                elif not explicit:
                    unmapped[ptype] = unmapped.get(ptype, 0) + 1
        for ptype, count in sorted(unmapped.items()):
            self.out.skip(
                Source(path, "CycloneDX", ""), f"pkg:{ptype}",
                f"{count} component(s) name no host; map purl type '{ptype}' to hosts with --registry-map",
            )


def _find(doc: Any, key: str, depth: int = 0) -> Iterator[Any]:
    """Every value stored under ``key`` anywhere in a nested document."""
    if depth > MAX_DEPTH:
        return
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key:
                yield v
            else:
                yield from _find(v, key, depth + 1)
    elif isinstance(doc, list):
        for v in doc:
            yield from _find(v, key, depth + 1)


def _find_owned(doc: Any, key: str, owners: list[dict[str, Any]],
                depth: int = 0) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
    """Like ``_find``, with the mappings enclosing each value, outermost first."""
    if depth > MAX_DEPTH:
        return
    if isinstance(doc, dict):
        inner = [*owners, doc]
        for k, v in doc.items():
            if k == key:
                yield v, inner
            else:
                yield from _find_owned(v, key, inner, depth + 1)
    elif isinstance(doc, list):
        for v in doc:
            yield from _find_owned(v, key, owners, depth + 1)


def _walk_objects(doc: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every mapping in a nested document (components, services, metadata.component ...)."""
    if depth > MAX_DEPTH:
        return
    if isinstance(doc, dict):
        yield doc
        for v in doc.values():
            yield from _walk_objects(v, depth + 1)
    elif isinstance(doc, list):
        for v in doc:
            yield from _walk_objects(v, depth + 1)


def _component_label(obj: dict[str, Any]) -> str:
    name = obj.get("name")
    if isinstance(name, str):
        version = obj.get("version")
        return f"{name}@{version}" if isinstance(version, str) else name
    return str(obj.get("bom-ref", "document"))


def _purl(purl: str) -> tuple[str, dict[str, str]]:
    """(type, qualifiers) of a package URL (``pkg:type/namespace/name@version?k=v#subpath``)."""
    rest = purl[4:].lstrip("/").partition("#")[0]
    body, _, query = rest.partition("?")
    ptype = body.partition("/")[0].lower()
    qualifiers: dict[str, str] = {}
    for pair in query.split("&") if query else []:
        key, _, value = pair.partition("=")
        if key:
            qualifiers[key.lower()] = unquote(value)
    return ptype, qualifiers


def load_registry_map(path: str) -> dict[str, tuple[str, ...]]:
    """A ``--registry-map`` file: a YAML mapping of purl type to the hosts (or URLs) serving it."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeclarationError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise DeclarationError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise DeclarationError(f"{path}: a registry map is a mapping of purl type to a list of hosts")
    out: dict[str, tuple[str, ...]] = {}
    for ptype, hosts in data.items():
        if isinstance(hosts, str):
            hosts = [hosts]
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise DeclarationError(f"{path}: {ptype}: must be a host or a list of hosts")
        out[str(ptype).lower()] = tuple(hosts)
    return out


def load_declarations(paths: list[str], namespace: str = DEFAULT_NAMESPACE,
                      registry_map: dict[str, tuple[str, ...]] | None = None,
                      ignore_unknown: bool = False, mesh_export_to: tuple[str, ...] | None = None) -> Declaration:
    """Read every file into one Declaration; raise DeclarationError on an unrecognised document.

    ``mesh_export_to``: the exportTo of ServiceEntries that have none (Istio's
    ``defaultServiceExportTo``); None declares them for their own namespace, with a warning.
    """
    importer = Importer(namespace, registry_map, ignore_unknown, mesh_export_to)
    for path in paths:
        importer.read(path)
    return importer.finish()


# --- output --------------------------------------------------------------------------------


def _sources_text(sources: list[Source], notes: list[str]) -> str:
    by_file: dict[str, list[str]] = {}
    for s in sources:
        by_file.setdefault(s.file, []).append(f"{s.kind} {s.name}".rstrip())
    parts = [f"{f}: {', '.join(what)}" for f, what in by_file.items()]
    return _printable("; ".join(parts + notes))


def render(declaration: Declaration) -> str:
    """The declaration as a config fragment: ``namespaces: {NAME: {allow: [...]}}``, commented."""
    total = sum(len(v) for v in declaration.allow.values())
    out = [
        "# dnsgate allowlist imported by `dnsgate import` from " + _printable(", ".join(declaration.files)),
        f"# {total} allow entries in {len(declaration.allow)} namespace(s); "
        f"{len(declaration.skipped)} declared value(s) skipped (listed at the end)",
        "# Merge into your config (clients, mode ...), then: dnsgate check-config FILE",
    ]
    if declaration.exports:
        out.append("# declared beyond their own namespace (review these):")
        out.extend(f"#   {_printable(line)}" for line in declaration.exports)
    if declaration.assumed:
        out.append("# declared for their own namespace only:")
        out.extend(f"#   {_printable(line)}" for line in declaration.assumed)
    if not declaration.allow:
        out.append("namespaces: {}")
    else:
        out.append("namespaces:")
    for ns in declaration.namespaces():
        out.append(f"  {json.dumps(ns)}:")
        out.append("    allow:")
        entries = declaration.entries(ns)
        width = min(max(len(e) for e in entries) + 2, 50)
        for entry in entries:
            comment = _sources_text(declaration.allow[ns][entry], declaration.notes.get((ns, entry), []))
            out.append(f"      - {_quoted(entry):<{width}}  # {comment}")
    if declaration.skipped:
        out.append("# skipped:")
        for skipped in declaration.skipped:
            out.append(f"#   {_printable(str(skipped))}")
    return "\n".join(out) + "\n"


def _quoted(entry: str) -> str:
    # Entries are validated host names (letters, digits, '-', '_', '.', a leading '*.'):
    # single quotes need no escaping inside them.
    return f"'{entry}'"


# --- command line --------------------------------------------------------------------------


def declarations_or_error(prog: str, files: list[str], args: argparse.Namespace) -> Declaration | None:
    """Read ``files`` with the command's --namespace, --registry-map, --ignore-unknown and
    --mesh-export-to; print the warnings, one line each; print the error and return None
    when they cannot be read."""
    try:
        registry = load_registry_map(args.registry_map) if args.registry_map else None
        mesh = getattr(args, "mesh_export_to", None)
        declaration = load_declarations(files, args.namespace, registry, args.ignore_unknown,
                                        parse_mesh_export_to(mesh) if mesh is not None else None)
    except DeclarationError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    for warning in declaration.warnings:
        print(f"{prog}: warning: {_printable(warning)}", file=sys.stderr)
    return declaration


def run_import(args: argparse.Namespace) -> int:
    prog = "dnsgate import"
    declaration = declarations_or_error(prog, args.files, args)
    if declaration is None:
        return 2
    sys.stdout.write(render(declaration))
    total = sum(len(v) for v in declaration.allow.values())
    exported = f", {len(declaration.exports)} ServiceEntry(s) declared beyond their namespace" \
        if declaration.exports else ""
    print(f"{prog}: {total} allow entries in {len(declaration.allow)} namespace(s), "
          f"{len(declaration.skipped)} value(s) skipped{exported}", file=sys.stderr)
    for line in declaration.exports:
        print(f"{prog}: declared beyond its namespace: {_printable(line)}", file=sys.stderr)
    return 0
