"""Tests of ``text_envs.tasks``: the task model, JSONL files, registry, built-in suite, HF loader."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from text_envs.errors import ConfigError, MissingDependencyError, UnknownTaskError
from text_envs.tasks import (
    Task,
    TaskExample,
    get_task,
    list_tasks,
    load_hf_task,
    load_task_jsonl,
    read_examples_jsonl,
    register_task,
    task_names,
    unregister_task,
    write_examples_jsonl,
)
from text_envs.tasks.builtin import BUILTIN_TASKS, DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ("sentiment", "concepts", "toxicity", "arithmetic", "length", "define")
TOKENIZER_JSON = ROOT / "text_envs" / "assets" / "tiny-lm" / "tokenizer.json"
CORPORA = (Path("/usr/share/games/fortunes/fortunes"), Path("/usr/share/wordnet/data.noun"))


@pytest.fixture
def scratch_task_names():
    """Unregister every task a test registers."""
    before = set(task_names())
    yield
    for name in set(task_names()) - before:
        unregister_task(name)


def small_task(name: str = "tiny", **overrides) -> Task:
    fields = dict(name=name, description="test", train=(TaskExample("a b", ("x",)),),
                  eval=(TaskExample("c d", ("y",)),), reward="exact_match", max_new_tokens=4, source="tests")
    fields.update(overrides)
    return Task(**fields)


# --------------------------------------------------------------------------------------------
# built-in suite
# --------------------------------------------------------------------------------------------


def test_import_is_lazy_and_light():
    code = ("import sys, text_envs.tasks, text_envs.tasks.base as b; "
            "print(len(b._TASKS), 'datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["0", "False"]


def test_builtin_tasks_registered_and_load():
    assert set(BUILTIN) <= set(task_names())
    tasks = {task.name: task for task in list_tasks()}
    assert set(BUILTIN) <= set(tasks)
    for name in BUILTIN:
        task = get_task(name)
        assert task is tasks[name]  # cached after the first load
        assert get_task(task) is task
        assert 200 <= len(task.train) <= 1000, name
        assert 50 <= len(task.eval) <= 200, name
        assert task.max_new_tokens > 0
        assert task.description and task.source
        assert ("wordnet-base" in task.source or "fortunes" in task.source or "Synthetic" in task.source), name


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_splits_disjoint_and_unique(name):
    task = get_task(name)
    train, eval_ = task.prompts("train"), task.prompts("eval")
    assert len(set(train)) == len(train) and len(set(eval_)) == len(eval_)
    assert not set(train) & set(eval_)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_prompts_are_short(name):
    prompts = get_task(name).prompts("train") + get_task(name).prompts("eval")
    assert max(len(p.split()) for p in prompts) <= 15
    if TOKENIZER_JSON.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(TOKENIZER_JSON))
        assert max(len(tokenizer.encode(p, add_special_tokens=False).ids) for p in prompts) <= 24


def test_builtin_targets_match_the_reward():
    for example in get_task("arithmetic").train[:50]:
        a, op, b = example.prompt[:-1].partition("+") if "+" in example.prompt else example.prompt[:-1].partition("-")
        assert example.targets == (str(int(a) + int(b) if op == "+" else int(a) - int(b)),)
        assert int(example.targets[0]) >= 0
    for example in get_task("length").train[:50]:
        assert example.targets == (example.prompt.split()[2],) and 3 <= int(example.targets[0]) <= 10
    for example in get_task("concepts").train[:50]:
        assert 3 <= len(example.targets) <= 4
        assert example.prompt == f"Write a sentence using: {', '.join(example.targets)}."
    for example in get_task("define").train[:50]:
        assert example.prompt.startswith("Define ") and example.prompt.endswith(":")
        assert 1 <= len(example.targets) <= 3
    for name in ("sentiment", "toxicity"):
        assert all(not ex.targets for ex in get_task(name).train)


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_tasks", ROOT / "scripts" / "build_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(not all(p.exists() for p in CORPORA), reason="needs Debian packages fortunes and wordnet-base")
def test_build_script_is_deterministic_and_matches_committed_files(tmp_path):
    build = _load_build_script()
    assert set(build.BUILDERS) == {spec.name for spec in BUILTIN_TASKS}
    paths = build.build_all(tmp_path / "a")
    for name, path in paths.items():
        assert path.read_bytes() == (DATA_DIR / f"{name}.jsonl").read_bytes(), f"{name}: rebuild differs"
    again = build.build_all(tmp_path / "b", only=["arithmetic", "concepts"])
    for name, path in again.items():
        assert path.read_bytes() == paths[name].read_bytes()
    other_seed = build.build_all(tmp_path / "c", seed=1, only=["arithmetic"])
    assert other_seed["arithmetic"].read_bytes() != paths["arithmetic"].read_bytes()


# --------------------------------------------------------------------------------------------
# rewards of the built-in tasks
# --------------------------------------------------------------------------------------------


def _score(task: Task, completions: list[str], example: TaskExample | None = None, **build) -> np.ndarray:
    example = example or task.eval[0]
    reward = task.build_reward(**build)
    scores = np.asarray(reward([example.prompt] * len(completions), completions))
    assert scores.shape == (len(completions),) and np.all(np.isfinite(scores))
    return scores


def test_sentiment_task_reward():
    pytest.importorskip("vaderSentiment")
    scores = _score(get_task("sentiment"), ["a wonderful, happy and lovely day", "a terrible, awful disaster"])
    assert scores[0] > 0.5 > -0.5 > scores[1]


def test_toxicity_task_reward():
    pytest.importorskip("profanity_check")
    scores = _score(get_task("toxicity"), ["are kind and thoughtful people.", "are stupid fucking idiots"])
    assert scores[0] > scores[1] and np.all(scores <= 0)


def test_concepts_task_reward():
    task = get_task("concepts")
    example = task.eval[0]
    scores = _score(task, [" ".join(example.targets), example.targets[0], "nothing relevant"], example)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(1 / len(example.targets))
    assert scores[2] == pytest.approx(0.0)


def test_arithmetic_task_reward():
    task = get_task("arithmetic")
    example = task.eval[0]
    answer = example.targets[0]
    wrong = str(int(answer) + 1)
    scores = _score(task, [answer, f" {answer} is the answer", f"{answer}\n{wrong}", wrong, "no idea"], example)
    assert scores.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_length_task_reward_reads_the_per_prompt_target():
    task = get_task("length")
    example = next(ex for ex in task.eval if ex.targets[0] != "5")
    n = int(example.targets[0])
    scores = _score(task, [" ".join(["word"] * n), " ".join(["word"] * (n + 2))], example)
    assert scores[0] == 0.0 and scores[1] < 0


def test_reward_override_with_kwargs():
    task = get_task("length")
    example = next(ex for ex in task.eval if ex.targets[0] != "5")
    five = "one two three four five"
    # an explicit target_words replaces the per-prompt targets
    assert _score(task, [five], example, reward_model="length", reward_kwargs={"target_words": 5})[0] == 0.0
    assert _score(task, [five], example)[0] < 0
    # another task, another reward: the task's own reward_kwargs do not leak into it
    sentiment = get_task("sentiment")
    assert _score(sentiment, [five], reward_model="length", reward_kwargs={"target_words": 5})[0] == 0.0
    assert _score(sentiment, [" ".join([five] * 4)], reward_model="length")[0] == 0.0  # default 20 words
    # a reward that needs targets gets the task's own
    scores = _score(get_task("arithmetic"), ["0"], reward_model="exact_match", reward_kwargs={"extract": "full"})
    assert scores.shape == (1,)


def test_composite_override_gets_the_targets_its_components_need():
    task = get_task("concepts")
    example = task.eval[0]
    components = [{"name": "concepts", "weight": 1.0},
                  {"name": "length", "weight": 0.5, "kwargs": {"target_words": len(example.targets)}}]
    scores = _score(task, [" ".join(example.targets)], example, reward_model="composite",
                    reward_kwargs={"components": components})
    assert scores[0] == pytest.approx(1.0)


def test_define_task_reward():
    pytest.importorskip("rouge_score")
    task = get_task("define")
    example = task.eval[0]
    scores = _score(task, [example.targets[-1], "zzz qqq"], example)
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(0.0)


def test_build_reward_passes_objects_through():
    task = get_task("arithmetic")

    def constant(prompts, completions):
        return [0.5] * len(completions)

    reward = task.build_reward(constant)
    assert np.asarray(reward(["1+1="], ["2"])).tolist() == [0.5]
    with pytest.raises(ConfigError, match="reward_kwargs"):
        task.build_reward(constant, {"extract": "full"})


# --------------------------------------------------------------------------------------------
# Task model and registry
# --------------------------------------------------------------------------------------------


def test_unknown_task_lists_the_known_names():
    with pytest.raises(UnknownTaskError) as info:
        get_task("no-such-task")
    message = str(info.value)
    assert "no-such-task" in message and all(name in message for name in BUILTIN)
    assert isinstance(info.value, KeyError)


def test_bad_split_name():
    with pytest.raises(ConfigError) as info:
        get_task("arithmetic").split("test")
    assert "'test'" in str(info.value) and "'train'" in str(info.value) and "'eval'" in str(info.value)
    assert get_task("arithmetic").split("eval") is get_task("arithmetic").eval


@pytest.mark.parametrize(("overrides", "field"), [
    ({"train": ()}, "train"),
    ({"eval": []}, "eval"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"name": ""}, "name"),
    ({"reward": ""}, "reward"),
    ({"train": ("not an example",)}, "train"),
])
def test_task_validation(overrides, field):
    with pytest.raises(ConfigError, match=field):
        small_task(**overrides)


def test_example_validation():
    with pytest.raises(ConfigError, match="prompt"):
        TaskExample("   ")
    with pytest.raises(ConfigError, match="targets"):
        TaskExample("p", "abc")  # a bare string is not a sequence of targets
    assert TaskExample("p", ["a", "b"]).targets == ("a", "b")


def test_targets_by_prompt_covers_both_splits():
    task = small_task()
    assert task.targets_by_prompt() == {"a b": ["x"], "c d": ["y"]}
    assert dict(task.reward_kwargs) == {}
    with pytest.raises(TypeError):
        task.reward_kwargs["x"] = 1  # read-only


def test_tasks_pickle():  # e.g. for subprocess vector envs
    import pickle

    task = get_task("define")
    clone = pickle.loads(pickle.dumps(task))
    assert clone == task and dict(clone.reward_kwargs) == {"metric": "rougeL"}


def test_register_task(scratch_task_names):
    task = register_task(small_task("tiny-registry"))
    assert get_task("tiny-registry") is task and "tiny-registry" in task_names()
    with pytest.raises(ConfigError, match="already registered"):
        register_task(small_task("tiny-registry"))
    replacement = register_task(small_task("tiny-registry", max_new_tokens=8), overwrite=True)
    assert get_task("tiny-registry") is replacement
    scores = replacement.build_reward()(["a b", "c d"], ["x", "x"])
    assert np.asarray(scores).tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError):
        register_task("not a task")


# --------------------------------------------------------------------------------------------
# JSONL files
# --------------------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    train = [TaskExample("p1", ("a",)), TaskExample("p2")]
    eval_ = [TaskExample("p3", ("b", "c"))]
    path = write_examples_jsonl(tmp_path / "t.jsonl", train, eval_)
    assert read_examples_jsonl(path) == {"train": tuple(train), "eval": tuple(eval_)}
    task = load_task_jsonl(path, "from-file", reward="exact_match", max_new_tokens=3)
    assert task.train == tuple(train) and task.eval == tuple(eval_) and str(path) in task.source


@pytest.mark.parametrize(("line", "reason"), [
    ('{"split": "train", "prompt": "x"', "invalid JSON"),
    ('["train", "x"]', "JSON object"),
    ('{"split": "test", "prompt": "x"}', "'split'"),
    ('{"prompt": "x"}', "'split'"),
    ('{"split": "train", "prompt": ""}', "'prompt'"),
    ('{"split": "train", "prompt": 3}', "'prompt'"),
    ('{"split": "train", "prompt": "x", "targets": "y"}', "'targets'"),
    ('{"split": "train", "prompt": "x", "targets": [1]}', "'targets'"),
    ('{"split": "train", "prompt": "x", "target": ["y"]}', "unknown key"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"split": "train", "prompt": "ok"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_examples_jsonl(path)
    assert f"{path}:3:" in str(info.value) and reason in str(info.value)


def test_jsonl_file_needs_both_splits(tmp_path):
    path = tmp_path / "only-train.jsonl"
    path.write_text('{"split": "train", "prompt": "ok"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="'eval'"):
        load_task_jsonl(path, "x", reward="sentiment")
    with pytest.raises(ConfigError, match="cannot read"):
        read_examples_jsonl(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------------------------
# Hugging Face datasets loader (local files only: never touches the hub)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def offline_datasets(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if hasattr(datasets.config, attr):
            monkeypatch.setattr(datasets.config, attr, True)
    return datasets


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_hf_loader_on_local_json(tmp_path, offline_datasets, scratch_task_names):
    train = _write_rows(tmp_path / "train.jsonl", [
        {"text": f"Review number {i} says <br />the film was fine overall", "answer": str(i)} for i in range(60)])
    test = _write_rows(tmp_path / "test.jsonl", [
        {"text": f"Test review {i} is here", "answer": str(i)} for i in range(10)] + [{"text": "", "answer": "x"}])
    task = load_hf_task("local-json", "json", data_files={"train": str(train), "test": str(test)},
                        prompt_words=4, max_examples=25, max_eval_examples=5, cache_dir=str(tmp_path / "cache"))
    assert get_task("local-json") is task
    assert len(task.train) == 25 and len(task.eval) == 5
    assert all(len(p.split()) == 4 for p in task.prompts("train") + task.prompts("eval"))
    assert task.train[0].prompt.startswith("Review number ") and "<br" not in " ".join(task.prompts("train"))
    assert not set(task.prompts("train")) & set(task.prompts("eval"))
    assert task.reward == "sentiment" and task.max_new_tokens == 24 and "json" in task.source
    # same seed -> same task
    again = load_hf_task("local-json-2", "json", data_files={"train": str(train), "test": str(test)},
                         prompt_words=4, max_examples=25, max_eval_examples=5, register=False,
                         cache_dir=str(tmp_path / "cache"))
    assert again.train == task.train and again.eval == task.eval and "local-json-2" not in task_names()

    # targets from a column, scored by a reward that needs them
    qa = load_hf_task("local-qa", "json", data_files={"train": str(train), "test": str(test)}, prompt_words=None,
                      target_column="answer", reward="exact_match", max_new_tokens=4,
                      cache_dir=str(tmp_path / "cache"))
    example = qa.eval[0]
    assert example.targets == (example.prompt.split()[2],)
    scores = qa.build_reward()([example.prompt, example.prompt], [example.targets[0], "nope"])
    assert np.asarray(scores).tolist() == [1.0, 0.0]


def test_hf_loader_on_local_csv_with_held_out_eval(tmp_path, offline_datasets, scratch_task_names):
    csv = tmp_path / "data.csv"
    csv.write_text("sentence,label\n" + "".join(f"line {i} of the csv file,{i % 2}\n" for i in range(40)),
                   encoding="utf-8")
    task = load_hf_task("local-csv", "csv", data_files=str(csv), split_eval=None, eval_fraction=0.25,
                        prompt_column="sentence", prompt_words=None, max_examples=None,
                        cache_dir=str(tmp_path / "cache"))
    assert len(task.eval) == 10 and len(task.train) == 30
    assert not set(task.prompts("train")) & set(task.prompts("eval"))


def test_hf_loader_errors(tmp_path, offline_datasets, scratch_task_names, monkeypatch):
    data = _write_rows(tmp_path / "d.jsonl", [{"text": "a b c"}, {"text": "d e f"}])
    common = dict(data_files=str(data), cache_dir=str(tmp_path / "cache"), register=False)
    with pytest.raises(ConfigError, match="split_eval='test'.*available: train"):
        load_hf_task("e1", "json", **common)
    with pytest.raises(ConfigError, match="prompt_column='body'.*columns: text"):
        load_hf_task("e2", "json", split_eval=None, prompt_column="body", **common)
    with pytest.raises(ConfigError, match="needs per-prompt targets"):
        load_hf_task("e3", "json", split_eval=None, reward="exact_match", **common)
    with pytest.raises(ConfigError, match="prompt_words"):
        load_hf_task("e4", "json", split_eval=None, prompt_words=0, **common)
    with pytest.raises(ConfigError, match="already registered"):
        load_hf_task("arithmetic", "json", split_eval=None, data_files=str(data))
    monkeypatch.setitem(sys.modules, "datasets", None)  # simulate `datasets` not installed
    with pytest.raises(MissingDependencyError, match="pip install datasets"):
        load_hf_task("e5", "json", split_eval=None, **common)
