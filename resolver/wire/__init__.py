"""The DNS wire format: questions read from bytes, replies patched and built as bytes.

Imports nothing from the rest of dnsgate.
"""
