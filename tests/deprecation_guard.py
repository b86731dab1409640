"""Turn deprecation warnings that OUR code triggers into errors, and run the library's main paths under it.

``python -W error::DeprecationWarning -W error::FutureWarning`` would also fail on deprecations that
third-party packages trigger among themselves (an import-time warning of tensorboard, say), which we
cannot fix. :func:`guard` applies the same rule only to warnings raised while a frame of ``text_envs``
or ``agents`` is on the stack: the warning is raised as an exception at the call site, exactly like
``-W error``, whichever package emitted it (transformers' ``deprecate_kwarg`` attributes its warning to
torch's ``Module.__call__``, so a filter on the warning's module would miss it). transformers'
logger-based deprecation notices (``logger.warning_once("... deprecated ...")``) are collected the same way.

Run as ``python -m tests.deprecation_guard``: exits 1 and lists the offending calls if the env, the
policy's KV-cached stepping, one TokenPPO update or ``save_pretrained`` trigger any deprecation.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from types import FrameType

OUR_PACKAGES = ("text_envs", "agents")
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _our_frame(frame: FrameType | None) -> str | None:
    """``module:line`` of the innermost frame of our packages on the stack, if any."""
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if name.split(".")[0] in OUR_PACKAGES:
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class OurDeprecation(Exception):
    """A deprecation warning raised while our code was on the stack."""


class _DeprecationLogHandler(logging.Handler):
    def __init__(self, found: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        where = _our_frame(sys._getframe())
        if "deprecat" in message.lower() and where is not None:
            self.found.append(f"{where}: transformers log: {message}")


@contextlib.contextmanager
def guard(found: list[str]) -> Iterator[None]:
    """Inside the block, a deprecation warning triggered from our packages raises :class:`OurDeprecation`
    (and is appended to ``found``); deprecation log records of transformers are appended to ``found``."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        where = _our_frame(sys._getframe())
        if issubclass(category, DEPRECATIONS) and where is not None:
            found.append(f"{where}: {category.__name__}: {message} (emitted at {filename}:{lineno})")
            raise OurDeprecation(found[-1])
        previous(message, category, filename, lineno, file, line)

    handler = _DeprecationLogHandler(found)
    hf_logger = logging.getLogger("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every occurrence reaches showwarning, even if seen before
        warnings.showwarning = show
        hf_logger.addHandler(handler)
        try:
            yield
        finally:
            hf_logger.removeHandler(handler)


def workload(folder: str) -> None:
    """The env (single and vector, dense and sparse KL), the policy's cached stepping, one TokenPPO update,
    ``save_pretrained`` and a reload of the export."""
    import gymnasium as gym

    import text_envs  # noqa: F401
    from agents import TokenPPO, TransformerPolicy, make_text_vec_env
    from text_envs.models import load_model

    for penalty in ("dense", "sparse"):
        env = gym.make("TextGen-v0", max_new_tokens=4, kl_penalty=penalty)
        env.reset(seed=0)
        done = False
        while not done:
            _, _, done, _, _ = env.step(env.action_space.sample())
        env.close()
    vec = make_text_vec_env(4, env_kwargs={"max_new_tokens": 4})
    model = TokenPPO(TransformerPolicy, vec, n_steps=4, batch_size=4, n_epochs=1, seed=0)
    model.learn(16)
    assert model._n_updates >= 1, "TokenPPO made no update"
    model.policy.save_pretrained(folder)
    load_model(folder)


def main() -> int:
    found: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        try:
            with guard(found):
                workload(folder)
        except OurDeprecation:
            traceback.print_exc()
    for line in found:
        print(f"deprecation triggered by our code: {line}")
    if not found:
        print("no deprecation triggered by text_envs or agents")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
