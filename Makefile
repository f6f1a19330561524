# kvm-net: build static helpers, run the test suite, run the demo.
#   make demo    set up, build, boot one VM through kvm-natup in throwaway namespaces
#   make test    set up, build, run every test (needs root: it makes network namespaces)
#   make build   static, stripped helpers and kvm-net in $(BIN_DIR)
SHELL := /bin/bash
CARGO ?= cargo
MUSL := x86_64-unknown-linux-musl
GNU := x86_64-unknown-linux-gnu
# musl when installed (tests/setup.sh adds it), else glibc linked statically.
TARGET := $(shell rustup target list --installed 2>/dev/null | grep -qx $(MUSL) && echo $(MUSL) || echo $(GNU))
STATIC_FLAGS := $(if $(filter $(GNU),$(TARGET)),-C target-feature=+crt-static)
BIN_DIR := target/$(TARGET)/release
HELPERS := kvm-ifup kvm-ifdown kvm-natup kvm-natdown
BINARIES := $(HELPERS) kvm-net
TEST_THREADS ?= 4

.PHONY: all setup build guest demo run-demo test check clean

all: build

setup:
	@tests/setup.sh

build:
	@echo "make: building static binaries for $(TARGET)$(if $(STATIC_FLAGS), (glibc +crt-static: the musl target is not installed))"
	RUSTFLAGS="$(STATIC_FLAGS)" $(CARGO) build --release --locked --target $(TARGET) -p kvm-net-helpers -p kvm-net-admin
	@ls -l $(addprefix $(BIN_DIR)/,$(BINARIES)) | awk '{printf "make: %-40s %8d bytes\n", $$9, $$5}'

# The test guest (Debian cloud kernel + busybox initramfs), built once into target/guest.
guest:
	@tests/guest/build.sh target/guest

demo: setup
	@$(MAKE) --no-print-directory run-demo

run-demo: build guest
	@$(CARGO) build --quiet --locked -p kvm-net-tests --bin kvm-net-demo
	@KVM_NET_BIN_DIR=$(CURDIR)/$(BIN_DIR) target/debug/kvm-net-demo

# Runs setup first, then re-enters make so that TARGET sees what setup installed.
test: setup
	@$(MAKE) --no-print-directory check

# Ends with one summed-up line over every test binary cargo ran.
check: build guest
	@set -o pipefail; KVM_NET_BIN_DIR=$(CURDIR)/$(BIN_DIR) $(CARGO) test --workspace --locked -- --test-threads=$(TEST_THREADS) 2>&1 \
	  | tee target/test.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "all tests: %d passed, %d failed\n", p, f }' target/test.log

clean:
	$(CARGO) clean
