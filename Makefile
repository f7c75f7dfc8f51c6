# Relay. `make demo` runs the main job, `make test` runs every test tier; both set up what they need.
SHELL := /bin/bash
SWIFT ?= swift
PREFIX ?= /usr/local
DESTDIR ?=
CONFIGURATION ?= debug
# Debian packages the build, the tests, the demo and the benchmarks use.
# PyPI packages the tests use as independent peers (Noise IK).
PIP_PACKAGES := noiseprotocol==0.3.1
DEB_PACKAGES := libmnl-dev libnftnl-dev libssl-dev nftables iproute2 ethtool iputils-ping conntrack socat iperf3 util-linux coreutils procps pkg-config curl tcpdump coturn stun-client stunnel4 openssl traceroute iputils-tracepath tayga python3-scapy
BIN_DIR = $(shell $(SWIFT) build -c $(CONFIGURATION) --show-bin-path 2>/dev/null)
TEST_ENV = RELAY_BIN_DIR=$(BIN_DIR)

.PHONY: all deps build test test-unit test-component test-kernel bench demo demo-clean clean install uninstall lab-clean

all: build

## Installs missing Debian packages (apt-get update once, only when something is missing).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing — run 'sudo make deps' or install them" >&2; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@python3 -c 'import noise' 2>/dev/null || { echo "installing PyPI: $(PIP_PACKAGES)"; python3 -m pip install -q --disable-pip-version-check $(PIP_PACKAGES); }

build: deps
	$(SWIFT) build -c $(CONFIGURATION)

## Unit (no root) · component (real sockets, no root) · kernel (root, throwaway namespaces).
test: build
	$(SWIFT) build --build-tests
	$(MAKE) --no-print-directory test-unit test-component test-kernel

test-unit:
	$(TEST_ENV) $(SWIFT) test --skip-build --filter RelayUnitTests
test-component:
	$(TEST_ENV) $(SWIFT) test --skip-build --filter RelayComponentTests
test-kernel:
	@ip netns list 2>/dev/null | awk '/^rlab-/ {print $$1}' | sort > .kernel-netns-before || true
	$(TEST_ENV) $(SWIFT) test --skip-build --no-parallel --filter RelayKernelTests
	@ip netns list 2>/dev/null | awk '/^rlab-/ {print $$1}' | sort > .kernel-netns-after || true; \
	left=$$(comm -13 .kernel-netns-before .kernel-netns-after); rm -f .kernel-netns-before .kernel-netns-after; \
	if [ -n "$$left" ]; then echo "kernel tests left namespace(s) behind:"; echo "$$left"; exit 1; fi

bench: build
	$(SWIFT) build -c release --product relay-lab
	$(SWIFT) build -c release
	RELAY_BIN_DIR=$$($(SWIFT) build -c release --show-bin-path) $$($(SWIFT) build -c release --show-bin-path)/relay-lab bench

demo: build
	RELAY_BIN_DIR=$(BIN_DIR) $(BIN_DIR)/relay-lab demo $(if $(KEEP),--keep,)

demo-clean: build
	RELAY_BIN_DIR=$(BIN_DIR) $(BIN_DIR)/relay-lab demo --down

## Removes namespaces left by crashed test runs (only the harness's own).
lab-clean:
	$(BIN_DIR)/relay-lab clean

clean:
	rm -rf .build

install:
	$(SWIFT) build -c release
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/libexec/relay $(DESTDIR)/etc/relay
	install -m 0755 $$($(SWIFT) build -c release --show-bin-path)/relayd $(DESTDIR)$(PREFIX)/bin/relayd
	install -m 0755 $$($(SWIFT) build -c release --show-bin-path)/relayctl $(DESTDIR)$(PREFIX)/bin/relayctl
	install -m 0750 $$($(SWIFT) build -c release --show-bin-path)/relay-helper $(DESTDIR)$(PREFIX)/libexec/relay/relay-helper
	test -e $(DESTDIR)/etc/relay/helper.toml || install -m 0644 policies/helper.toml $(DESTDIR)/etc/relay/helper.toml
	install -d $(DESTDIR)/lib/systemd/system $(DESTDIR)/usr/lib/sysusers.d $(DESTDIR)/usr/lib/tmpfiles.d
	sed 's#@PREFIX@#$(PREFIX)#g' contrib/systemd/relay-helper.service > $(DESTDIR)/lib/systemd/system/relay-helper.service
	sed 's#@PREFIX@#$(PREFIX)#g' contrib/systemd/relayd.service > $(DESTDIR)/lib/systemd/system/relayd.service
	install -m 0644 contrib/relayd.toml $(DESTDIR)/etc/relay/relayd.toml.example
	install -m 0644 contrib/systemd/relay.sysusers $(DESTDIR)/usr/lib/sysusers.d/relay.conf
	install -m 0644 contrib/systemd/relay.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/relay.conf
	@if [ -z "$(DESTDIR)" ]; then \
	  setcap cap_net_admin+ep $(PREFIX)/libexec/relay/relay-helper && echo "relay-helper: cap_net_admin+ep"; \
	else echo "DESTDIR set: run 'setcap cap_net_admin+ep $(PREFIX)/libexec/relay/relay-helper' on the target"; fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/relayd $(DESTDIR)$(PREFIX)/bin/relayctl $(DESTDIR)$(PREFIX)/libexec/relay/relay-helper
	-rmdir $(DESTDIR)$(PREFIX)/libexec/relay
	rm -f $(DESTDIR)/lib/systemd/system/relay-helper.service $(DESTDIR)/lib/systemd/system/relayd.service $(DESTDIR)/etc/relay/relayd.toml.example $(DESTDIR)/usr/lib/sysusers.d/relay.conf $(DESTDIR)/usr/lib/tmpfiles.d/relay.conf
	@echo "kept /etc/relay (your policy and config); remove it by hand if you want"
