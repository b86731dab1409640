# The README's two set-up commands are `make train` and `make test`; CI (.ci/run) calls `make test` twice:
# with the lock (LOCK=requirements/lock.txt, the default) and with the newest versions the ranges allow.
# CPU-only machines: run `pip install torch==2.13.0` first, so that pip does not pull the CUDA build.
PYTHON ?= python
LOCK ?= requirements/lock.txt

.PHONY: install train test test-deps lock

install:
	$(PYTHON) -m pip install -c $(LOCK) -e ".[all]"

# one thread: the run is deterministic and reproduces the README's table (scripts/check_readme_numbers.py)
train: install
	textgen-rl train --threads 1

test-deps:
	bash scripts/install_test_deps.sh "$(PYTHON)" "$(LOCK)"

test: test-deps
	$(PYTHON) -m pytest

# refresh requirements/lock.txt after changing a range in pyproject.toml (needs uv)
lock:
	bash scripts/lock.sh
