"""RLHF end to end, offline: preferences -> reward model -> PPO -> the hidden preference improves.

1. The bundled tiny LM writes 3 completions for each of 100 sentiment train prompts (12 tokens at
   most; it often stops early with EOS).
2. A simulated labeller (:mod:`agents.rlhf.oracle`) compares every pair of completions with a
   *hidden rule*: the ``length`` reward with a 20-word target, i.e. "more words is better" at this
   budget (ties are skipped). The answers go through LabelSession/FeedbackWriter, as a human's.
3. A MiniLM reward model is trained on those preferences (``train_reward_model``).
4. TokenPPO fine-tunes the tiny LM against the *learned* reward (``reward_model="learned"``).
5. On held-out (eval split) prompts, the hidden rule's mean score is higher after training than
   before: the policy learned, through the reward model only, to write longer completions.

About 2 minutes on one CPU thread. Seeds 0, 1 and 2 all pass (hidden score -0.72 before, -0.57 /
-0.54 / -0.52 after; mean length 9.0 -> 11.7 / 12 / 12 tokens; reward-model validation accuracy
0.88 / 0.85 / 0.89); the test uses seed 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.rlhf.data import FeedbackWriter, read_feedback
from agents.rlhf.generate import build_items, generate_completions, task_prompts
from agents.rlhf.label_server import LabelSession
from agents.rlhf.oracle import run_oracle
from agents.rlhf.reward_training import RewardTrainingConfig, train_reward_model
from text_envs.rewards import make_reward

HIDDEN_RULE = ("length", {"target_words": 20})  # -|words - 20| / 20: more words score higher below 20
MAX_NEW_TOKENS = 12
SEED = 0


def evaluate_hidden_rule(lm, seed: int = 123):
    """The hidden rule's mean score on 32 held-out prompts (``reference_model`` given so the
    evaluation env loads its own frozen reference instead of freezing the policy's LM)."""
    from agents.evaluation import evaluate_model

    name, kwargs = HIDDEN_RULE
    return evaluate_model(lm, "sentiment", n=32, reward_model=name, reward_kwargs=kwargs, reference_model="tiny",
                          max_new_tokens=MAX_NEW_TOKENS, seed=seed, device="cpu")  # fmt: skip


def label_with_hidden_rule(out: Path) -> None:
    from text_envs.models import load_model, load_tokenizer

    tokenizer, lm = load_tokenizer("tiny"), load_model("tiny", device="cpu")
    prompts = task_prompts("sentiment", 100)
    generations = generate_completions(lm, tokenizer, prompts, 3, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)
    items = build_items(generations, "compare")  # 3 pairs per prompt
    name, kwargs = HIDDEN_RULE
    with FeedbackWriter(out) as writer:
        summary = run_oracle(LabelSession(items, writer, mode="compare"), make_reward(name, **kwargs), spec=name)
    assert summary.answered + summary.skipped == len(items) == 300
    assert summary.answered >= 200, summary  # most pairs differ in word count


@pytest.mark.slow
def test_learned_reward_from_simulated_preferences_improves_hidden_rule(tmp_path: Path) -> None:
    from agents.algorithm_registry import make_algorithm

    feedback = tmp_path / "feedback.jsonl"
    label_with_hidden_rule(feedback)
    data = read_feedback(feedback)
    assert data.preferences and all(p.extra["meta"]["labeller"] == "oracle:length" for p in data.preferences)
    hidden = make_reward(HIDDEN_RULE[0], **HIDDEN_RULE[1])
    chosen = hidden([p.prompt for p in data.preferences], [p.chosen for p in data.preferences])
    rejected = hidden([p.prompt for p in data.preferences], [p.rejected for p in data.preferences])
    assert (chosen > rejected).all()

    rm = tmp_path / "rm"
    result = train_reward_model(RewardTrainingConfig(
        data=str(feedback), out=str(rm), base="minilm", epochs=3, lr=2e-4, batch_size=16, max_length=48,
        val_fraction=0.2, seed=SEED, progress=False,
    ))  # fmt: skip
    assert result.metrics["val_pairwise_accuracy"] >= 0.8, result.history

    algo = make_algorithm(
        "token-ppo",
        env_kwargs={"model": "tiny", "task": "sentiment", "reward_model": "learned", "reward_kwargs": {"path": str(rm)},
                    "kl_coef": 0.01, "max_new_tokens": MAX_NEW_TOKENS, "device": "cpu"},
        num_envs=8, model="tiny", seed=SEED, device="cpu", learning_rate=2e-4,
        overrides={"n_steps": 16, "batch_size": 16, "n_epochs": 4},
    )  # fmt: skip
    before = evaluate_hidden_rule(algo.policy.lm)
    algo.learn(2048)
    after = evaluate_hidden_rule(algo.policy.lm)
    assert after.score_mean >= before.score_mean + 0.1, (before.score_mean, after.score_mean, after.samples)
    assert after.length_mean >= before.length_mean + 1.5, (before.length_mean, after.length_mean)  # fewer early EOS
