# Stockade: `make demo` and `make test` work on a fresh Debian 12 machine as root.
VENV := .venv
PY := $(VENV)/bin/python
BOOTSTRAP_STAMP := $(VENV)/.stockade-installed

.PHONY: demo test test-core bench lint typecheck bootstrap clean

bootstrap: $(BOOTSTRAP_STAMP)

$(BOOTSTRAP_STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	./scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/stockade demo

test: bootstrap lint typecheck
	$(PY) -m pytest -q

# The tool-free tier: no software TPM, no other programs; the pure code in under a minute.
test-core: bootstrap
	$(PY) -m pytest -q -m "not swtpm and not crosscheck and not tools"

lint: bootstrap
	$(VENV)/bin/ruff check src tests bench fuzz
	$(VENV)/bin/ruff format --check src tests bench fuzz
	$(VENV)/bin/lint-imports

typecheck: bootstrap
	$(VENV)/bin/mypy

bench: bootstrap
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
