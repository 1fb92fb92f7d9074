# Two entry points: `make demo` and `make test`. Both create (or reuse) a virtual environment
# cached outside the clone, keyed by the dependency files, so a fresh clone reuses a venv that
# an earlier clone on the same machine built; on a new machine it is built from nothing.
PYTHON ?= python3
# Keyed by the dependency lists only (not the tool settings in pyproject.toml).
DEPS_HASH := $(shell $(PYTHON) experiments/deps_hash.py)
VENV ?= $(HOME)/.cache/prunetune/venv-$(DEPS_HASH)
BIN := $(VENV)/bin
DEPS_STAMP := $(VENV)/.deps-installed
LINK_STAMP := .make/installed-$(DEPS_HASH)

# Demo data: the real CIFAR-10 JPEGs when the shared copy is there, else generated data.
SHARED_CIFAR10 ?= $(abspath ../shared/data/cifar10-train-jpeg.tar.gz)
DATA_CACHE ?= $(HOME)/.cache/prunetune-data
DEMO_OUT ?= runs/demo

# This clone's code first on the path, even if another clone's editable install owns the venv
# (Ray workers inherit it too).
export PYTHONPATH := $(CURDIR)

.PHONY: install demo study test test-all lint format clean-venv

install: $(LINK_STAMP)

# No file prerequisites: the hash in the venv path already changes with the dependencies, and a
# fresh clone's files are always newer than an existing stamp.
$(DEPS_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-torch.txt
	$(BIN)/pip install --quiet '.[dev,onnx]'
	touch $@

# The project itself is installed editable into the shared venv from *this* clone, every time
# the clone is new (cheap: no dependencies are resolved again).
$(LINK_STAMP): $(DEPS_STAMP)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	mkdir -p .make && touch $@

demo: install
	@bash experiments/demo.sh "$(BIN)" "$(SHARED_CIFAR10)" "$(DATA_CACHE)" "$(DEMO_OUT)"

# The CIFAR-10 study (issue 6): about an hour here; finished steps are skipped on a rerun.
study: install
	$(BIN)/python experiments/study_cifar10/study.py run --tarball "$(SHARED_CIFAR10)" \
		--images "$(DATA_CACHE)/cifar10-jpeg"
	$(BIN)/python experiments/study_cifar10/study.py report --images "$(DATA_CACHE)/cifar10-jpeg"

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m ''

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-venv:
	rm -rf $(VENV) .make
