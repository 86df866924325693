# tkc developer targets. The README's two set-up commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tkc-installed

.PHONY: install browser demo test test-fast snapshots lock bench bench-quick bench-report quality clean gpu-check

# Fresh machine -> pinned environment (hash-checked lockfiles), then tkc itself in editable mode.
$(STAMP): lockfiles/cpu.txt lockfiles/dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --require-hashes -r lockfiles/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# The main job: compile the demo recipe into a bundle and run it end to end on CPU.
demo: $(STAMP)
	$(BIN)/tkc compile recipes/demo.yaml -o run/demo --force
	$(BIN)/tkc run run/demo

# Every test, slow ones included (CI runs exactly this).
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1800

# The board's browser test (tests/board/test_board_browser.py) drives Debian's chromium through its chromedriver;
# installed only when missing (the machines run as root; no browser is downloaded from anywhere else).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

snapshots: $(STAMP)
	$(BIN)/python -m pytest -q tests/golden --snapshot-update

lock:
	bash scripts/lock.sh

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run_all.py --quick

bench-report: $(STAMP)
	$(BIN)/python bench/report.py

# One short check on a single-GPU CUDA machine (scripts/gpu_check.py): the machine's own python3 and torch, no
# venv, no network; the wheels it lacks come in .whl/ (bash scripts/gpu_wheels.sh, run where there is network).
# On CPU: make gpu-check GPU_PY=.venv/bin/python GPU_CHECK_ARGS="--device cpu --tiny"
GPU_PY ?= python3
GPU_SITE ?= /tmp/tkc-gpu-site
gpu-check:
	$(GPU_PY) -c 'import pydantic, cattrs, hjson, deepspeed' 2>/dev/null || [ ! -d .whl ] || $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) .whl/*.whl
	PYTHONPATH=$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

quality: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

clean:
	rm -rf run .pytest_cache
