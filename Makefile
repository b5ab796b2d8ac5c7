# pyllamaam: `make demo` runs compaction on the default model, `make test` runs the tests.
# Both do all the set-up: .venv, Python deps, the patched llama-cpp-python build (cached), models.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-fast test-gpu device-bundle memory-table lint clean distclean build models

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

# the GPU tests (tests/test_gpu.py) run in `make test-gpu`
test: setup
	$(VPY) -m pytest -q -m "not gpu"

test-fast: setup
	$(VPY) -m pytest -q -m "not slow and not gpu"

# The GPU tests on a CUDA build of the patched library, in a venv of its own (.venv keeps the CPU
# build; the wheel cache is keyed by the flags, so the two builds live side by side). The GPU
# architecture comes from CUDA_ARCHITECTURES or CMAKE_CUDA_ARCHITECTURES, else the local GPU's
# (native). The stand-in model of `make device-bundle` is used when it is there.
GPU_VENV  := .venv-cuda
GPU_VPY   := $(GPU_VENV)/bin/python
CUDA_ARCH := $(or $(CUDA_ARCHITECTURES),$(CMAKE_CUDA_ARCHITECTURES),native)
# CuPy for the toolkit's major version (12 or 13: extras cuda12, cuda13), for option arrays
CUDA_MAJOR = $(filter 12 13,$(shell nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p'))
comma := ,

$(GPU_VPY):
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VPY) -m pip install -q -U pip wheel

test-gpu: export PYLLAMAAM_DEVICE_MODEL := $(or $(PYLLAMAAM_DEVICE_MODEL),$(abspath $(wildcard .device/model.gguf)))
test-gpu: | $(GPU_VPY)
	PYLLAMAAM_CUDA=1 PYLLAMAAM_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH) $(PYLLAMAAM_CMAKE_ARGS)" \
		$(GPU_VPY) native/build.py
	$(GPU_VPY) -m pip install -q -e '.[test$(if $(CUDA_MAJOR),$(comma)cuda$(CUDA_MAJOR))]'
	$(GPU_VPY) -m pytest -q -m gpu

# .device/: what the offline CUDA machine needs (../shared/device/README.md), with the pure-Python
# dependencies of pyllamaam that its Python may lack; there: bash .device/gpu.sh python3 -m pytest -q -m gpu
SHARED ?= ../shared
device-bundle: build
	bash $(SHARED)/device/bundle.sh
	$(PIP) download -q --no-deps --only-binary=:all: -d .device/whl tqdm threadpoolctl

# The table compact(memory=M) reads (pyllamaam/memory_table.json): the QA suite on tuning documents
# (seeds 1-3, and 1-4 where Qwen2.5's methods came close; apart from the reported ones) at every
# memory target, then the configuration that kept the most answers per target and model.
# Resumable: finished cells are kept in results/memory-table.
QA_TABLE = $(VPY) -m pyllamaam eval --suite qa --n-tokens 1024 --seeds 1,2,3 --threads 1 --out results/memory-table
memory-table: setup
	$(QA_TABLE) --models smollm2-135m --methods full,default --caches f16,q8_0,q4_0,q8_0/q4_0 --memories 2,4,8,16,32
	$(QA_TABLE) --models smollm2-135m --methods sentences --caches q8_0/q4_0,q4_0 --memories 2,4,8,16,32
	$(QA_TABLE) --models smollm2-135m --seeds 1,2,3,4,5,6,7,8,9 --methods full,default \
		--caches f16,q8_0,q4_0,q8_0/q4_0 --memories 4,8,16,32
	$(QA_TABLE) --models smollm2-135m --seeds 1,2,3,4,5,6,7,8,9 --methods sentences --caches q8_0/q4_0,q4_0 \
		--memories 4,8,16,32
	$(QA_TABLE) --models smollm2-135m --seeds 1,2,3,4,5,6,7,8,9 --methods surprisal-sentences --caches q8_0/q4_0 \
		--memories 8,16,32
	$(QA_TABLE) --models smollm2-135m --seeds 1,2,3,4,5,6,7,8,9 --methods surprisal-sentences --caches q4_0 \
		--memories 16,32
	$(QA_TABLE) --models smollm2-135m --methods question --caches f16,q8_0/q4_0 --memories 8,32
	$(QA_TABLE) --models smollm2-135m --methods snapkv,kvzip,chunkkv --caches q8_0/q4_0 --memories 4,8,16,32
	$(QA_TABLE) --models qwen2.5-0.5b --methods full --caches f16,q8_0,q4_0,q8_0/q4_0
	$(QA_TABLE) --models qwen2.5-0.5b --seeds 1,2,3,4 --methods full,default,sentences --caches q8_0/q4_0 \
		--memories 4,8,16
	$(QA_TABLE) --models qwen2.5-0.5b --seeds 1,2,3,4 --methods full --caches f16
	$(QA_TABLE) --models qwen2.5-0.5b --seeds 1,2,3,4 --methods repeat-sentences --caches q8_0/q4_0 --memories 16
	$(QA_TABLE) --models qwen2.5-0.5b --seeds 1,2,3,4 --methods surprisal-sentences --caches q8_0/q4_0 --memories 16
	$(QA_TABLE) --models qwen2.5-0.5b --seeds 1,2,3,4 --methods default,sentences,surprisal-sentences \
		--caches q8_0/q4_0,q4_0 --memories 32
	$(QA_TABLE) --models qwen2.5-0.5b --methods question --caches f16,q8_0/q4_0 --memories 8,32
	$(QA_TABLE) --models qwen2.5-0.5b --methods snapkv,kvzip,chunkkv --caches q8_0/q4_0 --memories 4,8,16,32
	$(QA_TABLE) --models gemma3-270m --methods full --caches f16,q8_0,q4_0,q8_0/q4_0
	$(QA_TABLE) --models gemma3-270m --methods snapkv,kvzip,chunkkv --caches f16 --memories 2,4,8,16
	$(QA_TABLE) --models gemma3-270m --methods snapkv,kvzip,chunkkv --caches q8_0/q4_0 --memories 32
	$(QA_TABLE) --models gemma3-270m --methods question --caches f16,q8_0/q4_0 --memories 8,32
	$(QA_TABLE) --models gemma3-270m --methods surprisal-sentences --caches q8_0/q4_0 --memories 8,16
	$(QA_TABLE) --models gemma3-270m --methods surprisal-sentences --caches q4_0 --memories 8,16
	$(QA_TABLE) --models gemma3-270m --methods default,sentences,surprisal-sentences --caches q8_0/q4_0,q4_0 \
		--memories 32
	$(QA_TABLE) --models gemma3-270m --methods default,sentences --caches f16,q8_0/q4_0,q4_0 --memories 2,4,8,16 \
		--write-memory-table pyllamaam/memory_table.json

lint: setup
	$(VPY) -m ruff check pyllamaam server tests native

clean:
	rm -rf .pytest_cache .hypothesis results

distclean: clean
	rm -rf $(VENV) $(GPU_VENV) build
