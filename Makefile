# The two commands: `make run` and `make test`. Both bootstrap a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
# the torchvision of that torch: nnunetv2 needs timm, timm needs torchvision, and an
# unpinned torchvision would bring another torch
TORCHVISION_VERSION := 0.28.0
CONFIG ?= deploy/dicomnode.example.yaml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-postgres fuzz lint peers ohif ohif-dist bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned: that exact version is the local CPU build; the package
# itself declares a compatible range so GPU sites bring their own build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"
	$(PIP) install --quiet -e ".[test,nnunet,onnx]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/dicomnode config check $(CONFIG)
	@$(PY) -c "import sys; from dicomnode.config import load_config; \
	s = load_config(sys.argv[1]).console; \
	print(f'console: http://{s.host}:{s.port}/' if s.enabled else 'console: off (console.enabled)'); \
	print('first user: .venv/bin/dicomnode users add NAME --role admin -c $(CONFIG)')" $(CONFIG)
	$(VENV)/bin/dicomnode serve -c $(CONFIG)

# The real peers the tests start on loopback: DCMTK, Orthanc (with its DICOMweb
# plugin), dicom3tools, PixelMed's SR validator, openssl (the TLS tests' certificates),
# redis-server (the Celery broker of runner.executor: celery), PostgreSQL (the shared job
# store), and Chromium with npm for the viewer test. The tests run their own PostgreSQL
# server (tests/postgres_server.py: initdb in a temporary folder, a free port of
# 127.0.0.1); the cluster Debian's package makes, and may start, on port 5432 is never used.
peers:
	@if ! command -v storescu >/dev/null || ! command -v dcmsend >/dev/null \
	    || ! [ -x /usr/sbin/Orthanc ] || ! command -v dciodvfy >/dev/null \
	    || ! [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
	    || ! command -v DicomSRValidator >/dev/null \
	    || ! command -v chromium >/dev/null || ! command -v openssl >/dev/null \
	    || ! command -v redis-server >/dev/null \
	    || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	        dcmtk orthanc orthanc-dicomweb dicom3tools pixelmed-apps chromium openssl \
	        redis-server postgresql; \
	fi
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq npm; }

# OHIF, the web viewer of tests/results/test_ohif.py: the prebuilt app of the npm
# package @ohif/app, pinned by version and checksum, unpacked into an ignored folder
# (nothing of OHIF is committed). Idempotent: done once per version.
OHIF_VERSION := 3.13.2
OHIF_SHA256 := b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1
OHIF_DIR := .cache/ohif/$(OHIF_VERSION)

ohif: $(OHIF_DIR)/dist/index.html

$(OHIF_DIR)/dist/index.html:
	rm -rf $(OHIF_DIR).part && mkdir -p $(OHIF_DIR).part
	cd $(OHIF_DIR).part && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null
	echo "$(OHIF_SHA256)  $(OHIF_DIR).part/ohif-app-$(OHIF_VERSION).tgz" | sha256sum -c --quiet
	tar -xzf $(OHIF_DIR).part/ohif-app-$(OHIF_VERSION).tgz -C $(OHIF_DIR).part \
	    --strip-components=1 package/dist
	rm $(OHIF_DIR).part/ohif-app-$(OHIF_VERSION).tgz
	rm -rf $(OHIF_DIR) && mv $(OHIF_DIR).part $(OHIF_DIR)

# Where the viewer test finds OHIF (installing it first when needed).
ohif-dist: ohif
	@echo "$(abspath $(OHIF_DIR)/dist)"

lint: $(STAMP)
	$(VENV)/bin/ruff check dicomnode pipelines tests bench models
	$(VENV)/bin/ruff format --check dicomnode pipelines tests bench models
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: peers ohif $(STAMP) lint
	$(VENV)/bin/pytest

# The whole suite with every node's job store on PostgreSQL (a server the tests start
# on loopback) instead of SQLite. `make test` runs the job store's own tests and the
# scale-out tests on both; this runs everything else on PostgreSQL too (about as long).
test-postgres: peers ohif $(STAMP)
	DICOMNODE_TEST_DATABASE=postgresql $(VENV)/bin/pytest

# The property-based tests of tests/fuzz, longer than in `make test`: fresh random
# examples, round after round, for FUZZ_SECONDS per target (three targets), under
# coverage; prints what each target tried and which lines of the fuzzed code ran.
FUZZ_SECONDS ?= 60
FUZZ_COVERED := dicomnode/ingress/integrity.py,dicomnode/ingress/handler.py,$\
	dicomnode/ingress/server.py,dicomnode/config/*.py

fuzz: peers $(STAMP)
	mkdir -p .cache
	COVERAGE_FILE=.cache/fuzz.coverage HYPOTHESIS_PROFILE=fuzz \
	    DICOMNODE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(VENV)/bin/coverage run --branch \
	    --concurrency=thread --include='$(FUZZ_COVERED)' -m pytest -p no:cacheprovider \
	    -W ignore::UserWarning tests/fuzz
	COVERAGE_FILE=.cache/fuzz.coverage $(VENV)/bin/coverage report --show-missing

bench: peers $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/pipeline.py
	$(PY) bench/e2e.py
	$(PY) bench/cxr.py

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache .cache test-artifacts
