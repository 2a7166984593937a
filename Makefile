# Each target sets up .venv itself when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,agents,dagger]'
	touch $(STAMP)

# Scan the bundled sample application with pr-security-review; it stops at the patcher's
# approval gate (exit 3) and prints the command that approves it. Then serve the embedded
# defaults (SQLite ./runner.db, local executor, workflows-repo-example) until Ctrl-C.
run: $(STAMP)
	$(BIN)/runner validate workflows-repo-example
	examples/make-sample-repo.sh .runner/sample-app
	$(BIN)/runner run pr-security-review --repo workflows-repo-example --workspace .runner/sample-app \
		|| test $$? -eq 3
	$(BIN)/runner serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/webhooks.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/mask.py

clean:
	rm -rf $(VENV) .bench-venv build dist .mypy_cache .pytest_cache .ruff_cache
