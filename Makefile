# The two commands: `make run` and `make test`. Both bootstrap a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
CONFIG ?= deploy/dicomnode.example.yaml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint peers bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned: that exact version is the local CPU build; the package
# itself declares a compatible range so GPU sites bring their own build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/dicomnode config check $(CONFIG)
	$(VENV)/bin/dicomnode serve -c $(CONFIG)

# The real peers the tests start on loopback: DCMTK, Orthanc, dicom3tools, PixelMed's
# SR validator.
peers:
	@if ! command -v storescu >/dev/null || ! command -v dcmsend >/dev/null \
	    || ! [ -x /usr/sbin/Orthanc ] || ! command -v dciodvfy >/dev/null \
	    || ! command -v DicomSRValidator >/dev/null; then \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dcmtk orthanc dicom3tools \
	        pixelmed-apps; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check dicomnode pipelines tests bench models
	$(VENV)/bin/ruff format --check dicomnode pipelines tests bench models
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: peers $(STAMP) lint
	$(VENV)/bin/pytest

bench: peers $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/pipeline.py
	$(PY) bench/e2e.py
	$(PY) bench/cxr.py

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
