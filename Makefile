# pyllamaam: `make demo` runs compaction on the default model, `make test` runs the tests.
# Both do all the set-up: .venv, Python deps, the patched llama-cpp-python build (cached), models.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-fast lint clean distclean build models

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip wheel

# the patched libllama, built once per hash of (sdist, patches, flags)
build: $(VPY)
	$(VPY) native/build.py

$(VENV)/.deps-stamp: pyproject.toml | $(VPY)
	$(VPY) native/build.py
	$(PIP) install -q -e '.[server,plot,test]'
	touch $@

models: $(VENV)/.deps-stamp
	$(VPY) native/fetch_models.py --gemma

setup: build $(VENV)/.deps-stamp models

demo: setup
	$(VPY) -m pyllamaam demo

test: setup
	$(VPY) -m pytest -q

test-fast: setup
	$(VPY) -m pytest -q -m "not slow"

lint: setup
	$(VPY) -m ruff check pyllamaam server tests native

clean:
	rm -rf .pytest_cache .hypothesis results

distclean: clean
	rm -rf $(VENV) build
