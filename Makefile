# The two commands a new user types: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Debian packages the tests use: WordNet (real tenant data), Prometheus (scrapes the server) and
# Chromium (loads the operator's page headless).
SYSTEM_FILES := /usr/share/wordnet/data.noun /usr/bin/prometheus /usr/bin/promtool /usr/bin/chromium
DATA   ?= ./curator-data
PORT   ?= 50051
METRICS_PORT ?= 9464

NODE_STAMP := tests/node/node_modules/.installed-stamp

.PHONY: run demo test bench load capacity neighbours soak crash proto system clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

system:
	@missing=0; for f in $(SYSTEM_FILES); do [ -e $$f ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wordnet-base prometheus chromium; \
	fi
	@command -v node >/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -qq nodejs npm; }

# The Node client of the cross-language test (@grpc/grpc-js from the npm registry).
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The server on localhost, its data in $(DATA) (RocksDB, embedded: no other server needed).
run: $(STAMP)
	$(VENV)/bin/curator serve --data $(DATA) --port $(PORT) --metrics-port $(METRICS_PORT)

# The embedded engine on real data: GloVe words shared between WordNet tenants.
demo: $(STAMP) system
	$(PY) -m benchmarks.demo

test: $(STAMP) system $(NODE_STAMP)
	$(PY) proto/generate.py --check
	$(PY) -m pytest -q tests

bench: $(STAMP) system
	$(PY) -m benchmarks.multitenant
	$(PY) -m benchmarks.storage
	$(PY) -m benchmarks.remote
	$(PY) -m benchmarks.filtered

# Load tests against a server the harness starts on loopback (curator_loadtest, `curator loadtest`; results in
# benchmarks/results/): ramps to the highest rate held with p99 under 50 ms, search-only and mixed.
load: $(STAMP) system
	$(PY) -m benchmarks.load ramp --mix search --out benchmarks/results/load_ramp_search
	$(PY) -m benchmarks.load ramp --mix mixed --out benchmarks/results/load_ramp_mixed

# Searches side by side (benchmarks/capacity.py): embedded threads, served with client processes
# and threads, the server's CPU per search beside gRPC's floor. Tenants stalling tenants
# (benchmarks/neighbours.py): a victim's p99 and the health check under each attack.
# COMPARE=/path/to/another/checkout runs its server and clients in turns with this one's.
capacity: $(STAMP) system
	$(PY) -m benchmarks.capacity $(if $(COMPARE),--compare $(COMPARE))

neighbours: $(STAMP) system
	$(PY) -m benchmarks.neighbours $(if $(COMPARE),--compare $(COMPARE))

# A soak: the mixed load at a fixed rate, server memory and open files sampled, every
# acknowledged write read back at the end: make soak SOAK_RATE=150 SOAK_SECONDS=600
SOAK_RATE ?= 150
SOAK_SECONDS ?= 600
soak: $(STAMP) system
	$(PY) -m benchmarks.load soak --mix mixed --rate $(SOAK_RATE) --duration $(SOAK_SECONDS) \
	  --out benchmarks/results/load_soak

# A longer crash soak than `make test` runs: make crash CYCLES=500
CYCLES ?= 500
crash: $(STAMP)
	CRASH_CYCLES=$(CYCLES) $(PY) -m pytest -q -s tests/test_crash.py -k loses_no_acknowledged

# Regenerate the Python code of the contract (proto/curator/v1) after editing it.
proto: $(STAMP)
	$(PY) proto/generate.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
