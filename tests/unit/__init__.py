"""In-process tests: one stage or library at a time, no servers; `make test-unit` runs them in seconds."""
