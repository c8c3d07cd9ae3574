# dnsgate: `make serve` runs the resolver on the bundled example policy,
# `make test` installs what the tests need and runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
APT_PACKAGES := unbound nsd dnsutils dnsperf redis-server iproute2 tcpdump tshark iodine dns2tcp prometheus prometheus-alertmanager

.PHONY: serve test lint bench deps system-deps clean

$(BIN)/dnsgate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

serve: $(BIN)/dnsgate
	$(BIN)/dnsgate serve $(ARGS)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

deps: $(BIN)/dnsgate system-deps

lint: $(BIN)/dnsgate
	$(BIN)/ruff check resolver heuristics tests benchmarks
	$(BIN)/mypy resolver heuristics

test: deps lint
	$(BIN)/pytest -q -p no:cacheprovider

bench: deps
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info benchmarks/work
