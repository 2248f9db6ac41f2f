# sovrfs: the two commands a new user needs are `make demo` and `make test`;
# both install whatever is missing first.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sovrfs
DFS_VERSION := v0.10.1
DFS_BIN := $(CACHE_HOME)/fairos-dfs-$(DFS_VERSION)/dfs
DEMO_MOUNT ?= $(HOME)/sovrfs
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-venv git rsync attr systemd zsh
BENCH_PACKAGES := bindfs rclone

.PHONY: demo test deps system-deps venv lint fmt bench dfs-server dfs-dev docs clean

demo: deps
	$(BIN)/sovrfs demo $(DEMO_MOUNT)

test: deps dfs-server
	$(MAKE) lint
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) docs

deps: system-deps venv

# Debian packages: only installed when something is missing, so the common
# case costs one dpkg query.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES) $(EXTRA_APT); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff format --check sovrfs tests
	$(BIN)/ruff check sovrfs tests
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff format sovrfs tests
	$(BIN)/ruff check --fix sovrfs tests

docs: venv
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

bench: deps dfs-server
	$(MAKE) system-deps APT_PACKAGES="$(BENCH_PACKAGES)"
	$(BIN)/python -m tests.bench $(BENCH_ARGS)
	$(BIN)/python -m tests.bench.dfs $(filter --quick,$(BENCH_ARGS))

# The FairOS-DFS server, built once from its Go module through the small
# wrapper module in tests/dfs_server (upstream's go.mod has a replace line, so
# `go install module@version` refuses it).
dfs-server: $(DFS_BIN)

$(DFS_BIN): tests/dfs_server/go.mod tests/dfs_server/go.sum tests/dfs_server/main.go
	mkdir -p $(dir $@)
	cd tests/dfs_server && GOFLAGS=-mod=mod go build -o $@ .

dfs-dev: dfs-server
	mkdir -p $(CACHE_HOME)/dfs-dev
	$(DFS_BIN) dev --config $(CACHE_HOME)/dfs-dev/dfs.yaml

clean:
	rm -rf $(VENV) docs/_build build *.egg-info
