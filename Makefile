# `make run` and `make test` do all set-up on a fresh machine: they create .venv
# if missing and install the project (re-installed when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install bytecode run test test-fast lint format compare figure certs keys deploy clean

CERT_DIR ?= certs
CERT_HOST ?=
KEY_DIR ?= keys
NODES ?= 2

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) bytecode

# the project's modules compiled once: where PYTHONDONTWRITEBYTECODE is set, every process
# (the launcher, each Ray worker) would compile them again at import (~0.2 s of CPU each)
PACKAGES := fedkd protocol clients server simulations
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q $(PACKAGES) > /dev/null

## run the default simulation (digits, 10 clients, FD)
run: $(STAMP) bytecode
	$(BIN)/fedkd-sim

## lint, format check, then the test suite
test: $(STAMP) bytecode
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

## the tests that start no simulation or deployment (no Ray, no Flower processes)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## regenerate the comparison tables (docs/comparison-*.md and .csv, indexed in docs/results.md)
compare: $(STAMP)
	$(BIN)/fedkd-compare --preset distill
	$(BIN)/fedkd-compare --preset claims
	$(BIN)/fedkd-compare --preset baselines
	$(BIN)/fedkd-compare --preset fusion
	$(BIN)/fedkd-compare --preset knfu-claim
	$(BIN)/fedkd-compare --preset domains
	$(BIN)/fedkd-compare --preset attacks
	$(BIN)/fedkd-compare --preset hostile

## regenerate the example report in docs/figures/ (default run, 20 rounds; under a minute)
figure: $(STAMP)
	rm -rf outputs/figure-run
	$(BIN)/fedkd-sim logging.level=quiet hydra.run.dir=outputs/figure-run
	$(BIN)/fedkd-report outputs/figure-run --out docs/figures

## development CA + SuperLink certificate (localhost, 127.0.0.1 and CERT_HOST, e.g. CERT_HOST="server.lan 10.0.0.5")
certs:
	bash scripts/certs.sh $(CERT_DIR) $(CERT_HOST)

## SuperNode authentication key pairs keys/node_<i>(.pub), i < NODES
keys:
	bash scripts/supernode_keys.sh $(KEY_DIR) $(NODES)

## Flower deployment on this machine: SuperLink + NODES SuperNodes, TLS and authentication, 2 rounds
## (with $(CERT_DIR)/ and $(KEY_DIR)/ from `make certs` / `make keys` when they exist)
deploy: $(STAMP)
	$(BIN)/fedkd-deploy --nodes $(NODES) \
		$(if $(wildcard $(CERT_DIR)/ca.crt),--certs $(CERT_DIR)) \
		$(if $(wildcard $(KEY_DIR)/node_0),--keys $(KEY_DIR)) num_rounds=2

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
