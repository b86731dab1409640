# The README's two set-up commands are `make train` and `make test`; CI (.ci/run) calls `make test`.
# CPU-only machines: run `pip install torch==2.13.0` (or any CPU build) first, so that pip does not pull CUDA.
PYTHON ?= python

.PHONY: install train test test-deps

install:
	$(PYTHON) -m pip install -e ".[all]"

train: install
	textgen-rl train

test-deps:
	bash scripts/install_test_deps.sh "$(PYTHON)"

test: test-deps
	$(PYTHON) -m pytest
