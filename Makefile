# Two commands for a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
KEDRO  := $(BIN)/kedro
ENV    ?= base
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: run test test-fast install install-test pretrain evaluate viz mlflow lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) -e ".[test]"
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## run: install, pretrain then evaluate on the default dataset; the evaluation ends by printing
## the results (`python -m aavae.reporting.report [metrics.json]` prints them again)
run: install
	$(KEDRO) run --pipeline pretrain --env $(ENV)
	$(KEDRO) run --pipeline evaluate --env $(ENV)

## test: install with test extras, run the suite in two workers (test files spread over them;
## TEST_WORKERS=0 runs it in one process), an empty selection fails loudly
TEST_WORKERS ?= 2
test: install-test
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; \
	exit $$rc

## test-fast: the same without the tests that start processes or real kedro runs (marker `slow`):
## the inner loop, a few minutes; CI and `make test` run everything
test-fast: install-test
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

pretrain: install
	$(KEDRO) run --pipeline pretrain --env $(ENV)

evaluate: install
	$(KEDRO) run --pipeline evaluate --env $(ENV)

viz: install
	$(KEDRO) viz run

mlflow: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

lint: install-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf data/0[2-8]_*/* data/[a-z]*/0[2-8]_* mlflow.db mlartifacts mlruns  # base's layers and each environment's (data/<env>/)
