"""No deprecated call in our code: the main paths run with our deprecation warnings turned into errors.

The workload runs in a fresh interpreter (transformers' ``warning_once`` notices fire once per process,
so an earlier test could otherwise have used them up). The guard itself is tested on a synthetic
module of our package calling a third-party function that warns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from tests.deprecation_guard import OurDeprecation, guard

REPO = Path(__file__).resolve().parent.parent


def _module(name: str, source: str, **namespace) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(namespace)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def test_main_paths_trigger_no_deprecation():
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "tests.deprecation_guard"], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no deprecation triggered" in result.stdout


def test_guard_raises_on_a_deprecation_our_code_triggers_through_a_library():
    library = _module("somelib", "import warnings\ndef old_api():\n"
                                 "    warnings.warn('old_api is deprecated', FutureWarning, stacklevel=2)\n")
    ours = _module("text_envs._guard_selftest", "def call():\n    return old_api()\n", old_api=library.old_api)
    found: list[str] = []
    with pytest.raises(OurDeprecation, match="old_api is deprecated"):
        with guard(found):
            ours.call()
    assert len(found) == 1 and "text_envs._guard_selftest" in found[0]


def test_guard_ignores_deprecations_between_third_party_packages():
    library = _module("somelib", "import warnings\ndef old_api():\n"
                                 "    warnings.warn('not ours', DeprecationWarning, stacklevel=2)\n")
    found: list[str] = []
    with guard(found), warnings.catch_warnings(record=True):
        library.old_api()
    assert found == []


def test_guard_collects_transformers_deprecation_logs_from_our_code():
    import logging

    ours = _module("agents._guard_selftest",
                   "def call():\n    logger.warning('`past_key_values` is deprecated. Use `cache` instead.')\n",
                   logger=logging.getLogger("transformers.selftest"))
    found: list[str] = []
    with guard(found):
        ours.call()
    assert len(found) == 1 and "past_key_values" in found[0]
