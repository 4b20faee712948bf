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
# What virtual machines need: QEMU, and the tools that build the test guest's bootable disk image;
# docker-registry and skopeo: the registry containerDisk pull tests push the test guest into.
VM_APT_PACKAGES := qemu-system-x86 qemu-utils xorriso isolinux syslinux-common iproute2 nftables busybox-static ovmf grub-efi-amd64-bin mtools docker-registry skopeo nfs-ganesha nfs-ganesha-vfs rpcbind qemu-block-extra ceph-mon ceph-osd ceph-mgr radosgw

.PHONY: install apt-vm lint test test-fast up bench bench-vm clean

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

# `make up`: the single-node platform with the demo VM (DEMO= to start without it). The test guest is built
# (cached after the first time) and served to the node's image mirror as kubevisor/test-guest:latest.
DEMO ?= examples/demo-vm.yaml
DEMO_IMAGE := kubevisor/test-guest:latest
up: install
	@if [ -n "$(DEMO)" ]; then \
	  disk=$$($(PY) -c 'from kubevisor.testing import guest; print(guest.build().disk)') || exit 1; \
	  demo_args="--image-mirror $(DEMO_IMAGE)=$$disk --demo $(DEMO)"; fi; \
	exec $(VENV)/bin/kubevisor up --data-dir $(DATA_DIR) --listen $(LISTEN) $$demo_args $(UP_ARGS)

bench: install
	$(PY) bench/api.py

# VM benchmarks (real guests under QEMU): start latency vs bare QEMU, density, memory footprint.
# DENSITY_COUNT=20 scales density down on small machines.
DENSITY_COUNT ?= 100
bench-vm: install
	$(PY) bench/vm_start.py
	$(PY) bench/footprint.py
	$(PY) bench/density.py --count $(DENSITY_COUNT)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
