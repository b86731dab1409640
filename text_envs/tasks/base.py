"""Task model, JSONL task files and the task registry.

A :class:`Task` bundles what a training run needs besides the model: train and eval prompts
(each a :class:`TaskExample`, optionally with per-prompt *targets*), the name and default
keyword arguments of the reward model that scores completions, a generation budget
(``max_new_tokens``) and a citation of where the data came from.

JSONL task files
----------------
The built-in tasks are stored as ``text_envs/tasks/data/<name>.jsonl`` (built by
``scripts/build_tasks.py``) and any task can be loaded from a file of the same format with
:func:`load_task_jsonl`. One JSON object per line::

    {"split": "train", "prompt": "17+25=", "targets": ["42"]}
    {"split": "eval", "prompt": "Write a sentence using: dog, frisbee, catch.", "targets": ["dog", "frisbee", "catch"]}

* ``split`` (required): ``"train"`` or ``"eval"``;
* ``prompt`` (required): a non-empty string;
* ``targets`` (optional, default ``[]``): a list of strings whose meaning depends on the reward
  model: required words (``concepts``), reference texts (``reference``, ``similarity``),
  acceptable answers (``exact_match``) or a target word count such as ``"7"`` (``length``).

Blank lines are ignored; any other malformed line raises :class:`~text_envs.errors.ConfigError`
whose message starts with ``file:line:`` and says what is wrong.

Registry
--------
:func:`register_task`, :func:`get_task`, :func:`list_tasks` (and :func:`unregister_task`). Built-in tasks are registered
lazily (:func:`register_lazy_task`): their JSONL file is read the first time the task is asked
for, then cached, so ``import text_envs.tasks`` stays fast.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from text_envs.errors import ConfigError, UnknownTaskError

SPLITS: tuple[str, ...] = ("train", "eval")
#: Seed with which held-out evaluations choose and sample their ``eval`` prompts by default (``textgen-rl
#: train``, ``eval`` and ``compare`` all use it, so they report the same figures for the same model).
DEFAULT_EVAL_SEED: int = 1234
_JSONL_KEYS = frozenset({"split", "prompt", "targets"})
#: Rewards with optional ``targets`` that only forward them to sub-rewards needing them.
_FORWARDS_TARGETS = frozenset({"composite"})


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskExample:
    """One prompt and its targets (required words, references, answers or a word count)."""

    prompt: str
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError(f"TaskExample.prompt must be a non-empty string, got {self.prompt!r}")
        targets = self.targets
        if isinstance(targets, str) or not isinstance(targets, Iterable):
            raise ConfigError(f"TaskExample.targets must be a sequence of strings, got {targets!r} "
                              f"(prompt {self.prompt!r})")
        targets = tuple(targets)
        bad = [t for t in targets if not isinstance(t, str)]
        if bad:
            raise ConfigError(f"TaskExample.targets must hold strings only, got {bad[0]!r} (prompt {self.prompt!r})")
        object.__setattr__(self, "targets", targets)


class FrozenKwargs(Mapping[str, Any]):
    """A read-only, picklable mapping (a task's default reward kwargs)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] = ()) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __reduce__(self):
        return (FrozenKwargs, (self._data,))

    def __repr__(self) -> str:
        return f"FrozenKwargs({self._data!r})"


def _as_examples(value: Any, field_name: str) -> tuple[TaskExample, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"Task.{field_name} must be a sequence of TaskExample, got {type(value).__name__}")
    examples = tuple(value)
    for i, example in enumerate(examples):
        if not isinstance(example, TaskExample):
            raise ConfigError(f"Task.{field_name}[{i}] must be a TaskExample, got {example!r}")
    return examples


@dataclass(frozen=True)
class Task:
    """A named set of train/eval prompts plus the reward model that scores completions.

    Args:
        name: registry name (non-empty).
        description: one line saying what a good completion is.
        train, eval: the prompts (non-empty tuples of :class:`TaskExample`).
        reward: name of the default reward model (see ``text_envs.rewards.list_rewards()``).
        reward_kwargs: default keyword arguments for that reward model.
        max_new_tokens: generation budget per episode (> 0).
        source: where the data came from (packages, files, licence).
        instruction: the user message a chat model (``prompt_format="chat"``) receives, ``{prompt}``
            standing for the prompt, e.g. ``"Continue this sentence: {prompt}"``.
    """

    name: str
    description: str
    train: tuple[TaskExample, ...]
    eval: tuple[TaskExample, ...]
    reward: str
    reward_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    max_new_tokens: int = 24
    source: str = ""
    instruction: str = "{prompt}"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"Task.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.description, str):
            raise ConfigError(f"Task.description must be a string, got {self.description!r}")
        for split in SPLITS:
            examples = _as_examples(getattr(self, split), split)
            if not examples:
                raise ConfigError(f"Task.{split} of task {self.name!r} must not be empty, got 0 examples")
            object.__setattr__(self, split, examples)
        if not isinstance(self.reward, str) or not self.reward.strip():
            raise ConfigError(f"Task.reward of task {self.name!r} must be a reward-model name, got {self.reward!r}")
        if not isinstance(self.reward_kwargs, Mapping):
            raise ConfigError(f"Task.reward_kwargs of task {self.name!r} must be a mapping, got {self.reward_kwargs!r}")
        object.__setattr__(self, "reward_kwargs", FrozenKwargs(self.reward_kwargs))
        if not isinstance(self.instruction, str) or "{prompt}" not in self.instruction:
            raise ConfigError(f"Task.instruction of task {self.name!r} must be a string containing '{{prompt}}', "
                              f"got {self.instruction!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens <= 0:
            raise ConfigError(f"Task.max_new_tokens of task {self.name!r} must be a positive integer, "
                              f"got {self.max_new_tokens!r}")
        if not isinstance(self.source, str):
            raise ConfigError(f"Task.source of task {self.name!r} must be a string, got {self.source!r}")

    # -- accessors -------------------------------------------------------------------------

    def split(self, name: str) -> tuple[TaskExample, ...]:
        """The examples of split ``name`` (``"train"`` or ``"eval"``)."""
        if name not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {name!r}")
        return getattr(self, name)

    def prompts(self, split: str = "train") -> list[str]:
        """The prompt strings of one split."""
        return [example.prompt for example in self.split(split)]

    def targets_by_prompt(self) -> dict[str, list[str]]:
        """Map every prompt of both splits to its targets (merged if a prompt repeats)."""
        table: dict[str, list[str]] = {}
        for split in SPLITS:
            for example in getattr(self, split):
                merged = table.setdefault(example.prompt, [])
                merged.extend(t for t in example.targets if t not in merged)
        return table

    # -- reward ------------------------------------------------------------------------------

    def build_reward(self, reward_model: Any = None, reward_kwargs: Mapping[str, Any] | None = None) -> Any:
        """Build the reward model that scores this task's completions.

        Args:
            reward_model: ``None`` for the task's own reward (``self.reward`` with
                ``self.reward_kwargs``), another registered reward-model name, or a reward-model
                object / callable that is passed through unchanged.
            reward_kwargs: keyword arguments overriding the defaults (only with a name). The task's
                ``reward_kwargs`` apply only when its own reward is used.

        Targets: a reward model that needs them (``get_reward_info(name).needs_targets``: e.g.
        ``concepts``, ``reference``, ``exact_match``) gets ``targets=self.targets_by_prompt()``
        unless ``reward_kwargs`` already has ``targets``. A reward model that merely *accepts*
        optional targets (a ``targets`` parameter, e.g. ``length``'s per-prompt word counts) gets
        them only when it is the task's own reward, every example has targets and no
        ``reward_kwargs`` are given, so that an override such as
        ``build_reward("length", {"target_words": 5})`` means a fixed target of 5 words.
        ``composite`` always gets them (it hands them only to the components that need them).
        """
        from text_envs.rewards import get_reward_info, make_reward  # lazy: rewards import heavy deps

        spec = self.reward if reward_model is None else reward_model
        if reward_kwargs is not None and not isinstance(reward_kwargs, Mapping):
            raise ConfigError(f"reward_kwargs must be a mapping, got {reward_kwargs!r}")
        if not isinstance(spec, str):
            if reward_kwargs:
                raise ConfigError(f"reward_kwargs={dict(reward_kwargs)!r} can only be given with a reward-model "
                                  f"name, not with the object {spec!r}")
            return make_reward(spec)
        info = get_reward_info(spec)
        own = self._is_own_reward(info.name)
        kwargs: dict[str, Any] = dict(self.reward_kwargs) if own else {}
        kwargs.update(reward_kwargs or {})
        if "targets" not in kwargs:
            if info.needs_targets:
                kwargs["targets"] = self.targets_by_prompt()
            elif _accepts_targets(info.factory) and self._all_have_targets() and (
                    (own and not reward_kwargs) or info.name in _FORWARDS_TARGETS):
                kwargs["targets"] = self.targets_by_prompt()
        return make_reward(info.name, **kwargs)

    def _all_have_targets(self) -> bool:
        return all(example.targets for split in SPLITS for example in getattr(self, split))

    def _is_own_reward(self, name: str) -> bool:
        from text_envs.rewards import get_reward_info

        if name == self.reward:
            return True
        try:
            return get_reward_info(self.reward).name == name
        except Exception:  # the task's own reward is not registered (e.g. a plug-in not imported)
            return False

    def __repr__(self) -> str:  # the default repr would print every example
        return (f"Task(name={self.name!r}, train={len(self.train)}, eval={len(self.eval)}, reward={self.reward!r}, "
                f"reward_kwargs={dict(self.reward_kwargs)!r}, max_new_tokens={self.max_new_tokens})")


def _accepts_targets(factory: Callable[..., Any]) -> bool:
    """Whether a reward factory takes a ``targets`` keyword argument."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "targets" in parameters


# --------------------------------------------------------------------------------------------
# JSONL files
# --------------------------------------------------------------------------------------------


def _parse_line(line: str, where: str) -> tuple[str, TaskExample]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _JSONL_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"expected {', '.join(map(repr, sorted(_JSONL_KEYS)))}")
    split = obj.get("split")
    if split not in SPLITS:
        raise ConfigError(f"{where}: 'split' must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
    targets = obj.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"{where}: 'targets' must be a list of strings, got {targets!r}")
    return split, TaskExample(prompt, tuple(targets))


def read_examples_jsonl(path: str | Path) -> dict[str, tuple[TaskExample, ...]]:
    """Read a task JSONL file into ``{"train": (...), "eval": (...)}`` (file order kept)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    splits: dict[str, list[TaskExample]] = {split: [] for split in SPLITS}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        split, example = _parse_line(line, f"{path}:{lineno}")
        splits[split].append(example)
    return {split: tuple(examples) for split, examples in splits.items()}


def write_examples_jsonl(path: str | Path, train: Sequence[TaskExample], eval: Sequence[TaskExample]) -> Path:
    """Write examples in the JSONL task format (train lines first); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"split": split, "prompt": ex.prompt, "targets": list(ex.targets)}, ensure_ascii=False)
             for split, examples in (("train", train), ("eval", eval)) for ex in examples]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_task_jsonl(path: str | Path, name: str, *, reward: str, description: str = "",
                    reward_kwargs: Mapping[str, Any] | None = None, max_new_tokens: int = 24,
                    source: str = "", instruction: str = "{prompt}") -> Task:
    """Build a :class:`Task` from a JSONL task file (see the module docstring for the format)."""
    splits = read_examples_jsonl(path)
    for split, examples in splits.items():
        if not examples:
            raise ConfigError(f"{path}: no {split!r} lines; a task file needs both 'train' and 'eval' examples")
    return Task(name=name, description=description, train=splits["train"], eval=splits["eval"], reward=reward,
                reward_kwargs=dict(reward_kwargs or {}), max_new_tokens=max_new_tokens,
                source=source or f"JSONL file {Path(path)}", instruction=instruction)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_TASKS: dict[str, Task] = {}
_LAZY: dict[str, Callable[[], Task]] = {}
_ORDER: list[str] = []  # registration order, for list_tasks()
_LOCK = threading.RLock()


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"task name must be a non-empty string, got {name!r}")
    return name


def _add(name: str, overwrite: bool) -> None:
    if not overwrite and (name in _TASKS or name in _LAZY):
        raise ConfigError(f"task name {name!r} is already registered; pass overwrite=True to replace it")
    _TASKS.pop(name, None)
    _LAZY.pop(name, None)
    if name not in _ORDER:
        _ORDER.append(name)


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Register ``task`` under ``task.name`` (an existing name needs ``overwrite=True``); returns it."""
    if not isinstance(task, Task):
        raise ConfigError(f"register_task() takes a Task, got {task!r}")
    with _LOCK:
        _add(task.name, overwrite)
        _TASKS[task.name] = task
    return task


def register_lazy_task(name: str, loader: Callable[[], Task], *, overwrite: bool = False) -> None:
    """Register a task whose data is loaded by ``loader()`` the first time it is asked for."""
    _check_name(name)
    if not callable(loader):
        raise ConfigError(f"loader for task {name!r} must be callable, got {loader!r}")
    with _LOCK:
        _add(name, overwrite)
        _LAZY[name] = loader


def unregister_task(name: str) -> None:
    """Remove task ``name`` from the registry (unknown -> :class:`UnknownTaskError`)."""
    with _LOCK:
        if name not in _ORDER:
            raise UnknownTaskError(f"unknown task {name!r}; registered tasks: {', '.join(_ORDER) or '(none)'}")
        _TASKS.pop(name, None)
        _LAZY.pop(name, None)
        _ORDER.remove(name)


def task_names() -> list[str]:
    """Names of every registered task (without loading any data)."""
    with _LOCK:
        return list(_ORDER)


def get_task(name_or_task: str | Task) -> Task:
    """Return the registered task called ``name_or_task`` (a :class:`Task` is returned as is)."""
    if isinstance(name_or_task, Task):
        return name_or_task
    name = _check_name(name_or_task)
    with _LOCK:
        if name in _TASKS:
            return _TASKS[name]
        if name in _LAZY:
            task = _LAZY[name]()
            if not isinstance(task, Task) or task.name != name:
                raise ConfigError(f"the loader of task {name!r} returned {task!r}, not a Task named {name!r}")
            del _LAZY[name]
            _TASKS[name] = task
            return task
        known = ", ".join(_ORDER) or "(none)"
    raise UnknownTaskError(f"unknown task {name!r}; registered tasks: {known}")


def list_tasks() -> list[Task]:
    """Every registered task, in registration order (loads lazily registered ones)."""
    return [get_task(name) for name in task_names()]
