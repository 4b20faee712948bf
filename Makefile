# kubevisor make targets. Each is idempotent on a fresh Debian 12 machine (run as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= /var/lib/kubevisor
LISTEN ?= 127.0.0.1:6443
UP_ARGS ?=
APT_PACKAGES := python3 python3-venv python3-dev gcc make ca-certificates
# What virtual machines need: QEMU, and the tools that build the test guest's bootable disk image.
VM_APT_PACKAGES := qemu-system-x86 qemu-utils xorriso isolinux syslinux-common iproute2 nftables busybox-static

.PHONY: install apt-vm lint test test-fast up bench clean

install: $(STAMP) apt-vm

# Idempotent: installs only what is missing, and refreshes the package lists when `apt-get download` (the
# test guest's kernel and busybox) could not find the packages.
apt-vm:
	@missing=""; for p in $(VM_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] || ! apt-cache show linux-image-cloud-amd64 busybox-static >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q $(VM_APT_PACKAGES); fi

$(STAMP): pyproject.toml
	@if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q $(APT_PACKAGES); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check kubevisor tests bench
	$(VENV)/bin/ruff format --check kubevisor tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

test-fast: install
	$(VENV)/bin/pytest -q -x -p no:cacheprovider tests/unit

up: install
	$(VENV)/bin/kubevisor up --data-dir $(DATA_DIR) --listen $(LISTEN) $(UP_ARGS)

bench: install
	$(PY) bench/api.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
