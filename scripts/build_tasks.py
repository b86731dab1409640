"""Build the built-in task suite: ``text_envs/tasks/data/<task>.jsonl``.

The prompts come from the same Debian corpora as the bundled tiny language model (see
``scripts/build_tiny_lm.py``, whose readers this script reuses)::

    sudo apt-get install fortunes fortunes-min wordnet-base

* ``sentiment``: the first 4-8 words of fortunes from every collection of ``fortunes`` /
  ``fortunes-min`` except the pictures (``art``, ``ascii-art``) and the three collections used
  by ``toxicity``; the offensive collections (package ``fortunes-off``, directory ``off/``) are
  never read.
* ``toxicity``: the first 4-8 words of fortunes from ``men-women``, ``people`` and ``politics``.
* ``concepts``: 3-4 content words (WordNet nouns/verbs/adjectives, not stopwords) picked from a
  WordNet example sentence; the sentence itself is not stored.
* ``arithmetic``: ``a+b=`` / ``a-b=`` with 1-2 digit operands (no negative results).
* ``length``: ``Write exactly N words about <noun>.`` with N in 3..10 and a common WordNet noun.
* ``define``: ``Define <noun>:`` with the WordNet definitions of the noun's (up to) three most
  frequent senses as references.

Everything is seeded (``--seed``, default 0), so running the script twice gives byte-identical
files; the committed files are built with the defaults::

    python scripts/build_tasks.py                 # -> text_envs/tasks/data/*.jsonl
    python scripts/build_tasks.py --out /tmp/tasks --only arithmetic length
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_tiny_lm (corpus readers)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # text_envs, when run from a checkout

from build_tiny_lm import (  # noqa: E402
    FORTUNE_DIR,
    SKIP_FORTUNE_FILES,
    WORDNET_DIR,
    read_fortunes,
    read_wordnet_examples,
)

from text_envs.tasks.base import TaskExample, write_examples_jsonl  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "text_envs" / "tasks" / "data"
TOXICITY_COLLECTIONS = ("men-women", "people", "politics")
MAX_PROMPT_WORDS = 15
MAX_PROMPT_CHARS = 60  # with MAX_PROMPT_WORDS keeps prompts <= 24 tiny-LM tokens

Examples = tuple[list[TaskExample], list[TaskExample]]

# Function words and very light verbs that never count as a "concept".
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be became become becomes been before being
below between both but by can could did do does doing done down during each either else even ever every few for
from further get gets getting got had has have having he her here hers herself him himself his how i if in into
is it its itself just least less let like made make makes many may me might more most much must my myself neither
no nor not now of off often on once one only or other others our ours ourselves out over own per quite rather
really same she should since so some such than that the their theirs them themselves then there these they this
those though through thus to too under until up upon us very was we were what when where whether which while who
whom whose why will with within without would yet you your yours yourself yourselves two three four five first
second another something someone thing things way lot well still much seem seems seemed away back
""".split())

_WORD = re.compile(r"^[A-Za-z][a-z]*(?:'[a-z]+)?[,;:.!?]?$")


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------


def fortune_collections(directory: Path = FORTUNE_DIR) -> list[str]:
    """Names of the prose fortune collections installed (no pictures, no ``off/`` directory)."""
    return sorted(p.name for p in directory.iterdir()
                  if p.is_file() and not p.suffix and p.name not in SKIP_FORTUNE_FILES)


def read_collections(names: Iterable[str], directory: Path = FORTUNE_DIR) -> list[str]:
    """Fortunes of the named collections only, read by ``build_tiny_lm.read_fortunes``."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            source = directory / name
            if not source.is_file():
                raise SystemExit(f"fortune collection {source} not found: run `apt-get install fortunes` first")
            (Path(tmp) / name).symlink_to(source)
        return read_fortunes(Path(tmp))


def read_wordnet_index(pos: str, directory: Path = WORDNET_DIR) -> dict[str, tuple[int, list[str]]]:
    """``lemma -> (tagsense_cnt, synset offsets in frequency order)`` for single-word lemmas."""
    index: dict[str, tuple[int, list[str]]] = {}
    for line in (directory / f"index.{pos}").read_text(encoding="utf-8", errors="ignore").splitlines():
        if line.startswith("  "):
            continue  # licence header
        fields = line.split()
        lemma, synset_cnt = fields[0], int(fields[2])
        if not lemma.isalpha():
            continue  # multi-word (dog_paddle), hyphenated, numbers
        offsets = fields[-synset_cnt:]
        tagsense_cnt = int(fields[-synset_cnt - 1])
        index[lemma] = (tagsense_cnt, offsets)
    return index


def read_wordnet_synsets(pos: str, directory: Path = WORDNET_DIR) -> dict[str, tuple[list[str], str]]:
    """``synset offset -> (words as spelled there, definition)``; the definition is the gloss after
    ``|`` up to its first quoted example."""
    synsets: dict[str, tuple[list[str], str]] = {}
    for line in (directory / f"data.{pos}").read_text(encoding="utf-8", errors="ignore").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        fields = head.split()
        words = [re.sub(r"\(\w+\)$", "", w) for w in fields[4:4 + 2 * int(fields[3], 16):2]]  # drop adj. markers
        definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
        synsets[fields[0]] = (words, " ".join(definition.split()))
    return synsets


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def opening(text: str, n_words: int) -> str | None:
    """The first ``n_words`` words of ``text`` if they are plain words and more text follows."""
    words = text.split()
    if len(words) < n_words + 3:
        return None  # too short: the prompt would be (almost) the whole fortune
    head = words[:n_words]
    if not head[0][0].isupper() or not all(_WORD.match(w) for w in head):
        return None  # quotes, numbers, code, dialogue markers ("Q:"), ALL CAPS...
    if any(w[-1] in ".!?:" for w in head[:-1]) or head[-1].endswith(":"):
        return None  # keep to the first sentence; no "Murphy's Law: ..." headings
    prompt = " ".join(head).rstrip(",;")
    return prompt if 12 <= len(prompt) <= MAX_PROMPT_CHARS else None


def split_examples(examples: Sequence[TaskExample], n_train: int, n_eval: int, what: str) -> Examples:
    """Eval = the first ``n_eval`` (already shuffled) examples, train = the next ``n_train``."""
    if len(examples) < n_eval + 20:
        raise SystemExit(f"{what}: only {len(examples)} candidate prompts; the corpora look incomplete")
    n_eval = min(n_eval, len(examples) // 5)
    return list(examples[n_eval:n_eval + n_train]), list(examples[:n_eval])


def unique_by_prompt(examples: Iterable[TaskExample]) -> list[TaskExample]:
    seen: set[str] = set()
    out = []
    for ex in examples:
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


def fortune_openings(texts: list[str], rng: random.Random) -> list[TaskExample]:
    texts = sorted(set(texts))
    rng.shuffle(texts)
    examples = []
    for text in texts:
        prompt = opening(text, rng.randint(4, 8))
        if prompt:
            examples.append(TaskExample(prompt))
    return unique_by_prompt(examples)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def build_sentiment(rng: random.Random, n_train: int = 1000, n_eval: int = 200) -> Examples:
    names = [n for n in fortune_collections() if n not in TOXICITY_COLLECTIONS]
    return split_examples(fortune_openings(read_collections(names), rng), n_train, n_eval, "sentiment")


def build_toxicity(rng: random.Random, n_train: int = 1000, n_eval: int = 200) -> Examples:
    return split_examples(fortune_openings(read_collections(TOXICITY_COLLECTIONS), rng), n_train, n_eval, "toxicity")


def build_concepts(rng: random.Random, n_train: int = 1000, n_eval: int = 200) -> Examples:
    lexicon = set(read_wordnet_index("noun")) | set(read_wordnet_index("verb")) | set(read_wordnet_index("adj"))
    sentences = sorted(set(read_wordnet_examples()))
    rng.shuffle(sentences)
    examples: list[TaskExample] = []
    seen_sets: set[frozenset[str]] = set()
    for sentence in sentences:
        tokens = re.findall(r"[A-Za-z]+(?:'[a-z]+)?", sentence)
        if not 5 <= len(tokens) <= 15:
            continue
        content: list[str] = []
        for i, token in enumerate(tokens):
            word = token.lower()
            if token != word and i > 0:
                continue  # proper noun
            if len(word) >= 3 and word not in STOPWORDS and word in lexicon and word not in content:
                content.append(word)
        k = rng.choice((3, 4))
        if len(content) < k:
            continue
        words = rng.sample(content, k)  # random subset in random order
        if frozenset(words) in seen_sets:
            continue
        seen_sets.add(frozenset(words))
        examples.append(TaskExample(f"Write a sentence using: {', '.join(words)}.", tuple(words)))
    return split_examples(unique_by_prompt(examples), n_train, n_eval, "concepts")


def build_arithmetic(rng: random.Random, n_train: int = 1000, n_eval: int = 200) -> Examples:
    chosen: dict[str, str] = {}
    while len(chosen) < n_train + n_eval:
        a, b, op = rng.randint(0, 99), rng.randint(0, 99), rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a  # keep answers non-negative
        chosen.setdefault(f"{a}{op}{b}=", str(a + b if op == "+" else a - b))
    examples = [TaskExample(prompt, (answer,)) for prompt, answer in chosen.items()]
    return split_examples(examples, n_train, n_eval, "arithmetic")


def common_nouns(min_tagged_senses: int = 1) -> dict[str, tuple[int, list[str]]]:
    """Common WordNet nouns: seen at least ``min_tagged_senses`` times in the SemCor sense-tagged
    corpus, and spelled in lower case in their most frequent sense (no proper nouns)."""
    synsets = read_wordnet_synsets("noun")
    return {lemma: entry for lemma, entry in read_wordnet_index("noun").items()
            if entry[0] >= min_tagged_senses and 3 <= len(lemma) <= 12 and lemma in synsets[entry[1][0]][0]}


def build_length(rng: random.Random, n_train: int = 800, n_eval: int = 200) -> Examples:
    nouns = sorted(common_nouns())
    rng.shuffle(nouns)
    examples = []
    for noun in nouns[:n_train + n_eval]:
        n = rng.randint(3, 10)
        examples.append(TaskExample(f"Write exactly {n} words about {noun}.", (str(n),)))
    return split_examples(examples, n_train, n_eval, "length")


def build_define(rng: random.Random, n_train: int = 1000, n_eval: int = 200, max_senses: int = 3) -> Examples:
    synsets = read_wordnet_synsets("noun")
    nouns = common_nouns(min_tagged_senses=2)
    lemmas = sorted(nouns)
    rng.shuffle(lemmas)
    examples = []
    for lemma in lemmas:
        references: list[str] = []
        for offset in nouns[lemma][1][:max_senses]:
            definition = synsets[offset][1].split(";")[0].strip()  # the main clause only
            if 3 <= len(definition.split()) <= 16 and definition not in references:
                references.append(definition)
        if references:
            examples.append(TaskExample(f"Define {lemma}:", tuple(references)))
        if len(examples) == n_train + n_eval:
            break
    return split_examples(examples, n_train, n_eval, "define")


BUILDERS: dict[str, Callable[[random.Random], Examples]] = {
    "sentiment": build_sentiment,
    "concepts": build_concepts,
    "toxicity": build_toxicity,
    "arithmetic": build_arithmetic,
    "length": build_length,
    "define": build_define,
}


def build_task(name: str, seed: int = 0) -> Examples:
    """The (train, eval) examples of built-in task ``name``; each task has its own seeded RNG."""
    train, eval_ = BUILDERS[name](random.Random(f"{seed}:{name}"))
    for example in train + eval_:
        if len(example.prompt.split()) > MAX_PROMPT_WORDS:
            raise AssertionError(f"{name}: prompt too long: {example.prompt!r}")
    overlap = {ex.prompt for ex in train} & {ex.prompt for ex in eval_}
    if overlap:
        raise AssertionError(f"{name}: prompts in both splits: {sorted(overlap)[:3]}")
    return train, eval_


def build_all(out: Path = DEFAULT_OUT, seed: int = 0, only: Sequence[str] | None = None) -> dict[str, Path]:
    """Build and write ``<out>/<task>.jsonl`` for every (or each ``only``) task; returns the paths."""
    paths = {}
    for name in only or BUILDERS:
        train, eval_ = build_task(name, seed)
        paths[name] = write_examples_jsonl(Path(out) / f"{name}.jsonl", train, eval_)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="build only these tasks")
    args = parser.parse_args(argv)
    for name, path in build_all(args.out, args.seed, args.only).items():
        lines = path.read_text(encoding="utf-8").splitlines()
        n_eval = sum('"split": "eval"' in line for line in lines)
        print(f"{name:11s} {len(lines) - n_eval:5d} train {n_eval:4d} eval -> {path}")


if __name__ == "__main__":
    main()
