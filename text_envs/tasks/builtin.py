"""The built-in task suite.

Six small tasks, each stored as ``text_envs/tasks/data/<name>.jsonl`` (format: see
:mod:`text_envs.tasks.base`) and rebuilt deterministically by ``scripts/build_tasks.py`` from
Debian's ``fortunes``, ``fortunes-min`` and ``wordnet-base`` packages. Prompts are short (at most
15 words, at most 24 tokens of the bundled tiny LM's tokenizer) so they suit small models.

===========  =====  ====  ==================================================  ==============
task         train  eval  reward (defaults)                                   max_new_tokens
===========  =====  ====  ==================================================  ==============
sentiment    1000   200   ``sentiment`` (VADER compound of the completion)    20
concepts     1000   200   ``concepts`` (fraction of required words used)      24
toxicity     1000   200   ``toxicity`` (-P(offensive))                        20
arithmetic   1000   200   ``exact_match`` (first number of the completion)    5
length        800   200   ``length`` (per-prompt target word count)           24
define       1000   200   ``reference`` (ROUGE-L F1, best reference)          24
===========  =====  ====  ==================================================  ==============

The data files are read lazily, the first time a task is asked for (``get_task("concepts")``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from text_envs.errors import ConfigError
from text_envs.tasks.base import Task, load_task_jsonl, register_lazy_task

DATA_DIR = Path(__file__).resolve().parent / "data"

_FORTUNES = ("fortune cookies from the Debian packages `fortunes` and `fortunes-min` "
             "(/usr/share/games/fortunes/{files}; BSD fortune-mod, the fortunes themselves are "
             "traditional public-domain-ish quotations; the offensive `fortunes-off` collections are not used)")
_WORDNET = ("Princeton WordNet 3.0 from the Debian package `wordnet-base` ({files}; "
            "WordNet 3.0 license, BSD-style: free use and redistribution with the copyright notice, "
            "(c) 1996-2012 Princeton University)")
_BUILD = "; built by scripts/build_tasks.py (seed 0)"


@dataclass(frozen=True)
class BuiltinTaskSpec:
    """Everything about a built-in task except its examples (which live in the JSONL file)."""

    name: str
    description: str
    reward: str
    max_new_tokens: int
    source: str
    reward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    instruction: str = "{prompt}"  # the user message of the chat format (prompt_format="chat")

    @property
    def path(self) -> Path:
        return DATA_DIR / f"{self.name}.jsonl"

    def load(self) -> Task:
        if not self.path.is_file():
            raise ConfigError(f"data file of built-in task {self.name!r} is missing: {self.path} "
                              f"(rebuild it with `python scripts/build_tasks.py --only {self.name}`)")
        return load_task_jsonl(self.path, self.name, reward=self.reward, description=self.description,
                               reward_kwargs=self.reward_kwargs, max_new_tokens=self.max_new_tokens,
                               source=self.source, instruction=self.instruction)


BUILTIN_TASKS: tuple[BuiltinTaskSpec, ...] = (
    BuiltinTaskSpec(
        name="sentiment",
        description="Continue the opening of a fortune/quotation so that the continuation is positive.",
        reward="sentiment",
        max_new_tokens=20,
        instruction="Continue this sentence: {prompt}",
        source="Openings (first 4-8 words) of " + _FORTUNES.format(
            files="* except art, ascii-art, men-women, people, politics") + _BUILD,
    ),
    BuiltinTaskSpec(
        name="concepts",
        description="Write a sentence that uses every listed word (inflections count), CommonGen-style.",
        reward="concepts",
        max_new_tokens=24,
        source="3-4 content words (nouns/verbs/adjectives, no stopwords) of the example sentences of "
               + _WORDNET.format(files="/usr/share/wordnet/data.{noun,verb,adj,adv}") + _BUILD,
    ),
    BuiltinTaskSpec(
        name="toxicity",
        description="Continue the opening of a quip about men, women, people or politics without "
                    "offensive language.",
        reward="toxicity",
        max_new_tokens=20,
        instruction="Continue this sentence: {prompt}",
        source="Openings (first 4-8 words) of " + _FORTUNES.format(files="{men-women,people,politics}") + _BUILD,
    ),
    BuiltinTaskSpec(
        name="arithmetic",
        description="Answer 'a+b=' / 'a-b=' (0 <= a, b <= 99, no negative results); the first number of "
                    "the completion must equal the answer.",
        reward="exact_match",
        reward_kwargs={"extract": "first_number"},
        max_new_tokens=5,
        source="Synthetic: uniformly random operands and operator" + _BUILD,
    ),
    BuiltinTaskSpec(
        name="length",
        description="Write about the given noun in exactly the requested number of words "
                    "(each prompt's target is its word count).",
        reward="length",
        max_new_tokens=24,
        source="Common nouns (sense-tagged at least once in SemCor) of "
               + _WORDNET.format(files="/usr/share/wordnet/index.noun, data.noun") + "; N uniform in 3..10" + _BUILD,
    ),
    BuiltinTaskSpec(
        name="define",
        description="Define the noun; scored against the WordNet definitions of its (up to) three most "
                    "frequent senses.",
        reward="reference",
        reward_kwargs={"metric": "rougeL"},
        max_new_tokens=24,
        source="Definitions (gloss text before the first ';') of common nouns in "
               + _WORDNET.format(files="/usr/share/wordnet/index.noun, data.noun") + _BUILD,
    ),
)


def register_builtin_tasks(*, overwrite: bool = False) -> None:
    """Register every built-in task lazily (their files are read on first use)."""
    for spec in BUILTIN_TASKS:
        register_lazy_task(spec.name, spec.load, overwrite=overwrite)
