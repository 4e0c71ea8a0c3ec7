# tickreplay: `make demo` runs a real backtest end to end; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TR     := $(VENV)/bin/tickreplay
STAMP  := $(VENV)/.installed

.PHONY: setup sandbox system-deps test test-unit bench demo chaos lint clean openapi load runner-image runner-lock

setup: $(STAMP) sandbox

# Debian packages the runner and its tests need, installed when missing and we are root:
# bubblewrap (the runner's sandbox: no network, no key, one writable dir), docker-registry
# (a real OCI registry for the strategy-image tests), podman with runc and its helpers, and
# debootstrap (the runner image's local base: nothing can be pulled here), and kubectl where an
# apt source has it (`kubectl kustomize` renders deploy/ for its tests). podman as root needs
# runner_image/containers.conf (runc, cgroupfs, file events, ulimits it can grant), written to
# /etc/containers when none is there. Without them runners run unsandboxed and those tests are
# skipped, saying why.
DEBS := bubblewrap docker-registry podman buildah runc catatonit fuse-overlayfs slirp4netns \
        uidmap containernetworking-plugins skopeo debootstrap
sandbox system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get install -y -q $$missing >/dev/null 2>&1 || \
	      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null 2>&1)) \
	  || echo "warning: could not install$$missing"; }
	@command -v kubectl >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q kubectl \
	  >/dev/null 2>&1; } || echo "warning: no kubectl (the deploy/ manifest tests will skip)"
	@[ "$$(id -u)" != 0 ] || [ -f /etc/containers/containers.conf ] || \
	  { mkdir -p /etc/containers && cp runner_image/containers.conf /etc/containers/; }

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The podman backend's tests run this checkout's runner image: built first (skipped when
# current, and where podman cannot run), so its ~2 min first build is not test time. Two
# pytest workers, a test file each (module fixtures stay per file): most integration tests
# wait on heartbeats and timeouts, so two in parallel fit two cores.
test: setup
	$(PY) runner_image/build.py --if-possible
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench: setup
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_temporal.py

# Faults against the durable stack; every job must end with the uninterrupted hash. Variables:
# ROUNDS (worker SIGKILLs in run_backtest, default 3), OUTAGE_S (S3 outage, default 900 s),
# TEMPORAL_DOWN_S (default 60 s), SCENARIOS (default all: warm,run,publish,runner,reclaim,foreign,
# temporal,s3; reclaim = SIGTERM to the runner, a spot reclaim with notice). E.g. `make chaos OUTAGE_S=60` (quick, ~12 min) or `make chaos SCENARIOS=run ROUNDS=20`.
chaos: setup
	$(PY) tests/integration/chaos.py --rounds $(or $(ROUNDS),3) --outage-s $(or $(OUTAGE_S),900) \
	  --temporal-down-s $(or $(TEMPORAL_DOWN_S),60) --scenarios $(or $(SCENARIOS),all)

# The REST API's OpenAPI document, committed (a test fails when it is stale).
openapi: setup
	$(PY) -c "import json; from sqlalchemy import create_engine; \
	from tickreplay.api.rest import create_app; from tickreplay.db.store import MetaStore; \
	print(json.dumps(create_app(MetaStore(create_engine('sqlite://'))).openapi(), indent=2, sort_keys=True))" \
	  > docs/openapi.json

# The gRPC job API's code, generated from protos/ into src/tickreplay/v1 and committed
# (tests/unit/test_proto_codegen.py fails when it is stale). grpcio-tools is pinned in pyproject.
.PHONY: proto
proto: setup
	$(PY) -m grpc_tools.protoc -I protos --python_out=src --pyi_out=src --grpc_python_out=src \
	  protos/tickreplay/v1/jobs.proto

# 200 jobs submitted at once through the REST API by 4 users on a fresh embedded stack:
# all must succeed; prints submit latency, wall time and the peak RUNNING per user.
load: setup
	$(PY) benchmarks/load.py --jobs $(or $(JOBS),200) --users $(or $(USERS),4)

# The runner's container image, built offline with podman (local Debian base, locked
# wheelhouse); skipped when its inputs have not changed. `runner-lock` re-pins the lock.
runner-image: setup
	$(PY) runner_image/build.py

runner-lock: setup
	$(PY) runner_image/build.py --lock

demo: setup
	$(PY) -m tickreplay.cli.demo

# ruff, the import-layer contracts (pyproject [tool.importlinter]) and mypy on engine/,
# workflows/ and runner/ ([tool.mypy]). CI runs it before the tests.
lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks runner_image
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

clean:
	rm -rf demo-data demo-results bench-results .pytest_cache
