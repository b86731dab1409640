"""Tasks: train/eval prompts plus the reward model that scores completions.

>>> from text_envs.tasks import get_task, list_tasks
>>> task = get_task("arithmetic")
>>> task.train[0].prompt, task.train[0].targets          # doctest: +SKIP
('53+7=', ('60',))
>>> reward = task.build_reward()                         # exact_match with the task's answers
>>> reward(["2+2="], ["4"])                              # doctest: +SKIP

Built-in tasks (see :mod:`text_envs.tasks.builtin`): ``sentiment``, ``concepts``, ``toxicity``,
``arithmetic``, ``length``, ``define``. Add your own with :func:`register_task` (build a
:class:`Task` directly, or from a JSONL file with :func:`load_task_jsonl`), or from a Hugging
Face dataset with :func:`~text_envs.tasks.hf_datasets.load_hf_task` (needs ``pip install datasets``).
"""

from __future__ import annotations

from text_envs.tasks.base import (
    DEFAULT_EVAL_SEED,
    SPLITS,
    Task,
    TaskExample,
    get_task,
    list_tasks,
    load_task_jsonl,
    read_examples_jsonl,
    register_lazy_task,
    register_task,
    task_names,
    unregister_task,
    write_examples_jsonl,
)
from text_envs.tasks.builtin import BUILTIN_TASKS, register_builtin_tasks
from text_envs.tasks.hf_datasets import load_hf_task

__all__ = [
    "DEFAULT_EVAL_SEED",
    "SPLITS",
    "Task",
    "TaskExample",
    "BUILTIN_TASKS",
    "get_task",
    "list_tasks",
    "load_hf_task",
    "load_task_jsonl",
    "read_examples_jsonl",
    "register_lazy_task",
    "register_task",
    "task_names",
    "unregister_task",
    "write_examples_jsonl",
]

register_builtin_tasks()
