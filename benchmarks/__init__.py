"""Benchmark harness for dnsgate against Unbound (issue 6). Entry point: ``python -m benchmarks.run``."""
