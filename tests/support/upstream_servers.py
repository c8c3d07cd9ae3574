"""Fixtures: real upstream DNS servers (NSD, Unbound) on free loopback ports."""
