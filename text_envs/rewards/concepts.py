"""``concepts``: fraction of the required words (concepts) that the completion uses.

The matching is casing-, punctuation- and inflection-tolerant thanks to :func:`normalize_word`,
a small deterministic English normaliser (no corpus download): "Dogs ran to the parks" uses the
concepts ``dog``, ``run`` and ``park``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from text_envs.errors import ConfigError
from text_envs.rewards.base import TargetLookup, Targets, register_reward, shorten

__all__ = ["ConceptsReward", "normalize_word", "tokenize"]

# Irregular inflected forms -> base form (the base form is then normalised like any word).
_IRREGULAR: dict[str, str] = {
    # be / have / do / go
    **dict.fromkeys(["is", "are", "was", "were", "am", "been", "being"], "be"),
    **dict.fromkeys(["has", "had", "having"], "have"),
    **dict.fromkeys(["does", "did", "done", "doing"], "do"),
    **dict.fromkeys(["goes", "went", "gone", "going"], "go"),
    # irregular plurals
    "men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
    "teeth": "tooth", "geese": "goose", "mice": "mouse", "oxen": "ox", "knives": "knife",
    "wives": "wife", "wolves": "wolf", "halves": "half", "shelves": "shelf", "loaves": "loaf",
    "thieves": "thief", "calves": "calf", "elves": "elf", "leaves": "leaf",
    # -ie verbs
    "dying": "die", "lying": "lie", "tying": "tie",
    # irregular verbs
    "ran": "run", "sat": "sit", "swam": "swim", "swum": "swim", "sang": "sing", "sung": "sing",
    "rang": "ring", "rung": "ring", "drank": "drink", "drunk": "drink", "ate": "eat", "eaten": "eat",
    "saw": "see", "seen": "see", "took": "take", "taken": "take", "gave": "give", "given": "give",
    "made": "make", "said": "say", "got": "get", "gotten": "get", "came": "come", "knew": "know",
    "known": "know", "thought": "think", "found": "find", "told": "tell", "became": "become",
    "left": "leave", "felt": "feel", "brought": "bring", "began": "begin", "begun": "begin",
    "kept": "keep", "held": "hold", "wrote": "write", "written": "write", "stood": "stand",
    "heard": "hear", "meant": "mean", "met": "meet", "paid": "pay", "spoke": "speak",
    "spoken": "speak", "led": "lead", "grew": "grow", "grown": "grow", "lost": "lose",
    "fell": "fall", "fallen": "fall", "sent": "send", "built": "build", "understood": "understand",
    "drew": "draw", "drawn": "draw", "broke": "break", "broken": "break", "spent": "spend",
    "caught": "catch", "bought": "buy", "fought": "fight", "taught": "teach", "sold": "sell",
    "threw": "throw", "thrown": "throw", "flew": "fly", "flown": "fly", "drove": "drive",
    "driven": "drive", "rode": "ride", "ridden": "ride", "wore": "wear", "worn": "wear",
    "chose": "choose", "chosen": "choose", "froze": "freeze", "frozen": "freeze", "hid": "hide",
    "hidden": "hide", "shook": "shake", "shaken": "shake", "slept": "sleep", "swept": "sweep",
    "wept": "weep", "won": "win", "woke": "wake", "woken": "wake", "hung": "hang", "dug": "dig",
    "fed": "feed", "fled": "flee", "sought": "seek", "shot": "shoot", "stuck": "stick",
    "struck": "strike", "bitten": "bite", "blew": "blow", "blown": "blow", "forgot": "forget",
    "forgotten": "forget", "sank": "sink", "sunk": "sink", "stole": "steal", "stolen": "steal",
    "tore": "tear", "torn": "tear", "lain": "lie", "laid": "lay", "sped": "speed", "spun": "spin",
    "bent": "bend", "lent": "lend", "dealt": "deal", "dreamt": "dream", "knelt": "kneel",
    "leapt": "leap", "lit": "light", "slid": "slide", "spat": "spit", "stung": "sting",
    "swung": "swing", "clung": "cling", "sprang": "spring", "sprung": "spring", "shone": "shine",
}

# Words that end like an inflection but are not one (never stripped of -er/-est/-ing/-ed).
_KEEP = frozenset(
    """
    never ever over under after other another water paper mother father brother sister daughter
    number winter summer river flower tiger letter butter corner dinner finger hammer ladder
    monster silver spider super tower weather wonder order power computer matter member answer
    center offer cover enter either whether together however rather later soccer cancer
    forest interest honest modest harvest contest protest request suggest invest digest arrest
    morning evening ceiling nothing something anything everything during spring string thing
    king ring wing sing bring
    hundred bed red shed sled speed seed need feed weed breed bleed proceed succeed exceed
    """.split()
)

_VOWELS = frozenset("aeiouy")
_WORD_RE = re.compile(r"[^\W_]+")
_POSSESSIVE_RE = re.compile(r"(?<=\w)['\u2019]s\b")
_APOSTROPHE_RE = re.compile(r"['\u2019]")


def _has_vowel(stem: str) -> bool:
    return any(ch in _VOWELS for ch in stem)


def _strip_plural(w: str) -> str:
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"  # studies -> study, cookies -> cooky (-> "cooki" like cookie)
    if w.endswith(("sses", "shes", "ches", "xes", "zes", "ses")):
        return w[:-2]  # classes -> class, boxes -> box, houses -> hous(e)
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]  # dogs -> dog, plays -> play, tomatoes -> tomatoe(-> tomato)
    return w


def _strip_verb_adj(w: str) -> str:
    if len(w) <= 3 or w in _KEEP:
        return w
    if w.endswith("ied") and len(w) > 4:
        return w[:-3] + "y"  # studied -> study
    if w.endswith("ing"):
        stem = w[:-3]
        return stem if len(stem) >= 2 and _has_vowel(stem) else w  # running -> runn, sing kept
    if w.endswith("eed"):  # agreed -> agree, but need/seed/speed/bleed are kept
        return w[:-1] if len(w) >= 6 else w
    if w.endswith("ed"):
        stem = w[:-2]
        return stem if len(stem) >= 2 and _has_vowel(stem) else w
    if w.endswith("est"):
        stem = w[:-3]
        return stem if len(stem) >= 4 and _has_vowel(stem) else w  # biggest -> bigg
    if w.endswith("er"):
        stem = w[:-2]
        return stem if len(stem) >= 3 and _has_vowel(stem) else w  # bigger -> bigg, baker -> bak
    return w


def _canonical(w: str) -> str:
    if len(w) >= 3 and w.endswith("e"):
        w = w[:-1]  # bake/baked/baking -> bak
    if len(w) >= 3 and w[-1] == w[-2] and w[-1] not in _VOWELS and w[-1].isalpha():
        w = w[:-1]  # runn -> run, bigg -> big, fall -> fal
    if len(w) >= 2 and w.endswith("y"):
        w = w[:-1] + "i"  # study/studies/studied -> studi, cookie/cookies -> cooki
    return w


@functools.lru_cache(maxsize=65536)
def normalize_word(word: str) -> str:
    """Map an English word to a canonical key shared by its inflections.

    Lowercases, strips accents, maps irregular forms ("ran" -> "run", "mice" -> "mouse"), then
    strips one plural suffix (-s, -es, -ies) and one verb/adjective suffix (-ing, -ed, -ied, -er,
    -est; not from short stems nor from listed words such as "water" or "forest"), removes a
    final -e, undoubles a final consonant and turns a final -y into -i. The key is not a real
    lemma ("bake" -> "bak") but all of "bake, bakes, baked, baking" share it. A heuristic:
    some unrelated words collide (e.g. "hope"/"hopped", agent nouns such as "runner" ~ "run").
    """
    w = unicodedata.normalize("NFKD", word.lower())
    w = "".join(ch for ch in w if not unicodedata.combining(ch))
    w = _IRREGULAR.get(w, w)
    if len(w) > 3 and w.isalpha():
        w = _IRREGULAR.get(_strip_plural(w), _strip_plural(w))
        w = _strip_verb_adj(w)
    return _canonical(w) if w.isalpha() else w


def tokenize(text: str, *, inflections: bool = True) -> list[str]:
    """Lowercased word tokens of ``text`` (letters/digits; possessive 's and apostrophes removed,
    other punctuation splits words), normalised with :func:`normalize_word` if ``inflections``."""
    text = _APOSTROPHE_RE.sub("", _POSSESSIVE_RE.sub("", text.lower()))
    words = _WORD_RE.findall(text)
    return [normalize_word(w) for w in words] if inflections else words


def _contains(haystack: Sequence[str], needle: tuple[str, ...], words: frozenset[str]) -> bool:
    if len(needle) == 1:
        return needle[0] in words
    k = len(needle)
    return any(tuple(haystack[i : i + k]) == needle for i in range(len(haystack) - k + 1))


class ConceptsReward:
    """Fraction of the prompt's required concepts that appear in the completion.

    ``reward = |{c in concepts : c appears in completion}| / |concepts|``, range ``[0, 1]``.
    A concept is a target string: a word ("dog") or a phrase ("ice cream", matched as
    consecutive words). Completion and concepts are compared after :func:`tokenize` (lowercase,
    punctuation removed, inflections normalised: "dogs ran" contains "dog" and "run"); concepts
    with the same normalised form count once.

    Args:
        targets: mapping prompt -> list of concepts, or one list for every prompt.
        inflections: set False to compare lowercased words exactly (no inflection handling).
    """

    name = "concepts"
    needs_targets = True

    def __init__(self, targets: Targets, inflections: bool = True) -> None:
        self.inflections = bool(inflections)
        self.targets = TargetLookup(targets, self.name)
        self._concepts: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}
        for group in self.targets.groups():
            self._compile(group)  # validate every concept up front

    def _compile(self, group: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        cached = self._concepts.get(group)
        if cached is not None:
            return cached
        seen: dict[tuple[str, ...], None] = {}
        for concept in group:
            toks = tuple(tokenize(concept, inflections=self.inflections))
            if not toks:
                raise ConfigError(f"concept {shorten(concept)} of reward 'concepts' contains no word")
            seen.setdefault(toks, None)
        compiled = tuple(seen)
        self._concepts[group] = compiled
        return compiled

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        out = np.empty(len(prompts), dtype=np.float64)
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            concepts = self._compile(self.targets.lookup(prompt))
            toks = tokenize(completion, inflections=self.inflections)
            words = frozenset(toks)
            out[i] = sum(_contains(toks, c, words) for c in concepts) / len(concepts)
        return out

    def __repr__(self) -> str:
        return f"ConceptsReward(targets={self.targets!r}, inflections={self.inflections})"


register_reward(
    "concepts",
    ConceptsReward,
    description="fraction of the required concepts (words/phrases, inflection-tolerant) used by the completion, in [0, 1]",
    needs_targets=True,
)
