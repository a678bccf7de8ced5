# Stockade: `make demo` and `make test` work on a fresh Debian 12 machine as root.
VENV := .venv
PY := $(VENV)/bin/python
BOOTSTRAP_STAMP := $(VENV)/.stockade-installed
# The OCI hook's C client: built here, at install time, never on a node at first use.
HOOK_CLIENT := $(VENV)/bin/stockade-oci-hook-client
HOOK_CLIENT_SRC := src/stockade/agent/stockade_oci_hook_client.c
HOOK_CFLAGS := -std=c11 -O2 -D_DEFAULT_SOURCE -D_FORTIFY_SOURCE=2 -Wall -Wextra -Werror \
	-Wpedantic -Wformat=2 -Wconversion -fanalyzer

.PHONY: demo test test-core bench lint typecheck bootstrap clean

bootstrap: $(BOOTSTRAP_STAMP) $(HOOK_CLIENT)

$(BOOTSTRAP_STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	./scripts/bootstrap.sh

.PHONY: hook-client
hook-client: $(HOOK_CLIENT)

$(HOOK_CLIENT): $(HOOK_CLIENT_SRC) | $(BOOTSTRAP_STAMP)
	gcc $(HOOK_CFLAGS) -static -s -o $@.tmp $< && chmod 0755 $@.tmp && mv -f $@.tmp $@

demo: bootstrap
	$(VENV)/bin/stockade demo

test: bootstrap lint typecheck
	$(PY) -m pytest -q

# The tool-free tier: no software TPM, no other programs; the pure code in under a minute
# (two workers: one per core here).
test-core: bootstrap
	$(PY) -m pytest -q -n 2 -m "not swtpm and not crosscheck and not tools"

lint: bootstrap
	$(VENV)/bin/ruff check src tests bench fuzz
	$(VENV)/bin/ruff format --check src tests bench fuzz
	$(VENV)/bin/lint-imports
	gcc $(HOOK_CFLAGS) -c -o /dev/null $(HOOK_CLIENT_SRC)

typecheck: bootstrap
	$(VENV)/bin/mypy

bench: bootstrap
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The OCI image stockade:<version> in build/image/oci, without Docker (scripts/build_image.sh):
# a Debian 12 rootfs by mmdebstrap, the project's wheel and its dependencies (pip wheels pinned
# by constraints.txt) in a venv, the hook client; packed and tagged by umoci.
.PHONY: image test-image
IMAGE_DIR := build/image

image: bootstrap
	./scripts/build_image.sh $(IMAGE_DIR)

# The build takes 1-2 minutes, too long for every `make test`: this target builds the image,
# then runs tests/deploy/test_image.py on it (which `make test` runs only when the image exists).
test-image: image
	STOCKADE_TEST_IMAGE=$(IMAGE_DIR)/oci $(PY) -m pytest -q tests/deploy/test_image.py
