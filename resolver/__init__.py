"""dnsgate's resolver, in rooms that say what they hold.

- ``wire``: the DNS wire format read and written straight from bytes (no imports from the rest).
- ``pipeline``: the query contract (``query``), the chain (``chain``) and one file per stage;
  imports ``wire``, ``config`` and ``heuristics`` only.
- ``operations``: listeners, admin HTTP, metrics, reload, alert sinks; imports ``pipeline``.
- ``offline``: capture reading, replay, propose; imports ``pipeline`` and ``operations``' sinks never.
- ``config``: the typed configuration, validated once at load.
- ``app``: the one module that wires a live server together.
- ``cli``: every ``dnsgate`` subcommand.
- ``native``: builds the query path's modules with mypyc (``make native``) and spots stale builds.
"""
