"""Tests against real programs: Unbound, NSD, redis-server, dig, dnsperf, network namespaces."""
