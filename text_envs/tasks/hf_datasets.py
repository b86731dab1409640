"""Build a :class:`~text_envs.tasks.base.Task` from a Hugging Face dataset.

Needs the optional ``datasets`` package (``pip install datasets``, or the extra
``pip install "textgen-rl[datasets]"``). Example: IMDB reviews as sentiment prompts (downloads
the dataset from the Hugging Face hub on first use, then works from the local cache)::

    from text_envs.tasks import get_task, load_hf_task

    task = load_hf_task("imdb", "imdb", prompt_column="text")   # registers task "imdb"
    # prompts = the first 8 words of 1000 random train reviews / 200 random test reviews,
    # reward "sentiment" (continue the review positively)
    get_task("imdb").build_reward()

    # prompts with targets: the review's label as the reference for exact_match
    load_hf_task("imdb-label", "imdb", prompt_column="text", target_column="label",
                 reward="exact_match", prompt_words=30)

Local files work the same way (no network), through the ``json``/``csv``/``parquet`` builders::

    load_hf_task("mine", "json", data_files={"train": "train.jsonl", "test": "test.jsonl"})
    load_hf_task("mine", "csv", data_files="all.csv", split_eval=None)  # eval held out of train
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from text_envs.errors import ConfigError, MissingDependencyError
from text_envs.tasks.base import Task, TaskExample, register_task

_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)

DataFiles = str | Sequence[str] | Mapping[str, str | Sequence[str]]


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError(
            "load_hf_task() needs the `datasets` package: run `pip install datasets` "
            "(or `pip install \"textgen-rl[datasets]\"`)") from exc
    return datasets


def _check_optional_positive(field: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{field} must be a positive integer or None, got {value!r}")


def make_prompt(text: Any, prompt_words: int | None) -> str:
    """Whitespace-normalised ``text`` (HTML ``<br />`` removed), cut to its first ``prompt_words`` words."""
    if not isinstance(text, str):
        return ""
    words = _HTML_BREAK.sub(" ", text).split()
    return " ".join(words if prompt_words is None else words[:prompt_words])


def _target_strings(value: Any, feature: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value if v is not None)
    int2str = getattr(feature, "int2str", None)  # datasets.ClassLabel: 0 -> "neg"
    if int2str is not None and isinstance(value, int) and not isinstance(value, bool):
        return (str(int2str(value)),)
    return (str(value),)


def _examples(dataset: Any, indices: Sequence[int], prompt_column: str, target_column: str | None,
              prompt_words: int | None, limit: int | None, exclude: set[str]) -> list[TaskExample]:
    """Examples from ``dataset`` rows in ``indices`` order: unique non-empty prompts, at most ``limit``."""
    feature = dataset.features.get(target_column) if target_column else None
    examples: list[TaskExample] = []
    seen = set(exclude)
    chunk = 1000
    for start in range(0, len(indices), chunk):
        rows = dataset.select(indices[start:start + chunk])
        texts = rows[prompt_column]
        targets = rows[target_column] if target_column else [None] * len(texts)
        for text, target in zip(texts, targets):
            prompt = make_prompt(text, prompt_words)
            if not prompt or prompt in seen:
                continue
            seen.add(prompt)
            examples.append(TaskExample(prompt, _target_strings(target, feature)))
            if limit is not None and len(examples) >= limit:
                return examples
    return examples


def load_hf_task(
    name: str,
    path: str,
    *,
    config_name: str | None = None,
    data_files: DataFiles | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    split_train: str = "train",
    split_eval: str | None = "test",
    eval_fraction: float = 0.1,
    prompt_column: str = "text",
    target_column: str | None = None,
    reward: str = "sentiment",
    reward_kwargs: Mapping[str, Any] | None = None,
    max_new_tokens: int = 24,
    prompt_words: int | None = 8,
    max_examples: int | None = 1000,
    max_eval_examples: int | None = 200,
    seed: int = 0,
    description: str | None = None,
    register: bool = True,
    overwrite: bool = False,
) -> Task:
    """Build (and by default register) a task whose prompts come from a Hugging Face dataset.

    Args:
        name: the task's name in the registry.
        path: dataset id on the hub (``"imdb"``) or a builder for local files (``"json"``,
            ``"csv"``, ``"parquet"``, ``"text"``) or a local dataset directory; passed to
            ``datasets.load_dataset(path, ...)``.
        config_name: the dataset configuration (``load_dataset``'s ``name``).
        data_files, data_dir, revision, cache_dir: passed to ``load_dataset`` unchanged.
        split_train: split the train prompts come from.
        split_eval: split the eval prompts come from; ``None`` holds out ``eval_fraction`` of the
            train prompts instead (for datasets with a single split).
        prompt_column: text column the prompts are made of.
        target_column: optional column giving each prompt's targets (a string, a number, a class
            label, which becomes its name, or a list of them). Needed by rewards that need targets.
        reward, reward_kwargs, max_new_tokens: the task's reward model and generation budget.
        prompt_words: keep the first ``prompt_words`` words of each text (``None``: all of it).
        max_examples: at most this many train prompts, sampled at random with ``seed``
            (``None``: all). ``max_eval_examples``: the same for eval.
        description: the task description (default: says where the prompts come from).
        register: register the task (``overwrite=True`` replaces a task of the same name).

    Rows whose prompt is empty or repeats an earlier one are skipped, and train prompts that are
    also eval prompts are dropped, so the splits are disjoint.

    Raises:
        MissingDependencyError: ``datasets`` is not installed.
        ConfigError: a missing split or column, bad arguments, or a dataset that cannot be loaded.
    """
    for field_name, value in (("name", name), ("path", path), ("prompt_column", prompt_column),
                              ("split_train", split_train)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{field_name} must be a non-empty string, got {value!r}")
    _check_optional_positive("prompt_words", prompt_words)
    _check_optional_positive("max_examples", max_examples)
    _check_optional_positive("max_eval_examples", max_eval_examples)
    if split_eval is None and not (isinstance(eval_fraction, (int, float)) and 0 < eval_fraction < 1):
        raise ConfigError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction!r}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if register and not overwrite:
        from text_envs.tasks.base import task_names

        if name in task_names():
            raise ConfigError(f"task name {name!r} is already registered; pass overwrite=True to replace it")
    if target_column is None:
        _check_reward_without_targets(reward)

    datasets = _import_datasets()
    try:
        loaded = datasets.load_dataset(path, name=config_name, data_files=data_files, data_dir=data_dir,
                                       revision=revision, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError, OSError, ConnectionError) as exc:
        raise ConfigError(f"cannot load dataset {path!r} (config_name={config_name!r}, "
                          f"data_files={data_files!r}): {exc}") from exc
    if not isinstance(loaded, Mapping):  # load_dataset without split= returns a DatasetDict
        raise ConfigError(f"dataset {path!r} did not load as a DatasetDict (got {type(loaded).__name__})")
    available = sorted(loaded)
    for field_name, split in (("split_train", split_train), ("split_eval", split_eval)):
        if split is not None and split not in loaded:
            raise ConfigError(f"{field_name}={split!r} is not a split of dataset {path!r}; "
                              f"available: {', '.join(available)} (split_eval=None holds eval out of train)")
    for split in (split_train, split_eval):
        if split is None:
            continue
        columns = loaded[split].column_names
        for field_name, column in (("prompt_column", prompt_column), ("target_column", target_column)):
            if column is not None and column not in columns:
                raise ConfigError(f"{field_name}={column!r} is not a column of split {split!r} of dataset "
                                  f"{path!r}; columns: {', '.join(columns)}")

    rng = random.Random(seed)
    train_ds = loaded[split_train]
    train_order = list(range(len(train_ds)))
    rng.shuffle(train_order)
    if split_eval is None:
        n_held = max(1, round(len(train_order) * eval_fraction))
        eval_ds, eval_order, train_order = train_ds, train_order[:n_held], train_order[n_held:]
    else:
        eval_ds = loaded[split_eval]
        eval_order = list(range(len(eval_ds)))
        rng.shuffle(eval_order)
    eval_examples = _examples(eval_ds, eval_order, prompt_column, target_column, prompt_words,
                              max_eval_examples, set())
    train_examples = _examples(train_ds, train_order, prompt_column, target_column, prompt_words, max_examples,
                               {ex.prompt for ex in eval_examples})
    for split, examples in (("train", train_examples), ("eval", eval_examples)):
        if not examples:
            raise ConfigError(f"dataset {path!r} gave no usable {split} prompts from column {prompt_column!r}")

    where = f"{path}" + (f"/{config_name}" if config_name else "") + (f" (data_files={data_files!r})"
                                                                      if data_files else "")
    eval_from = split_eval if split_eval is not None else f"{split_train} (held out)"
    task = Task(
        name=name,
        description=description or f"Prompts: first {prompt_words or 'all'} words of column {prompt_column!r} "
                                   f"of the Hugging Face dataset {where}.",
        train=tuple(train_examples),
        eval=tuple(eval_examples),
        reward=reward,
        reward_kwargs=dict(reward_kwargs or {}),
        max_new_tokens=max_new_tokens,
        source=f"Hugging Face dataset {where} via datasets.load_dataset; train split {split_train!r}, eval split "
               f"{eval_from!r}, seed {seed} (see the dataset card for its licence)",
    )
    if register:
        register_task(task, overwrite=overwrite)
    return task


def _check_reward_without_targets(reward: str) -> None:
    """A reward that needs targets cannot work without ``target_column``: say so now, not at reward time."""
    try:
        from text_envs.rewards import get_reward_info

        info = get_reward_info(reward)
    except Exception:  # rewards not importable or name unknown: Task.build_reward() will report it
        return
    if info.needs_targets:
        raise ConfigError(f"reward {reward!r} needs per-prompt targets: pass target_column=<column name>")
