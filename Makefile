# fastgw: `make run` starts the gateway on examples/quickstart.yaml with two demo upstreams;
# `make test` runs every test. Both set up .venv and build the Cython core when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CORE_SRC := fastgw/_core.pyx $(wildcard fastgw/_cy/*.pyx fastgw/_cy/*.pxi fastgw/_cy/*.pxd)

.PHONY: run test lint annotate build clean bench bench-quick bench-ws bench-h2

# .venv: the build requirements read from pyproject.toml, then fastgw installed editable with its runtime and
# test dependencies but without the core (FASTGW_SKIP_CORE=1, see setup.py). The core is compiled by the
# stamp rule alone, once per change of its sources; setuptools skips an up-to-date extension, so a rerun
# after pyproject.toml changes compiles nothing.
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' > $(VENV)/build-requires.txt
	$(PIP) install -q -r $(VENV)/build-requires.txt
	FASTGW_SKIP_CORE=1 $(PIP) install -q --no-build-isolation -e '.[test]'
	touch $@

# The in-place core always has the test and bench entry points (FASTGW_TESTING=1, see setup.py), so the
# stamp never stands for a build without them; a build that turned them off rewrote fastgw/_cy/features.pxi,
# one of CORE_SRC, which makes the stamp stale.
fastgw/_core.stamp: $(VENV)/.installed setup.py $(CORE_SRC) | nghttp2-dev
	FASTGW_TESTING=1 $(PY) setup.py -q build_ext --inplace
	touch $@

build: fastgw/_core.stamp

# The core links libnghttp2 (HTTP/2, fastgw/_cy/h2server.pyx): installed when the build runs as root on a
# Debian-like system, else a clear error.
.PHONY: nghttp2-dev
nghttp2-dev:
	@pkg-config --exists libnghttp2 2>/dev/null || [ -f /usr/include/nghttp2/nghttp2.h ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -qq libnghttp2-dev; } || \
	  { echo "libnghttp2 not found: apt-get install libnghttp2-dev" >&2; exit 1; }

run: build
	@bash scripts/quickstart.sh

test: build
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check fastgw tests bench examples deploy setup.py

annotate: $(VENV)/.installed
	FASTGW_TESTING=1 FASTGW_ANNOTATE=1 $(PY) setup.py -q build_ext --inplace
	@echo "annotations: fastgw/_core.html"

clean:
	rm -rf build dist fastgw.egg-info fastgw/_core.c fastgw/_core*.so fastgw/_core.stamp fastgw/_core.html \
		fastgw/_cy/features.pxi

# Macro benchmark (bench/README.md): fastgw, nginx, HAProxy and direct-to-upstream under wrk and httperf.
# `make bench` is the full run and writes its table into bench/README.md; `make bench-quick` takes about a
# minute. Extra flags: make bench BENCH_ARGS='--scenarios get26,gateway --peers direct,fastgw,nginx'.
bench: build
	$(PY) bench/run.py --update-readme $(BENCH_ARGS)

bench-quick: build
	$(PY) bench/run.py --quick $(BENCH_ARGS)

# HTTP/2 (docs/http2.md): h2load -c 10 -m 20 through fastgw (h2c) and nginx (listen ... http2), proxy CPU per request.
bench-h2: build
	$(PY) bench/h2load_bench.py $(BENCH_ARGS)

# Tunnels (docs/tunnels.md): WebSocket echo of 1 KiB messages through fastgw and nginx (proxy CPU per
# message), then 1,000 open WebSockets through 10 reloads (none may drop).
bench-ws: build
	$(PY) -m bench.harness.wsecho
	$(PY) -m bench.harness.wsreloads
