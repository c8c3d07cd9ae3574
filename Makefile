# dnsgate: `make serve` runs the resolver on the bundled example policy,
# `make test` installs what the tests need and runs the whole suite.
# The venv's interpreter: the distribution's python3 when it can make a venv and has its
# headers (Debian builds it with profile-guided optimisation and link-time optimisation,
# as the official container images do: the same code runs ~10 % faster than on a build
# without them, such as pyenv's default), else python3 from PATH. `make PYTHON=...` picks one.
DISTRO_PYTHON := $(shell /usr/bin/python3 -c 'import ensurepip, os, sys, sysconfig; \
  sys.exit(sys.version_info < (3, 11) or not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  2>/dev/null && echo /usr/bin/python3)
PYTHON ?= $(or $(DISTRO_PYTHON),python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
APT_PACKAGES := zlib1g-dev unbound nsd dnsutils dnsperf redis-server iproute2 tcpdump tshark iodine dns2tcp prometheus prometheus-alertmanager rsyslog chromium

.PHONY: serve test test-unit lint bench deps system-deps native clean-native clean

$(BIN)/dnsgate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

serve: $(BIN)/dnsgate native
	$(BIN)/dnsgate serve $(ARGS)

# Installs only what is missing, without recommends; starts no service and leaves no new
# service enabled (tests/support/debian-packages.sh says how). Needs root, or sudo.
system-deps:
	@sh tests/support/debian-packages.sh $(APT_PACKAGES)

# The query path's modules compiled with mypyc, and the C modules (heuristics/_deflate.c,
# which needs zlib1g-dev, and heuristics/_labels.c), beside their sources (resolver/native.py, docs/operations.md
# "Compiled modules"): rebuilt when a source changes. NATIVE=0 runs everything from source
# instead (`clean-native` removes every extension, the C modules' too).
NATIVE ?= 1
NATIVE_STAMP := build/native/.built
# A machine without a C compiler or Python's headers runs from source (`make test` then
# fails test_native.py, which expects the compiled build unless NATIVE=0).
# The modules left as Python are byte-compiled too, as pip does at install: where
# PYTHONDONTWRITEBYTECODE is set, every start would compile them again.
$(NATIVE_STAMP): $(BIN)/dnsgate $(wildcard heuristics/*.py heuristics/*.c resolver/*.py resolver/*/*.py)
	@if $(BIN)/python -m resolver.native build; then touch $@; else \
	  $(BIN)/python -m resolver.native clean; \
	  echo "make: compiled modules not built (above: why); dnsgate runs from source"; fi
	@$(BIN)/python -m compileall -q resolver heuristics

ifeq ($(NATIVE),0)
native: clean-native
else
native: $(NATIVE_STAMP)
endif

clean-native:
	@test ! -x $(BIN)/python || $(BIN)/python -m resolver.native clean
	@rm -f $(NATIVE_STAMP)

deps: $(BIN)/dnsgate system-deps native

lint: $(BIN)/dnsgate
	$(BIN)/ruff check resolver heuristics tests benchmarks setup.py
	$(BIN)/mypy resolver heuristics setup.py

test: deps lint
	DNSGATE_NATIVE=$(NATIVE) $(BIN)/pytest -q -p no:cacheprovider

# In-process tests only: no servers, no root, seconds.
test-unit: $(BIN)/dnsgate native
	DNSGATE_NATIVE=$(NATIVE) $(BIN)/pytest -q -p no:cacheprovider tests/unit

# perf profiles the loaded server with native stacks (benchmarks/profile.py): the compiled
# modules' functions by name, where py-spy sees only the event loop.
bench: deps
	@sh tests/support/debian-packages.sh linux-perf
	$(BIN)/python -m benchmarks.run

clean: clean-native
	rm -rf $(VENV) build *.egg-info benchmarks/work
