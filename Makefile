# idexd: see README.md. `make test` is what CI runs; `make run` starts the
# daemon on an embedded default under ./.run/.
GO            ?= go
GOLANGCI_LINT_VERSION := v2.15.0
BIN           := $(CURDIR)/.bin
LINT          := $(BIN)/golangci-lint
RUNDIR        := $(CURDIR)/.run
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -X github.com/idexd/idexd/internal/version.Version=$(VERSION)

.PHONY: all build go-check test vet lint lint-install run bench fuzz soak clean man completion copyright quota-vm-test
FUZZTIME      ?= 60s

all: build

# Go is not on a fresh machine's PATH even where it is installed: say how.
go-check:
	@command -v $(GO) >/dev/null 2>&1 || { echo "make: '$(GO)' not found: Go 1.26 must be on PATH, e.g. export PATH=\$$PATH:/usr/local/go/bin (or make GO=/usr/local/go/bin/go)" >&2; exit 1; }

build: go-check
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/idexd ./cmd/idexd
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/idexctl ./cmd/idexctl
	cmd/idexd-sandbox/build.sh -o $(BIN)/idexd-sandbox $(VERSION)

# idexctl(1) and the shell completions, printed by idexctl from its command
# table (internal/cli/commands.go); packaged by make package.
man: build
	$(BIN)/idexctl __man > $(BIN)/idexctl.1
	gzip -9nf $(BIN)/idexctl.1

completion: build
	$(BIN)/idexctl completion bash > $(BIN)/idexctl.bash
	$(BIN)/idexctl completion zsh > $(BIN)/_idexctl

# /usr/share/doc/idexd/copyright: idexd's terms and the license of every
# module linked into the binaries (packaging/copyright.sh), and musl's when
# the helper was linked with it.
copyright: build
	GO=$(GO) HELPER=$(BIN)/idexd-sandbox packaging/copyright.sh > $(BIN)/copyright

vet:
	$(GO) vet ./...

$(LINT):
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

lint-install: $(LINT)

lint: $(LINT)
	$(LINT) run ./...

# Root and real cgroups are needed; under CI=true a test that lacks them fails.
test: vet lint build
	$(GO) test -race -count=1 -timeout 30m ./...

# The dev config names root's group as client and admin group, so that
# make run needs no change to the host's groups.
# One cgroup parent per checkout, so that two clones on one host can both
# make run (idexd allows one instance per parent).
DEV_CGROUP    := idexd-dev-$(shell printf '%s' '$(CURDIR)' | cksum | cut -d' ' -f1)

run:
	@if [ "$$(id -u)" != 0 ]; then echo "make run needs root: idexd creates cgroups and runs scripts as per-student uids. Try: sudo env PATH=\"\$$PATH\" make run (sudo resets PATH, and Go must be on it)" >&2; exit 1; fi
	@$(MAKE) --no-print-directory build
	@mkdir -p $(RUNDIR)
	@printf 'client_group = "root"\nadmin_group = "root"\n' > $(RUNDIR)/idexd.toml
	@echo "idexd on $(RUNDIR)/idexd.sock; in another shell try:"
	@echo "  export IDEX_SOCKET=$(RUNDIR)/idexd.sock"
	@echo "  $(BIN)/idexctl student alice"
	@echo "  echo 'print(\"hello\", input(\"name? \"))' | $(BIN)/idexctl files put --student alice hello.py"
	@echo "  $(BIN)/idexctl run --student alice hello.py"
	$(BIN)/idexd --config $(RUNDIR)/idexd.toml --socket $(RUNDIR)/idexd.sock \
		--workdir-root $(RUNDIR)/students --state-dir $(RUNDIR)/state --cgroup-parent $(DEV_CGROUP)

# Benchmarks, never timed tests: go test -bench of a run against a bare
# spawn, then idexbench's side-by-side table (bench/README.md).
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 200x ./internal/run/
	$(GO) build -o $(BIN)/idexbench ./cmd/idexbench
	$(BIN)/idexbench --idexd $(BIN)/idexd --idexctl $(BIN)/idexctl

# The long form of the load test (docs/load.md): 500 runs at once and a
# 5000-run mix, then 100,000 start/stop cycles with flat RSS, fds and
# goroutines and no namespace or mount left, sampled at rest. Each prints
# its checks and exits non-zero on any leftover.
soak: build
	$(GO) build -o $(BIN)/idexload ./cmd/idexload
	$(BIN)/idexload --spawn $(BIN)/idexd --hold 500 --runs 5000 --concurrency 64
	$(BIN)/idexload --spawn $(BIN)/idexd --cycles 100000

# Each fuzz target for FUZZTIME (60s); their seed corpora run in make test.
# TestKernelQuota on Debian 12's kernel in qemu, for a host whose kernel
# cannot enforce ext4 user quotas (no CONFIG_QFMT_V2): make test skips it
# there and says why (tests/quota/run.sh; root, about 2-3 minutes).
quota-vm-test: go-check
	GO=$(GO) tests/quota/run.sh

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRunRequest$$' -fuzztime $(FUZZTIME) ./internal/server/
	$(GO) test -run '^$$' -fuzz '^FuzzResolveScript$$' -fuzztime $(FUZZTIME) ./internal/students/
	$(GO) test -run '^$$' -fuzz '^FuzzOutputEvent$$' -fuzztime $(FUZZTIME) ./internal/api/
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./internal/config/

clean:
	rm -rf $(BIN)/idexd $(BIN)/idexctl $(BIN)/idexd-sandbox $(BIN)/idexctl.1.gz $(BIN)/idexctl.bash $(BIN)/_idexctl $(BIN)/copyright $(BIN)/e2e.test $(RUNDIR) dist

# --- packaging and systemd (owned by packaging) ---
# make package: dist/*.deb and dist/*.rpm (nfpm, pinned below).
# make systemd-verify: systemd-analyze verify of systemd/ (nothing on stderr).
# make systemd-test: boots Debian 12 under systemd-nspawn, installs the .deb
# and checks socket activation, notify, a run, the watchdog, the drain on
# stop and restart (root; see docs/systemd.md).
# make vm-test: boots Debian 12 in qemu (software emulation) with systemd on
# a real cgroup v2, installs the .deb and checks limits, OOM, a fork bomb,
# the CPU-time limit, warm starts and the hostile corpus (root; see
# docs/vm-test.md).
NFPM_VERSION := v2.45.2
NFPM         := $(BIN)/nfpm-$(NFPM_VERSION)/nfpm
PKG_VERSION  := $(shell packaging/version.sh $(VERSION))
DIST         := $(CURDIR)/dist

.PHONY: package nfpm-install systemd-verify systemd-test vm-test

$(NFPM):
	GOBIN=$(dir $(NFPM)) $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)

nfpm-install: $(NFPM)

package: build man completion copyright $(NFPM)
	@mkdir -p $(DIST)
	rm -f $(DIST)/idexd_*.deb $(DIST)/idexd-*.rpm
	PKG_VERSION=$(PKG_VERSION) $(NFPM) package --config packaging/nfpm.yaml --packager deb --target $(DIST)/
	PKG_VERSION=$(PKG_VERSION) $(NFPM) package --config packaging/nfpm.yaml --packager rpm --target $(DIST)/

systemd-verify: build
	tests/systemd/verify.sh --security

systemd-test: package
	tests/systemd/run.sh $(DIST)/idexd_$(PKG_VERSION)-1_amd64.deb

# The e2e test binary goes along: inside the VM it runs the hostile corpus
# (TestHostile) against the installed idexd.
vm-test: package
	CGO_ENABLED=0 $(GO) test -c -o $(BIN)/e2e.test ./e2e
	tests/vm/run.sh $(DIST)/idexd_$(PKG_VERSION)-1_amd64.deb $(BIN)/e2e.test
# --- end packaging ---
