# dnsgate: `make serve` runs the resolver on the bundled example policy,
# `make test` installs what the tests need and runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
APT_PACKAGES := unbound nsd dnsutils dnsperf redis-server iproute2 tcpdump tshark iodine dns2tcp prometheus prometheus-alertmanager rsyslog chromium

.PHONY: serve test test-unit lint bench deps system-deps clean

$(BIN)/dnsgate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

serve: $(BIN)/dnsgate
	$(BIN)/dnsgate serve $(ARGS)

# Installs only what is missing, without recommends; starts no service and leaves no new
# service enabled (tests/support/debian-packages.sh says how). Needs root, or sudo.
system-deps:
	@sh tests/support/debian-packages.sh $(APT_PACKAGES)

deps: $(BIN)/dnsgate system-deps

lint: $(BIN)/dnsgate
	$(BIN)/ruff check resolver heuristics tests benchmarks
	$(BIN)/mypy resolver heuristics

test: deps lint
	$(BIN)/pytest -q -p no:cacheprovider

# In-process tests only: no servers, no root, seconds.
test-unit: $(BIN)/dnsgate
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

bench: deps
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info benchmarks/work
