# The README's two commands are `make run` and `make test`; both set up what they need.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup browser run demo quick-pretrain test lint

TORCH := torch==2.14.1 torchvision==0.29.1
# PyTorch's CPU-only builds: without a GPU, the default build's CUDA libraries (3.2 GB installed) are
# dead weight. Tried first where there is no nvidia-smi, torch and torchvision only (their small
# dependencies come with the project below); the check after it asks torch itself, since pip may
# also find the default build (a local mirror). When that index cannot be reached, or has no
# such build, setup says so and installs the default build as before: it still runs on a CPU.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(BIN)/mtl: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	    echo "setup: a GPU (nvidia-smi found): installing the default (CUDA) build of torch"; \
	elif $(BIN)/pip install --quiet --no-deps --retries 0 --timeout 30 \
	        --index-url $(TORCH_CPU_INDEX) $(TORCH) >/dev/null 2>&1 \
	    && $(BIN)/python -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' 2>/dev/null; then \
	    echo "setup: no GPU (no nvidia-smi): installed the CPU build of torch from $(TORCH_CPU_INDEX)"; \
	else \
	    echo "setup: no GPU (no nvidia-smi), but the CPU build of $(TORCH) could not be had from" \
	         "$(TORCH_CPU_INDEX) (unreachable, or no such build): installing the default build," \
	         "CUDA libraries included (it runs on a CPU; see the README's Setup size)"; \
	fi
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ./clients/python  # before the service, which depends on it
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/mtl

setup: $(BIN)/mtl

# The console's browser tests drive Debian's chromium through Playwright (which cannot download a
# browser of its own here). Installed when missing and we are root (CI); else the tests say how.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	    && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "chromium is not installed (apt-get install chromium): the browser tests will be skipped"

# The main job: the service, embedded (SQLite + a filesystem broker + one worker under var/),
# with the built-in base models registered at first start. The console is http://127.0.0.1:8000/,
# the API docs http://127.0.0.1:8000/docs.
# `make run PORT=8001` when 8000 is taken (or MTL_PORT=8001).
PORT ?= $(or $(MTL_PORT),8000)
run: setup
	MTL_DATA_DIR=$${MTL_DATA_DIR:-var} $(BIN)/mtl serve --port $(PORT)

# The README's walk-through end to end on a throwaway service: sample datasets from MTL_DATA_ROOT
# (Omniglot glyphs, miniImageNet-lite photos), `mtl serve` on a free port with a temporary data
# folder, an admin key, then upload, train (--wait), predict and the admin pretraining example.
demo: setup
	$(BIN)/python scripts/demo.py

# A short MTL pretraining on the Omniglot background alphabets, then evaluation on the unseen
# evaluation alphabets (a few minutes on 2 CPU cores).
quick-pretrain: setup
	$(BIN)/mtl pretrain --dataset $${MTL_DATA_ROOT:-../shared/data}/omniglot/images_background.npz \
	    --algorithm mtl-reptile --filters 32 --iterations 1500 --out runs/omniglot-quick
	$(BIN)/mtl evaluate --checkpoint runs/omniglot-quick \
	    --dataset $${MTL_DATA_ROOT:-../shared/data}/omniglot/images_evaluation.npz \
	    --ways 5,20 --shots 1,5 --episodes 200 --json runs/omniglot-quick/eval.json

# Torch threads per process (MTL_TORCH_THREADS, default half the cores, as `mtl serve` divides
# them): pytest and the workers and servers it starts each use this many instead of every core.
TEST_THREADS := $(or $(MTL_TORCH_THREADS),$(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n / 2 > 0 ? n / 2 : 1 ))))

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	MTL_TORCH_THREADS=$(TEST_THREADS) OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
	    $(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
