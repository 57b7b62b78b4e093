# The two README commands. Each bootstraps a fresh Debian machine by itself (as root):
# apt packages only when missing, a venv in .venv, the package installed editable.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# command -> Debian package providing it
APT_NEEDS := nft:nftables iptables:iptables conntrack:conntrack dig:dnsutils ip:iproute2 \
             dnsperf:dnsperf unbound:unbound kubectl:kubectl etcd:etcd-server
PYTEST_ARGS ?=

.PHONY: demo test unit integration bootstrap apt clean bench lint

bootstrap: apt $(STAMP)

apt:
	@missing=""; for pair in $(APT_NEEDS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: run as root to install:$$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing || \
	    { echo "warning: some packages could not be installed:$$missing" >&2; }; \
	fi
	@# Debian's unbound package may start a resolver on :53; svcnet's tests bring their own.
	@# Debian's unbound and etcd packages may start services on :53 and :2379/:2380;
	@# svcnet's tests and labs bring their own, on ports of their own.
	@command -v systemctl >/dev/null 2>&1 && systemctl disable --now unbound etcd >/dev/null 2>&1 || true

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) || { apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	@$(PY) -m pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: bootstrap
	$(PY) -m pytest tests $(PYTEST_ARGS)

unit: bootstrap
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: bootstrap
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: bootstrap
	$(PY) -m mypy svcnet

demo: bootstrap
	$(PY) -m svcnet.lab.walkthrough $(TOPOLOGY)

bench: bootstrap
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
