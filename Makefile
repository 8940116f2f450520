# Everything goes through the project's own virtual environment, so a fresh machine needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint unit integration fuzz bench bench-ab mutation clean install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/concierge up

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

# Schemathesis, every check and phase, against the platform as `make run` starts it and in the
# distributed mode; `make test` runs the same with 25 examples per operation.
# make fuzz [EXAMPLES=200] [SEED=<n>]
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(or $(EXAMPLES),200) FUZZ_SEED=$(or $(SEED),$$RANDOM) \
		$(BIN)/python -m pytest -q tests/e2e/test_openapi_conformance.py

bench: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/run_all.py

# Interleaved runs of "add apartment" on two commits: make bench-ab BASE=<commit> [OTHER=<commit>]
# (OTHER defaults to this working tree)
bench-ab: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/ab.py $(BASE) $(OTHER) --pairs $(or $(PAIRS),3)

# Does a unit test fail when a rule changes? (tools/mutation.py; several minutes per module)
TOPOLOGY_UNIT := tests/unit/test_topology_domain.py tests/unit/test_topology_contracts.py \
	tests/unit/test_openapi_rules.py
ACCOUNTS_UNIT := tests/unit/test_accounts_domain.py tests/unit/test_accounts_contracts.py \
	tests/unit/test_accounts_application.py
DEVICES_UNIT := tests/unit/test_devices_domain.py tests/unit/test_traffic_contract.py
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py services/topology/domain.py $(TOPOLOGY_UNIT)
	$(BIN)/python tools/mutation.py contracts/topology.py $(TOPOLOGY_UNIT)
	$(BIN)/python tools/mutation.py services/accounts/domain.py $(ACCOUNTS_UNIT)
	$(BIN)/python tools/mutation.py contracts/accounts.py $(ACCOUNTS_UNIT)
	$(BIN)/python tools/mutation.py services/devices/domain.py $(DEVICES_UNIT)
	$(BIN)/python tools/mutation.py contracts/devices.py $(DEVICES_UNIT)
	$(BIN)/python tools/mutation.py contracts/traffic.py $(DEVICES_UNIT)

clean:
	rm -rf $(VENV) var .pytest_cache
