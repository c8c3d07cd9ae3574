"""Running the pipeline as a service: UDP/TCP listeners, admin HTTP, metrics,
hot reload and the remote alert sinks.

May import ``pipeline``, ``wire`` and ``config``; never ``offline`` or ``app``.
``resolver.app`` wires these parts together.
"""
