"""TextChat-v0: the multi-turn engine, its exactness, the responders and the agents on dialogues."""

from __future__ import annotations

import copy
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from transformers import GPT2LMHeadModel

import text_envs  # noqa: F401
from agents import GRPO, TokenPPO, TransformerPolicy, make_text_vec_env
from agents.evaluation import evaluate_model
from text_envs.chat_env import TextChatEnv
from text_envs.errors import ConfigError, ResponderError, UnknownResponderError
from text_envs.lm_stepper import BatchedLMStepper, positions_from_mask
from text_envs.models import load_model
from text_envs.responders import Calculator, GuessNumber, list_responders
from text_envs.responders.builtin import evaluate_arithmetic
from tests.micro import TOKEN_A, build_micro_model


class SayA:
    """A trivially learnable responder: each turn pays the fraction of its words that are ``a``."""

    name = "say-a"

    def __init__(self, fail_on_turn: int | None = None, bad_reward: bool = False) -> None:
        self.turn, self.fail_on_turn, self.bad_reward = 0, fail_on_turn, bad_reward

    def reset(self, *, seed=None, options=None):
        self.turn = 0
        return "say a"

    def respond(self, agent_text):
        self.turn += 1
        if self.turn == self.fail_on_turn:
            raise RuntimeError("the game server is down")
        words = agent_text.split()
        reward = float("nan") if self.bad_reward else words.count("a") / max(1, len(words))
        return "b", reward, False, {"turn": self.turn}


@pytest.fixture(scope="module")
def micro_pair(tmp_path_factory):
    return {name: build_micro_model(tmp_path_factory.mktemp(name), seed, logit_scale=20.0)
            for name, seed in (("policy", 1), ("reference", 2))}


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-chat"), seed=0)


def micro_chat(model_dir, **kwargs):
    defaults = {"model": str(model_dir), "responder": SayA, "max_turns": 2, "max_turn_tokens": 2,
                "max_episode_tokens": 12, "max_prompt_tokens": 8, "kl_coef": 0.0, "device": "cpu"}
    return {**defaults, **kwargs}


# ------------------------------------------------------------------------------------------ KV extension
def test_stepper_extend_equals_the_uncached_forward():
    model = load_model("tiny", device="cpu")
    stepper = BatchedLMStepper(model, 3, pad_id=0)
    prefixes = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    stepper.prefill([0, 1, 2], prefixes)
    chunks = [[20, 21, 22], [], [23]]  # a reply, a finished slot, a plain step
    out = stepper.extend(chunks)
    follow = stepper.step(torch.tensor([30, 31, 32]))
    for slot in (0, 2):
        tokens = prefixes[slot] + chunks[slot]
        with torch.no_grad():
            direct = model(torch.tensor([tokens])).logits[0, -1]
            after = model(torch.tensor([tokens + [30 + slot]])).logits[0, -1]
        assert torch.allclose(out.logits[slot], direct, atol=1e-4)
        assert torch.allclose(follow.logits[slot], after, atol=1e-4)
    with torch.no_grad():  # the slot that got an empty chunk continues as if nothing happened
        assert torch.allclose(follow.logits[1], model(torch.tensor([prefixes[1] + [31]])).logits[0, -1], atol=1e-4)
    assert stepper.tokens[0] == prefixes[0] + chunks[0] + [30]
    assert positions_from_mask(stepper.mask)[0, -1] == len(stepper.tokens[0]) - 1


# --------------------------------------------------------------------------------- exact KL, two turns
def _logprobs(model, tokens, start):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([tokens])).logits[0].double(), -1)
    return [float(logp[t - 1, tokens[t]]) for t in range(start, len(tokens))]


@pytest.mark.parametrize("kl_penalty", ["dense", "sparse"])
def test_two_turn_kl_regularised_objective_is_exact_by_enumeration(micro_pair, kl_penalty):
    """Every two-turn dialogue (one agent token per turn, the responder's reply between them): the env's
    rewards plus the agent's -beta log pi equal E[R_1 + R_2] - beta KL(pi || pi_ref) over agent tokens."""
    beta = 0.7
    policy = GPT2LMHeadModel.from_pretrained(micro_pair["policy"]).eval()
    reference = GPT2LMHeadModel.from_pretrained(micro_pair["reference"]).eval()
    env = TextChatEnv(**micro_chat(micro_pair["policy"], reference_model=str(micro_pair["reference"]),
                                   kl_coef=beta, kl_penalty=kl_penalty, max_turn_tokens=1))
    _, info = env.reset(seed=0)
    prompt_ids = env.batch.slots[0].prompt_ids
    chat_format = env.batch.dialogue.chat_format
    direct = via_env = total = 0.0
    for first in range(5):
        for second in range(5):
            reply = chat_format.reply("b", close_turn=first != 1)
            tokens = prompt_ids + [first] + reply + [second]
            agent = [len(prompt_ids), len(prompt_ids) + 1 + len(reply)]
            pi_all, ref_all = _logprobs(policy, tokens, 1), _logprobs(reference, tokens, 1)
            pi = [pi_all[i - 1] for i in agent]
            ref = [ref_all[i - 1] for i in agent]
            prob = math.exp(sum(pi))
            total += prob
            turn_rewards = [float(token == TOKEN_A) for token in (first, second)]
            direct += prob * (sum(turn_rewards) - beta * (sum(pi) - sum(ref)))
            env.reset(seed=0)
            rewards = []
            for action in (first, second):
                obs, reward, done, _, info = env.step(action)
                rewards.append(reward)
            assert done and info["finish_reason"] == "max_turns" and info["num_turns"] == 2
            assert info["kl_ref_logprob_sum"] == pytest.approx(sum(ref), abs=1e-5)
            assert np.flatnonzero(info["agent_flags"]).tolist() == [i - len(prompt_ids) for i in agent]
            via_env += prob * (sum(rewards) - beta * sum(pi))
    assert total == pytest.approx(1.0, abs=1e-9)
    assert via_env == pytest.approx(direct, abs=1e-5)


# ------------------------------------------------------------------------------------------ checkers
@pytest.mark.parametrize("task", sorted(list_responders()))
def test_gymnasium_and_sb3_check_env_pass_for_every_builtin_responder(task):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make("TextChat-v0", task=task, max_prompt_tokens=128, max_episode_tokens=64,
                       max_turn_tokens=8).unwrapped
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


def test_vector_env_matches_single_envs_and_reports_agent_masks():
    vector = gym.make_vec("TextChat-v0", num_envs=2, vectorization_mode="vector_entry_point",
                          max_turn_tokens=3, max_episode_tokens=40, kl_coef=0.05)
    singles = [gym.make("TextChat-v0", max_turn_tokens=3, max_episode_tokens=40, kl_coef=0.05).unwrapped
               for _ in range(2)]
    obs, info = vector.reset(seed=7)
    for i, env in enumerate(singles):
        single_obs, single_info = env.reset(seed=7 + i)
        assert single_info["prompt"] == info["prompt"][i]
        np.testing.assert_array_equal(single_obs["input_ids"], obs["input_ids"][i])
    rng = np.random.default_rng(0)
    for _ in range(12):
        actions = rng.integers(0, 4096, size=2)
        obs, rewards, done, _, info = vector.step(actions)
        for i, env in enumerate(singles):
            single_obs, reward, single_done, _, single_info = env.step(int(actions[i]))
            assert reward == pytest.approx(rewards[i], abs=1e-4) and single_done == done[i]
            if not done[i]:
                np.testing.assert_array_equal(single_obs["input_ids"], obs["input_ids"][i])
                np.testing.assert_array_equal(single_info["agent_mask"], info["agent_mask"][i])
            else:
                env.reset(seed=int(rng.integers(100)))  # only compare up to the first episode end
                return


def test_incremental_observations_equal_the_full_rendering_across_turns_resets_and_restores():
    """The vector env's observations and agent masks are updated incrementally (rows shifted by the new tokens);
    they must equal the per-slot rendering from scratch at every step: through replies, autoresets, a
    rejected step and a restored checkpoint."""
    vector = gym.make_vec("TextChat-v0", num_envs=3, vectorization_mode="vector_entry_point",
                          max_turn_tokens=3, max_episode_tokens=96, kl_coef=0.05)
    batch = vector.unwrapped.batch
    obs, info = vector.reset(seed=3)
    rng = np.random.default_rng(1)
    saved, resets, replies = None, 0, 0

    def assert_rendered(obs, info):
        for slot in range(3):
            full = batch.observation(slot)
            np.testing.assert_array_equal(obs["input_ids"][slot], full["input_ids"])
            np.testing.assert_array_equal(obs["attention_mask"][slot], full["attention_mask"])
            np.testing.assert_array_equal(info["agent_mask"][slot], batch.agent_mask(slot))

    assert_rendered(obs, info)
    for step in range(60):
        if step == 20:
            saved = batch.get_state()
        if step == 35:
            batch.set_state(saved)  # new SlotState objects: every row is rendered again
            obs = batch.observations()
            info = {"agent_mask": batch.agent_masks()}
            assert_rendered(obs, info)
        obs, _, done, _, info = vector.step(rng.integers(0, 4096, size=3))
        resets += int(done.sum())
        replies += sum(bool(batch.slots[slot].env_positions) for slot in range(3))
        assert_rendered(obs, info)
        obs["input_ids"][:] = 0  # the caller owns the arrays it gets: mutating them changes nothing inside
        info["agent_mask"][:] = 0
    assert resets >= 3 and replies >= 10


# ------------------------------------------------------------------------------------- transactions
def test_a_failing_responder_leaves_the_env_as_it_was(micro_dir):
    env = TextChatEnv(**micro_chat(micro_dir, responder=lambda: SayA(fail_on_turn=2), max_turn_tokens=1,
                                   kl_coef=0.1))
    env.reset(seed=0)
    env.step(TOKEN_A)  # turn 1 answered
    saved = (copy.deepcopy(env.batch.slots), env.batch.stepper.get_state())
    with pytest.raises(ResponderError, match="game server is down"):
        env.step(TOKEN_A)
    slots, stepper = saved
    assert [s.generated for s in env.batch.slots] == [s.generated for s in slots]
    assert env.batch.slots[0].responder.turn == 1 and env.batch.slots[0].turns == slots[0].turns
    assert torch.equal(env.batch.stepper.get_state()["mask"], stepper["mask"])
    with pytest.raises(ResponderError, match="finite"):
        bad = TextChatEnv(**micro_chat(micro_dir, responder=lambda: SayA(bad_reward=True), max_turn_tokens=1))
        bad.reset(seed=0)
        bad.step(TOKEN_A)
    assert bad.batch.slots[0].generated == []


def test_typed_configuration_errors(micro_dir):
    with pytest.raises(UnknownResponderError, match="registered"):
        gym.make("TextChat-v0", task="no-such-game")
    with pytest.raises(ConfigError, match="max_turns"):
        gym.make("TextChat-v0", max_turns=0)
    with pytest.raises(ConfigError, match="max_turn_tokens"):
        gym.make("TextChat-v0", max_turn_tokens=500, max_episode_tokens=100)
    with pytest.raises(ConfigError, match="reset\\(\\) and respond\\(\\)"):
        TextChatEnv(**micro_chat(micro_dir, responder=lambda: 42))
    env = TextChatEnv(**micro_chat(micro_dir))
    with pytest.raises(ConfigError, match="unknown reset option"):
        env.reset(options={"prompt": "x"})


# ------------------------------------------------------------------------------------ the responders
def test_guess_number_hints_and_rewards():
    game = GuessNumber()
    game.reset(seed=3)
    secret = game.secret
    assert game.respond("no idea")[:3] == ("Answer with a number from 1 to 16.", -0.05, False)
    assert game.respond(str(secret - 1))[0] == "Higher." if secret > 1 else True
    assert game.respond(f"It is {secret}.")[1:3] == (1.0, True)
    other = GuessNumber()
    other.reset(seed=3, options={"split": "eval"})
    assert [GuessNumber().reset(seed=s) for s in (1, 2)][0].startswith("I am thinking")


def test_calculator_tool_calls_and_exact_answers():
    calc = Calculator()
    statement = calc.reset(seed=5)
    assert "calc(" in statement
    reply, reward, done, _ = calc.respond("let me compute calc(17*23) first")
    assert (reply, reward, done) == ("= 391", 0.0, False)
    assert calc.respond("calc(2**10)")[0].startswith("calc error")
    assert calc.respond(f"The answer is {calc.answer}")[1:3] == (1.0, True)
    assert calc.respond(f"The answer is {calc.answer + 1}")[1:3] == (0.0, True)
    assert evaluate_arithmetic("(3+4)*5-10//3") == 32
    for bad in ("__import__('os')", "2**99", "1/0", "x+1"):
        with pytest.raises(ValueError):
            evaluate_arithmetic(bad)


# ------------------------------------------------------------------------------------------ the agents
def test_rollouts_cache_and_teacher_forced_dialogues_agree():
    """The policy's KV cache (extended by each reply) and the update's single forward over the whole dialogue
    give the same log-probabilities and values, and the buffer's action columns match the env's agent mask."""
    env = make_text_vec_env(4, env_id="TextChat-v0", env_kwargs={"max_turn_tokens": 6, "max_episode_tokens": 80,
                                                               "max_turns": 3})
    model = TokenPPO(TransformerPolicy, env, n_steps=16, batch_size=4, n_epochs=1, policy_kwargs={"model": "tiny"},
                     seed=0)
    model.learn(64)  # collects, then trains once
    buffer = model.rollout_buffer
    assert any(e.env_tokens for e in buffer.episodes)
    model.policy.set_training_mode(False)
    batch = buffer.collate(list(range(len(buffer.episodes))))
    assert batch.action_positions is not None
    with torch.no_grad():  # the policy changed in the update: compare with a fresh rollout of the new policy
        model.collect_rollouts(model.env, _NoCallback(model), buffer, 16)
        buffer.compute_gae(1.0, 0.95)
        batch = buffer.collate(list(range(len(buffer.episodes))))
        logprobs, _, values = model.evaluate_batch(batch)
    real = batch.completion_mask.bool()
    assert float((logprobs - batch.old_logprobs)[real].abs().max()) < 1e-4
    assert float((values - batch.old_values)[real].abs().max()) < 1e-4
    for episode in buffer.episodes:
        tokens, positions = episode.sequence()
        assert np.flatnonzero(episode.info["agent_flags"]).tolist() == positions
        assert len(tokens) == len(episode) + episode.info["num_env_tokens"]


class _NoCallback:
    """The minimal callback ``collect_rollouts`` needs."""

    def __init__(self, model):
        from stable_baselines3.common.callbacks import BaseCallback

        class Quiet(BaseCallback):
            def _on_step(self) -> bool:
                return True

        self.callback = Quiet()
        self.callback.init_callback(model)

    def __getattr__(self, name):
        return getattr(self.callback, name)


def test_stock_sb3_ppo_runs_on_dialogues():
    from stable_baselines3 import PPO

    env = make_text_vec_env(2, env_id="TextChat-v0", env_kwargs={"max_turn_tokens": 4, "max_episode_tokens": 40})
    PPO(TransformerPolicy, env, n_steps=8, batch_size=8, n_epochs=1, policy_kwargs={"model": "tiny"}).learn(16)


@pytest.mark.parametrize("algo", ["grpo", "token-ppo"])
def test_agents_learn_a_multi_turn_task(micro_dir, algo):
    """Two turns per episode, each paying the fraction of ``a`` in the turn: the held-out score must rise."""
    kwargs = micro_chat(micro_dir)
    env = make_text_vec_env(8, env_id="TextChat-v0", env_kwargs=kwargs)
    policy_kwargs = {"model": str(micro_dir)}
    if algo == "grpo":
        model = GRPO(TransformerPolicy, env, group_size=4, n_steps=8, batch_size=8, n_epochs=2, learning_rate=3e-3,
                     policy_kwargs=policy_kwargs, seed=0)
    else:
        model = TokenPPO(TransformerPolicy, env, n_steps=8, batch_size=8, n_epochs=2, learning_rate=3e-3,
                         policy_kwargs=policy_kwargs, seed=0)
    before = evaluate_model(model.policy.lm, n=32, env=env.env).score_mean
    model.learn(1024)
    after = evaluate_model(model.policy.lm, n=32, env=env.env).score_mean
    assert after > before + 0.4, (before, after)
