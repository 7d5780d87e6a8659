# Everything a fresh machine with Python 3.11 and Node 20 needs: `make run`, `make test`.
PYTHON ?= python3.11
# The Python environment is installed from uv.lock (every package pinned, with hashes) by uv, itself pinned
# here and in the lock (a test checks the two agree). uv lives in its own small venv so that `uv sync`,
# which removes what the lock does not list, never removes the tool that runs it.
UV_VERSION := 0.13.8
UV_VENV := .venv-uv
UV := $(UV_VENV)/bin/uv
export UV_PYTHON_DOWNLOADS := never
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
JS_DIR := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.installed
SDK_DIR := shell-web/sdk
SDK_STAMP := $(SDK_DIR)/dist/.built
WEB_DIR := shell-web
WEB_STAMP := $(WEB_DIR)/dist/.built
ORDERS_UI_DIR := plugins/orders/ui
ORDERS_UI_STAMP := $(ORDERS_UI_DIR)/dist/.built
CHROMIUM := /usr/bin/chromium

.PHONY: run test test-unit fuzz test-files-large check docker-check lint format proto proto-check schema docs bench install lock clean shell orders-ui system-packages

install: $(PY_STAMP)

$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

# --locked: install exactly what uv.lock says, and stop if pyproject.toml asks for something it does not.
$(PY_STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --all-extras --python $(PYTHON) --quiet
	touch $@

# Resolve pyproject.toml again into uv.lock (newest versions its ranges allow); then run `make test`.
lock: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The shell's TypeScript client (upf-mux.v1): compiled with tsc into shell-web/sdk/dist.
$(SDK_STAMP): $(SDK_DIR)/package.json $(SDK_DIR)/package-lock.json $(SDK_DIR)/tsconfig.json $(wildcard $(SDK_DIR)/src/*.ts)
	cd $(SDK_DIR) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build
	touch $@

# The web shell (React, Rsbuild + Module Federation 2.0) into shell-web/dist, which the gateway serves at /.
$(WEB_STAMP): $(SDK_STAMP) $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json $(WEB_DIR)/rsbuild.config.ts \
		$(WEB_DIR)/tsconfig.json $(wildcard $(WEB_DIR)/src/*)
	cd $(WEB_DIR) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build
	touch $@

shell: $(WEB_STAMP)

# The orders plugin's UI remote into plugins/orders/ui/dist, which the plugin serves itself: its gRPC-Web
# client generated from the proto by protoc-gen-es (with grpcio-tools' protoc from the venv), type-checked,
# and built with the shell's toolchain (shell-web/scripts/build-remote.mjs).
$(ORDERS_UI_STAMP): $(PY_STAMP) $(WEB_STAMP) proto/upf/orders/v1/orders.proto $(ORDERS_UI_DIR)/package.json \
		$(ORDERS_UI_DIR)/package-lock.json $(ORDERS_UI_DIR)/tsconfig.json $(wildcard $(ORDERS_UI_DIR)/src/*.ts*) \
		$(wildcard $(ORDERS_UI_DIR)/src/*.css)
	cd $(ORDERS_UI_DIR) && npm ci --no-audit --no-fund --loglevel=error && PYTHON=$(CURDIR)/$(BIN)/python npm run --silent build
	touch $@

orders-ui: $(ORDERS_UI_STAMP)

# Debian packages the suite runs: Chromium for the browser tests (tests/shell, driven by playwright-core;
# no browser download) and memcached, which the cache suite starts on ports of its own. Installed once,
# when missing.
system-packages:
	@missing=""; test -x $(CHROMIUM) || missing="$$missing chromium"; \
	  command -v memcached >/dev/null || missing="$$missing memcached"; \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

run: $(PY_STAMP) $(WEB_STAMP) $(ORDERS_UI_STAMP)
	$(BIN)/upf run

# On every core (pytest-xdist), a test file per worker at a time: most tests start processes and wait on
# them, so two workers on two cores cut the suite from about 21 to 8 minutes. Each worker reserves ports from its own range
# (tests/support/processes.py) and every test keeps its own databases, key prefixes and subjects.
test: $(PY_STAMP) $(JS_STAMP) $(SDK_STAMP) $(WEB_STAMP) $(ORDERS_UI_STAMP) system-packages check
	$(BIN)/pytest -n auto --dist loadfile

# The in-process tier alone (no processes, no local servers, no Node): about 600 tests in 20 s. Markers are
# set by tests/conftest.py from what each test uses; `-m process` and `-m js` select the other tiers.
test-unit: $(PY_STAMP)
	$(BIN)/pytest -m "not process and not js"

# A long fuzzing run of every decoder of outside bytes (tests/fuzz): 20,000 derived inputs each by default
# (UPF_FUZZ_EXAMPLES); `make test` runs 300 each. An input that fails goes into tests/fuzz/corpus/<target>/.
fuzz: $(PY_STAMP)
	UPF_FUZZ_EXAMPLES=$${UPF_FUZZ_EXAMPLES:-20000} $(BIN)/pytest tests/fuzz -q -p no:cacheprovider --durations=0 --timeout 3600

# The IFiles suite's large stream with 1 GiB instead of the default suite's 128 MiB (several minutes).
test-files-large: $(PY_STAMP)
	UPF_FILES_LARGE_MIB=1024 $(BIN)/pytest tests/conformance/files -k large --timeout 1800 -s

check: $(PY_STAMP) docker-check
	$(UV) lock --check --python $(PYTHON) --quiet
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# docker/ through maintained validators, with no container engine and no download (tests/ops checks
# the same and more): hadolint, the compose-spec schema, the Kubernetes schemas in strict mode.
docker-check: $(PY_STAMP)
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml docker/compose.base.yaml
	$(BIN)/kubernetes-validate --strict --quiet docker/kubernetes/*.yaml

format: $(PY_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto: $(PY_STAMP)
	$(BIN)/python proto/generate.py

# The manifest's JSON Schema, generated from manifests/model.py (a test fails when it is stale).
schema: $(PY_STAMP)
	$(BIN)/python -m manifests.schema

# The README's configuration tables, from the settings models' field descriptions (a test fails when stale).
docs: $(PY_STAMP)
	$(BIN)/python -m cli.docs

bench: $(PY_STAMP)
	@command -v wrk >/dev/null && command -v h2load >/dev/null || { \
	  echo "bench: installing wrk and h2load (Debian packages wrk, nghttp2-client)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client >/dev/null; }
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(UV_VENV) $(JS_DIR)/node_modules $(SDK_DIR)/node_modules $(SDK_DIR)/dist \
	  $(WEB_DIR)/node_modules $(WEB_DIR)/dist $(ORDERS_UI_DIR)/node_modules $(ORDERS_UI_DIR)/dist \
	  $(ORDERS_UI_DIR)/src/gen .mypy_cache .ruff_cache .pytest_cache
