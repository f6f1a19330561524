# kvm-net: build static helpers, run the test suite, run the demo, install.
#   make demo          set up, build, boot one VM through kvm-natup in throwaway namespaces
#   make test          set up, build, run every test (needs root: it makes network namespaces)
#   make build         static, stripped helpers and kvm-net in $(BIN_DIR); the NSS module
#                      libnss_kvmnet.so.2 (the one shared library) in $(NSS_DIR)
#   make install       DESTDIR, PREFIX (/usr/local), LIBEXECDIR, BINDIR, SBINDIR, MANDIR, DOCDIR, SYSCONFDIR,
#                      LIBDIR (NSS module), SYSTEMDUNITDIR, BRIDGE_HELPER_MODE (4755: setuid root)
#   make uninstall     removes exactly what install put there
#   make qemu-dropin   /etc/qemu-ifup and /etc/qemu-ifdown run kvm-ifup/kvm-ifdown (reversible:
#   make qemu-dropin-remove)
#   make deb, make rpm, make package-test
#   make bench         timings against the classic scripts and the kernel floor (docs/performance.md)
SHELL := /bin/bash
CARGO ?= cargo
MUSL := x86_64-unknown-linux-musl
GNU := x86_64-unknown-linux-gnu
# musl when installed (tests/setup.sh adds it), else glibc linked statically.
TARGET := $(shell rustup target list --installed 2>/dev/null | grep -qx $(MUSL) && echo $(MUSL) || echo $(GNU))
# Static, and not position-independent: a static-pie is an ET_DYN object that
# packaging tools mistake for a shared library.
STATIC_FLAGS := -C relocation-model=static $(if $(filter $(GNU),$(TARGET)),-C target-feature=+crt-static)
BIN_DIR := target/$(TARGET)/release
HELPERS := kvm-ifup kvm-ifdown kvm-natup kvm-natdown kvm-net-bridge-helper kvm-net-lease
# The bridge helper serves QEMU run by ordinary users, so it is installed setuid
# root; it grants nothing that the config file does not (docs/security.md).
BRIDGE_HELPER_MODE ?= 4755
BINARIES := $(HELPERS) kvm-net
TEST_THREADS ?= 4
# The NSS module: a workspace of its own, for the host's glibc (loaded into
# every process that resolves a name), not static.
NSS_CRATE := crates/kvm-net-nss
NSS_DIR := target/nss/release
NSS_MODULE := libnss_kvmnet.so.2
# Cases of the module's parser fuzzing (proptest over arbitrary bytes) in make check.
NSS_FUZZ_CASES ?= 20000

PREFIX ?= /usr/local
LIBEXECDIR ?= $(PREFIX)/libexec
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/kvm-net
# systemd's unit directory for this prefix (/usr/lib/systemd/system for /usr).
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
# Where glibc looks for NSS modules: the multiarch directory on Debian and
# its derivatives, lib64 elsewhere (the .rpm passes /usr/lib64).
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null)
LIBDIR ?= $(if $(MULTIARCH),$(PREFIX)/lib/$(MULTIARCH),$(PREFIX)/lib64)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAN_PAGES := man1/kvm-net.1 man5/kvm-net.toml.5 man8/kvm-natup.8 man8/kvm-natdown.8 man8/kvm-ifup.8 \
	man8/kvm-ifdown.8 man8/kvm-net-qemu-dropin.8 man8/kvm-net-bridge-helper.8 man8/kvm-net-lease.8
INSTALLED := $(addprefix $(LIBEXECDIR)/,$(HELPERS)) $(BINDIR)/kvm-net $(SBINDIR)/kvm-net-qemu-dropin \
	$(addprefix $(MANDIR)/,$(MAN_PAGES)) $(DOCDIR)/kvm-net.toml.example $(DOCDIR)/README.md \
	$(SYSTEMDUNITDIR)/kvm-net.service $(LIBDIR)/$(NSS_MODULE)

.PHONY: all bench setup build guest demo run-demo test check clean install uninstall qemu-dropin qemu-dropin-remove deb rpm package-test

all: build

setup:
	@tests/setup.sh

build:
	@echo "make: building static binaries for $(TARGET)$(if $(filter $(GNU),$(TARGET)), (glibc +crt-static: the musl target is not installed))"
	RUSTFLAGS="$(STATIC_FLAGS)" $(CARGO) build --release --locked --target $(TARGET) -p kvm-net-helpers -p kvm-net-admin
	$(CARGO) build --release --locked --manifest-path $(NSS_CRATE)/Cargo.toml --target-dir target/nss
	@cp $(NSS_DIR)/libnss_kvmnet.so $(NSS_DIR)/$(NSS_MODULE)
	@ls -l $(addprefix $(BIN_DIR)/,$(BINARIES)) $(NSS_DIR)/$(NSS_MODULE) | awk '{printf "make: %-40s %8d bytes\n", $$9, $$5}'

# The test guest (Debian cloud kernel + busybox initramfs), built once into target/guest.
guest:
	@tests/guest/build.sh target/guest

demo: setup
	@$(MAKE) --no-print-directory run-demo

run-demo: build guest
	@$(CARGO) build --quiet --locked -p kvm-net-tests --bin kvm-net-demo
	@KVM_NET_BIN_DIR=$(CURDIR)/$(BIN_DIR) target/debug/kvm-net-demo

# Benchmarks (never assertions): prints a table and rewrites docs/performance.md.
bench:
	@tests/setup.sh --bench
	@$(MAKE) --no-print-directory build >/dev/null
	@$(CARGO) build --quiet --release --locked -p kvm-net-tests --bin bridge-helper-driver --bin attach-driver --bin conn-rate
	KVM_NET_BIN_DIR=$(CURDIR)/$(BIN_DIR) benches/run.sh

# Runs setup first, then re-enters make so that TARGET sees what setup installed.
test: setup
	@$(MAKE) --no-print-directory check

# Everything once with the nftables backend, then the namespace and QEMU
# suites again with the iptables backend. Ends with one summed-up line over
# every test binary cargo ran.
check: build guest
	@echo "make: tests with the nftables backend"
	@set -o pipefail; KVM_NET_BIN_DIR=$(CURDIR)/$(BIN_DIR) KVM_NET_TEST_FIREWALL=nftables \
	  $(CARGO) test --workspace --locked -- --test-threads=$(TEST_THREADS) 2>&1 | tee target/test.log
	@echo "make: the namespace and QEMU suites with the iptables backend"
	@set -o pipefail; KVM_NET_BIN_DIR=$(CURDIR)/$(BIN_DIR) KVM_NET_TEST_FIREWALL=iptables \
	  $(CARGO) test --locked -p kvm-net-tests --tests -- --test-threads=$(TEST_THREADS) 2>&1 | tee -a target/test.log
	@echo "make: the NSS module's own tests, its parser fuzzed over $(NSS_FUZZ_CASES) cases of arbitrary bytes"
	@set -o pipefail; PROPTEST_CASES=$(NSS_FUZZ_CASES) $(CARGO) test --locked --manifest-path $(NSS_CRATE)/Cargo.toml \
	  --target-dir target/nss --lib 2>&1 | tee -a target/test.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "all tests: %d passed, %d failed\n", p, f }' target/test.log

# Installs what `make build` made; builds nothing itself, so that it can run as
# root after an unprivileged build.
install:
	@test -x $(BIN_DIR)/kvm-natup -a -f $(NSS_DIR)/$(NSS_MODULE) || { echo "make: run 'make build' first" >&2; exit 1; }
	install -d $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 $(addprefix $(BIN_DIR)/,$(HELPERS)) $(DESTDIR)$(LIBEXECDIR)/
	chmod $(BRIDGE_HELPER_MODE) $(DESTDIR)$(LIBEXECDIR)/kvm-net-bridge-helper
	install -m 0755 $(BIN_DIR)/kvm-net $(DESTDIR)$(BINDIR)/kvm-net
	sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|' packaging/kvm-net-qemu-dropin.in > $(DESTDIR)$(SBINDIR)/kvm-net-qemu-dropin
	chmod 0755 $(DESTDIR)$(SBINDIR)/kvm-net-qemu-dropin
	for page in $(MAN_PAGES); do \
	  install -d $(DESTDIR)$(MANDIR)/$$(dirname $$page); \
	  install -m 0644 docs/man/$$(basename $$page) $(DESTDIR)$(MANDIR)/$$page; \
	done
	install -m 0644 docs/examples/kvm-net.toml $(DESTDIR)$(DOCDIR)/kvm-net.toml.example
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -d $(DESTDIR)$(SYSTEMDUNITDIR)
	sed 's|@BINDIR@|$(BINDIR)|' packaging/kvm-net.service.in > $(DESTDIR)$(SYSTEMDUNITDIR)/kvm-net.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/kvm-net.service
	install -d $(DESTDIR)$(LIBDIR)
	install -m 0644 $(NSS_DIR)/$(NSS_MODULE) $(DESTDIR)$(LIBDIR)/$(NSS_MODULE)
	@if [ -z "$(DESTDIR)" ] && command -v ldconfig >/dev/null; then ldconfig; fi
	@echo "make: to resolve guests' names on this host, add kvmnet to the hosts line of /etc/nsswitch.conf (hosts: files kvmnet dns)"

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null

qemu-dropin:
	SYSCONFDIR=$(SYSCONFDIR) $(DESTDIR)$(SBINDIR)/kvm-net-qemu-dropin enable

qemu-dropin-remove:
	SYSCONFDIR=$(SYSCONFDIR) $(DESTDIR)$(SBINDIR)/kvm-net-qemu-dropin disable

deb: build
	packaging/debian/build-deb.sh $(BIN_DIR) $(VERSION)

rpm: build
	packaging/rpm/build-rpm.sh $(BIN_DIR) $(VERSION)

# Builds the .deb, installs it, runs the QEMU NAT scenario against
# /usr/libexec/kvm-natup, then purges it and checks nothing is left.
package-test: deb guest
	packaging/package-test.sh target/kvm-net_$(VERSION)_amd64.deb

clean:
	$(CARGO) clean
