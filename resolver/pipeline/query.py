"""The contract between pipeline stages: a small Query in, a small Reply out.

A stage is an object with one method, ``resolve(query) -> Reply | None``:
it answers (a Reply) or hands the query on (None). Only the last stage, the
upstream forwarder, is asynchronous, so a query answered from policy or cache
never leaves the synchronous fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from resolver.wire.message import SERVFAIL, Question, header_reply

if TYPE_CHECKING:
    from resolver.config import Namespace, RateLimit, Undeclared
    from resolver.pipeline.identity import PodIdentity
    from resolver.pipeline.scrub import UpstreamAnswer
    from resolver.wire.message import ReplyInfo


class NamespaceView:
    """What the stages read of a client's namespace on every query, as native fields.

    The config's Namespace is a Python class (resolver/config.py), so from
    compiled code each of its attributes is a generic lookup; a view copies the
    few that every query reads, once per config generation (the identity stage
    makes one per namespace). ``namespace`` is the whole config section, for
    everything else.
    """

    __slots__ = ("burst", "detection", "mode", "name", "namespace", "on_undeclared", "qps", "rate_limit", "thresholds")

    namespace: Namespace
    name: str
    mode: str  # learn, observe, enforce
    detection: str  # the detection mode: off, observe, enforce
    thresholds: Any  # the detector's settings (None only in a Namespace built in code)
    rate_limit: RateLimit
    qps: float  # rate_limit.qps; 0 is off
    burst: float  # rate_limit.burst, or its default of 2 x qps (at least 1)
    on_undeclared: Undeclared | None

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.name = namespace.name
        self.mode = namespace.mode
        self.detection = namespace.detection.mode
        self.thresholds = namespace.detection.thresholds
        limit = self.rate_limit = namespace.rate_limit
        self.qps = float(limit.qps)
        self.burst = float(limit.burst or max(1.0, 2 * limit.qps))
        self.on_undeclared = namespace.on_undeclared


def pod_key(pod: PodIdentity) -> str:
    """The key per-client state (quarantine, rate-limit bucket) is held under for a pod: all its addresses share it.

    ``pod:<namespace>/<name>``: never an address, and readable in the admin API.
    """
    return f"pod:{pod.namespace}/{pod.name}"


@dataclass(slots=True, init=False)
class Query:
    """One client query moving through the pipeline."""

    wire: bytes
    question: Question
    client: str
    transport: str  # "udp" or "tcp"
    now: float  # wall clock live, capture time in replay
    listener_namespace: str | None = None
    view: NamespaceView | None = None  # the client's namespace, filled by the identity stage
    domain: str = ""  # registrable domain, filled by the detection stage
    cache_key: bytes = b""  # filled by the cache stage, used to store the upstream's reply
    pod: PodIdentity | None = None  # filled by the identity stage when the client is a known pod
    # Whom per-client state is held under (rate-limit bucket, client quarantine, detector
    # budgets): the pod's key, an IPv6 client's network (ipv6_client_prefix), else the
    # address. Filled by the identity stage; the address until then.
    owner: str = ""

    def __init__(
        self, wire: bytes, question: Question, client: str, transport: str, now: float,
        listener_namespace: str | None = None, namespace: Namespace | None = None, domain: str = "",
        cache_key: bytes = b"", pod: PodIdentity | None = None,
    ) -> None:
        self.wire = wire
        self.question = question
        self.client = client
        self.transport = transport
        self.now = now
        self.listener_namespace = listener_namespace
        self.view = None if namespace is None else NamespaceView(namespace)
        self.domain = domain
        self.cache_key = cache_key
        self.pod = pod
        self.owner = client if pod is None else pod_key(pod)

    @property
    def namespace(self) -> Namespace | None:
        """The client's namespace as configured (None until the identity stage found it)."""
        view = self.view
        return None if view is None else view.namespace

    @namespace.setter
    def namespace(self, namespace: Namespace | None) -> None:
        self.view = None if namespace is None else NamespaceView(namespace)


@dataclass(slots=True, init=False)
class Reply:
    """What goes back to the client; ``wire`` None means drop silently."""

    wire: bytes | None
    rcode: int
    action: str  # allowed, cached, denied, local, refused, dropped, quarantined, servfail, truncated
    follow: bytes | None  # a local CNAME's target: the pipeline resolves it and appends the answer

    # Written out: compiled, a dataclass's generated __init__ runs in the interpreter,
    # and most queries make a Reply.
    def __init__(self, wire: bytes | None, rcode: int, action: str, follow: bytes | None = None) -> None:
        self.wire = wire
        self.rcode = rcode
        self.action = action
        self.follow = follow


def servfail(wire: bytes, question: Question) -> Reply:
    """SERVFAIL with the client's question: no upstream answered, or something broke inside."""
    return Reply(header_reply(wire, question, SERVFAIL), SERVFAIL, "servfail")


class ReplyHook(Protocol):
    """The reply side of a stage: it sees each scrubbed upstream answer, in stage order.

    A hook records what it needs (the detector its rcodes, the cache its entry)
    and returns None, or returns the Reply that replaces the answer (a rewrite
    or a denial); the hooks after it, the cache included, then never see it.
    """

    def on_reply(self, query: Query, answer: UpstreamAnswer, info: ReplyInfo, /) -> Reply | None:
        """Act on an upstream answer to this query; None lets it through unchanged."""
        ...


class Stage(Protocol):
    """One step of the pipeline."""

    def resolve(self, query: Query) -> Reply | None:
        """Answer the query, or return None to hand it to the next stage."""
        ...
