# Relay. `make demo` runs the main job, `make test` runs every test tier; both set up what they need.
SHELL := /bin/bash
SWIFT ?= swift
PREFIX ?= /usr/local
DESTDIR ?=
CONFIGURATION ?= debug
# Debian packages the build, the tests, the demo and the benchmarks use.
# PyPI packages the tests use as independent peers (Noise IK; WebSocket over HTTP/1.1 and HTTP/2).
PIP_PACKAGES := noiseprotocol==0.3.1 websockets==17.4 h2==4.4.1
DEB_PACKAGES := libc6-dev-arm64-cross libmnl-dev libnftnl-dev libssl-dev libsqlite3-dev nftables iproute2 ethtool iputils-ping conntrack socat iperf3 util-linux coreutils procps pkg-config curl tcpdump coturn stun-client stunnel4 openssl traceroute iputils-tracepath tayga python3-scapy
BIN_DIR = $(shell $(SWIFT) build -c $(CONFIGURATION) --show-bin-path 2>/dev/null)
TEST_ENV = RELAY_BIN_DIR=$(BIN_DIR)


.PHONY: all deps build test check-cross test-unit test-component test-kernel test-sanitize fuzz bench demo demo-clean clean install uninstall lab-clean

all: build

## Installs missing Debian packages (apt-get update once, only when something is missing).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing — run 'sudo make deps' or install them" >&2; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@python3 -c 'import noise, websockets, h2' 2>/dev/null || { echo "installing PyPI: $(PIP_PACKAGES)"; python3 -m pip install -q --disable-pip-version-check $(PIP_PACKAGES); }

build: deps
	$(SWIFT) build -c $(CONFIGURATION)

## Unit (no root) · component (real sockets, no root) · kernel (root, throwaway namespaces).
test: build
	$(SWIFT) build --build-tests
	$(MAKE) --no-print-directory check-cross test-unit test-component test-kernel

## The C targets compile for aarch64 (no aarch64 Swift SDK here: clang with Debian's arm64 libc
## headers; OpenSSL's headers are architecture-neutral apart from configuration.h).
CROSS_C := Sources/CRelayCrypto/aead.c Sources/CRelayCrypto/chacha20_avx512.c Sources/CRelayShim/shim.c Sources/CRelayFuzzDriver/driver.c
check-cross:
	@cc=$$(command -v clang); res=$$($$cc -print-resource-dir); \
	for f in $(CROSS_C); do \
	  $$cc --target=aarch64-linux-gnu -nostdinc -isystem $$res/include -isystem /usr/aarch64-linux-gnu/include \
	    -idirafter /usr/include -idirafter /usr/include/x86_64-linux-gnu -I Sources/CRelayCrypto/include -I Sources/CRelayShim/include \
	    -I Sources/CRelayFuzzDriver/include -Wall -Werror -c $$f -o /dev/null || { echo "check-cross: $$f does not build for aarch64"; exit 1; }; \
	done; echo "check-cross: $(words $(CROSS_C)) C files build for aarch64"

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

## Unit and component tiers with AddressSanitizer (Swift and the C shims), then ThreadSanitizer;
## each in its own build directory. Not part of `make test` (two more full builds).
SANITIZE_FILTER := RelayUnitTests|RelayComponentTests
test-sanitize: deps
	$(SWIFT) build --build-tests --build-path .build/asan -Xswiftc -sanitize=address -Xcc -fsanitize=address
	RELAY_BIN_DIR=$$($(SWIFT) build --build-path .build/asan --show-bin-path) ASAN_OPTIONS=detect_leaks=0 \
	  $(SWIFT) test --skip-build --build-path .build/asan --filter '$(SANITIZE_FILTER)'
	$(SWIFT) build --build-tests --build-path .build/tsan -Xswiftc -sanitize=thread -Xcc -fsanitize=thread
	RELAY_BIN_DIR=$$($(SWIFT) build --build-path .build/tsan --show-bin-path) TSAN_OPTIONS=halt_on_error=1 \
	  $(SWIFT) test --skip-build --build-path .build/tsan --filter '$(SANITIZE_FILTER)'

## Coverage-guided fuzzing (libFuzzer, with AddressSanitizer) of every decoder that faces the
## network or the privilege boundary, FUZZ_SECONDS per target. Seeds: Fuzz/corpus/TARGET (new
## inputs go to .build/fuzz/work/TARGET); a crash stops the run and is kept as
## .build/fuzz/crash-TARGET-*: copy it to Fuzz/crashes/TARGET/, where the unit tests replay it.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := helper-request helper-policy stun tunnel relayd-config relay path
fuzz: deps
	$(SWIFT) build --build-path .build/fuzz --product relay-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DRELAY_LIBFUZZER -Xcc -DRELAY_LIBFUZZER -Xswiftc -use-ld=lld
	@bin=$$($(SWIFT) build --build-path .build/fuzz --show-bin-path)/relay-fuzz; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p .build/fuzz/work/$$t; \
	  echo "fuzz $$t: $(FUZZ_SECONDS) s"; \
	  if ! RELAY_FUZZ_TARGET=$$t ASAN_OPTIONS=detect_leaks=0 $$bin -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
	       -print_final_stats=1 -artifact_prefix=.build/fuzz/crash-$$t- .build/fuzz/work/$$t Fuzz/corpus/$$t > .build/fuzz/$$t.log 2>&1; then \
	    tail -60 .build/fuzz/$$t.log; echo "fuzz $$t: FAILED (input kept as .build/fuzz/crash-$$t-*)"; exit 1; fi; \
	  grep -E "stat::number_of_executed_units|stat::new_units_added" .build/fuzz/$$t.log | tr '\n' ' '; echo; \
	done; echo "fuzz: $(words $(FUZZ_TARGETS)) targets, no crash"

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
