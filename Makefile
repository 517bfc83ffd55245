# sealboot — every set-up step lives here, so a fresh Debian 12 needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sealboot-installed
PYTEST_ARGS ?=

.PHONY: setup demo test lint fmt unit functional e2e image dist bench system-deps clean help hostile \
	stack shell
BENCH_ARGS ?=
STACK_ARGS ?=

help:
	@echo "make demo   seal -> render -> boot -> agent against the local stack"
	@echo "make test   lint + every test"
	@echo "make lint   ruff, mypy --strict, shellcheck of a rendered boothook"
	@echo "make bench  boot latency, boot storm, bulk seal, agent footprint (~3 min)"
	@echo "make dist   agent artifact, .deb and .rpm in dist/"
	@echo "make stack  moto server + IMDSv2 emulator in the foreground; prints export lines; Ctrl-C stops"
	@echo "make shell  a shell with .venv active (sealboot, sealboot-agent, pytest on PATH)"

$(STAMP): pyproject.toml requirements-dev.txt scripts/bootstrap.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/bootstrap.sh
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	@$(BIN)/python demo/demo.py

# The local stack for debugging by hand: prints the export lines, runs until Ctrl-C (README).
stack: $(STAMP)
	@$(BIN)/python scripts/stack.py $(STACK_ARGS)

# An interactive shell with the virtualenv first on PATH; `exit` leaves it.
shell: $(STAMP)
	@echo "make shell: $(abspath $(VENV)) is active; 'exit' leaves it" >&2
	@VIRTUAL_ENV="$(abspath $(VENV))" PATH="$(abspath $(BIN)):$$PATH" $${SHELL:-/bin/bash} -i

lint: $(STAMP)
	$(BIN)/ruff check agent boothook tests demo scripts packaging bench
	$(BIN)/ruff format --check agent boothook tests demo scripts packaging bench
	$(BIN)/mypy
	$(BIN)/python scripts/render_sample.py | $(BIN)/shellcheck --shell=bash --severity=style -
	$(BIN)/shellcheck --severity=style scripts/*.sh scripts/e2e/*.sh packaging/*.sh \
		packaging/scripts/*.sh .ci/run

fmt: $(STAMP)
	$(BIN)/ruff check --fix --unsafe-fixes -q agent boothook tests demo scripts packaging bench || true
	$(BIN)/ruff format -q agent boothook tests demo scripts packaging bench

system-deps:
	@bash scripts/system-deps.sh

# The agent artifact (shiv zipapp), .deb and .rpm, in dist/.
dist: $(STAMP)
	$(BIN)/python packaging/build_dist.py

# Boot-path latency, boot storm, bulk seal and agent footprint, side by side (bench/README.md).
bench: $(STAMP) system-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Install into Debian images as Packer would, then testinfra (needs root).
image: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests/image

# pytest exits 5 when it collected nothing; that must fail, so it is not special-cased.
test: lint system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

# Real cloud-init in chroots (needs root; caches Debian rootfs under /var/cache/sealboot).
e2e: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m e2e tests/e2e

# The hostile-input properties with many more examples than make test runs (profile "long").
hostile: $(STAMP)
	SEALBOOT_HYPOTHESIS=long $(BIN)/python -m pytest $(PYTEST_ARGS) tests/hostile

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests/unit

functional: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests/functional

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
