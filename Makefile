# `make run` and `make test` do all set-up on a fresh machine: they create .venv
# if missing and install the project (re-installed when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint format compare figure clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run the default simulation (digits, 10 clients, FD)
run: $(STAMP)
	$(BIN)/fedkd-sim

## lint, format check, then the test suite
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## regenerate the README comparison tables (docs/comparison-*.md and .csv)
compare: $(STAMP)
	$(BIN)/fedkd-compare --preset baselines
	$(BIN)/fedkd-compare --preset fusion
	$(BIN)/fedkd-compare --preset knfu-claim
	$(BIN)/fedkd-compare --preset attacks

## regenerate the example report in docs/figures/ (default run, 20 rounds; under a minute)
figure: $(STAMP)
	rm -rf outputs/figure-run
	$(BIN)/fedkd-sim logging.level=quiet hydra.run.dir=outputs/figure-run
	$(BIN)/fedkd-report outputs/figure-run --out docs/figures

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
