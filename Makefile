# Two commands a user needs: `make demo` and `make test`. Both create/refresh .venv as needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo-output
# test processes (pytest-xdist; whole files per process so module fixtures are built once)
TEST_WORKERS ?= 2

.PHONY: demo test lint venv clean bench

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffxas demo --out $(DEMO_DIR)

# ruff: lint and format check (settings in pyproject.toml), before the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# the JSON is named by commit (benchmarks/results/cpu-quick-<shorthash>.json), load average inside
bench: $(STAMP)
	$(PY) -m benchmarks.run --suite quick --out benchmarks/results/cpu-quick-$$(git rev-parse --short HEAD 2>/dev/null || echo local).json

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
