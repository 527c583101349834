# fastgw: `make run` starts the gateway on examples/quickstart.yaml with two demo upstreams;
# `make test` runs every test. Both set up .venv and build the Cython core when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CORE_SRC := fastgw/_core.pyx $(wildcard fastgw/_cy/*.pyx fastgw/_cy/*.pxi fastgw/_cy/*.pxd)

.PHONY: run test lint annotate build clean bench bench-quick

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q 'Cython>=3.0.10'
	$(PIP) install -q -e '.[test]'
	touch $@

fastgw/_core.stamp: $(VENV)/.installed $(CORE_SRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: fastgw/_core.stamp

run: build
	@bash scripts/quickstart.sh

test: build
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check fastgw tests bench

annotate: $(VENV)/.installed
	FASTGW_ANNOTATE=1 $(PY) setup.py -q build_ext --inplace
	@echo "annotations: fastgw/_core.html"

clean:
	rm -rf build fastgw/_core.c fastgw/_core*.so fastgw/_core.stamp fastgw/_core.html

# Macro benchmark (bench/README.md): fastgw, nginx, HAProxy and direct-to-upstream under wrk and httperf.
# `make bench` is the full run and writes its table into bench/README.md; `make bench-quick` takes about a
# minute. Extra flags: make bench BENCH_ARGS='--scenarios get26,gateway --peers direct,fastgw,nginx'.
bench: build
	$(PY) bench/run.py --update-readme $(BENCH_ARGS)

bench-quick: build
	$(PY) bench/run.py --quick $(BENCH_ARGS)
