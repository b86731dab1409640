"""TransformerPolicy: parity with the HF model, KV-cache equality, sampling controls, SB3 algorithms."""

from __future__ import annotations

import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.utils import obs_as_tensor
from transformers import AutoModelForCausalLM, pipeline

from agents import MaskableTransformerPolicy, TransformerPolicy, make_text_vec_env
from agents import policy as policy_module
from tests.micro import build_micro_model, micro_env, prob_of_a
from text_envs.errors import ConfigError


def vec_env(model_dir, n=3, **kwargs):
    env_kwargs = {"model": str(model_dir), "max_new_tokens": 5, **kwargs.pop("env_kwargs", {})}
    return make_text_vec_env(n, env_kwargs=env_kwargs, **kwargs)


def make_policy(env, model_dir, **kwargs):
    return TransformerPolicy(env.observation_space, env.action_space, lambda _: 1e-4, model=str(model_dir), **kwargs)


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_logprob_parity_with_hf_model(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    env = vec_env(model_dir)
    policy = make_policy(env, model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    obs = env.reset()
    tensor_obs = obs_as_tensor(obs, "cpu")
    actions = torch.tensor([5, 17, 300])
    with torch.no_grad():
        _, log_prob, _ = policy.evaluate_actions(tensor_obs, actions)
    for slot in range(env.num_envs):
        ids = torch.as_tensor(obs["input_ids"][slot][obs["attention_mask"][slot].astype(bool)])[None]
        with torch.no_grad():
            expected = torch.log_softmax(hf(ids).logits[0, -1], -1)[actions[slot]]
        assert float(log_prob[slot]) == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_kv_cached_rollout_equals_uncached_forward(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    env = vec_env(model_dir, n=4, env_kwargs={"max_new_tokens": 4})
    policy = make_policy(env, model_dir)
    obs = env.reset()
    resets_seen = 0
    for _ in range(14):  # several autoresets happen (budget 4)
        tensor_obs = obs_as_tensor(obs, "cpu")
        with torch.no_grad():
            cached = policy._cached_forward(tensor_obs, getattr(policy, "_last_actions", None))
            uncached = policy.lm_forward(tensor_obs)
        assert torch.allclose(cached.logits, uncached.logits, atol=1e-4)
        assert torch.allclose(cached.values, uncached.values, atol=1e-4)
        actions = torch.distributions.Categorical(logits=uncached.logits).sample()
        policy._remember_actions(actions)
        obs, _, dones, _ = env.step(actions.numpy())
        resets_seen += int(dones.sum())
    assert resets_seen >= 4
    # the cache is bounded by the longest live episode (prompt + budget), not by the rollout length
    assert policy._stepper.cache_length <= env.observation_space["input_ids"].shape[0]


@pytest.mark.parametrize("changed_slots", [[0], [0, 1, 2]])
def test_an_observation_that_does_not_continue_the_previous_one_is_not_stepped(tiny_gpt2_dir, changed_slots):
    """Same shape, same mask shift and the last action at the end, but an earlier token differs: those slots
    must be re-prefilled (the whole-batch steady-state test and the per-slot match both see it)."""
    env = vec_env(tiny_gpt2_dir, n=3, env_kwargs={"max_new_tokens": 6})
    policy = make_policy(env, tiny_gpt2_dir)
    obs = env.reset()
    with torch.no_grad():
        actions, _, _ = policy(obs_as_tensor(obs, "cpu"))
    obs, _, _, _ = env.step(actions.numpy())
    edited = {key: value.copy() for key, value in obs.items()}
    for slot in changed_slots:
        first_real = int(edited["attention_mask"][slot].argmax())
        edited["input_ids"][slot, first_real] = (edited["input_ids"][slot, first_real] + 1) % env.action_space.n
    tensor_obs = obs_as_tensor(edited, "cpu")
    with torch.no_grad():
        cached = policy._cached_forward(tensor_obs, policy._last_actions)
        uncached = policy.lm_forward(tensor_obs)
    assert torch.allclose(cached.logits, uncached.logits, atol=1e-4)
    assert torch.allclose(cached.values, uncached.values, atol=1e-4)


def test_cache_feeds_one_token_per_matching_slot(tiny_gpt2_dir):
    env = vec_env(tiny_gpt2_dir, n=2, env_kwargs={"max_new_tokens": 6})
    policy = make_policy(env, tiny_gpt2_dir)
    obs = env.reset()
    seen_lengths = []
    original = policy.lm.forward

    def spy(*args, **kwargs):
        seen_lengths.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    policy.lm.forward = spy
    with torch.no_grad():
        for _ in range(3):
            actions, _, _ = policy(obs_as_tensor(obs, "cpu"))
            obs, _, _, _ = env.step(actions.numpy())
    assert seen_lengths[0] > 1 and seen_lengths[1:] == [1, 1]


def test_sampling_controls_log_the_sampled_distribution(tiny_gpt2_dir):
    env = vec_env(tiny_gpt2_dir)
    policy = make_policy(env, tiny_gpt2_dir, top_k=3, temperature=0.7)
    obs = obs_as_tensor(env.reset(), "cpu")
    with torch.no_grad():
        raw = policy.lm_forward(obs).logits
        for _ in range(5):
            actions, _, log_prob = policy(obs)
            top3 = torch.topk(raw, 3, -1).indices
            assert all(int(a) in top3[i].tolist() for i, a in enumerate(actions))
            filtered = torch.topk(raw / 0.7, 3, -1)
            renormalised = torch.log_softmax(filtered.values, -1)
            for i, a in enumerate(actions):
                expected = renormalised[i][filtered.indices[i].tolist().index(int(a))]
                assert float(log_prob[i]) == pytest.approx(float(expected), abs=1e-5)
    with pytest.raises(ConfigError, match="top_p"):
        make_policy(env, tiny_gpt2_dir, top_p=0.0)
    with pytest.raises(ConfigError, match="value_trunk"):
        make_policy(env, tiny_gpt2_dir, value_trunk="both")


def test_separate_value_trunk(tiny_gpt2_dir):
    env = vec_env(tiny_gpt2_dir)
    policy = make_policy(env, tiny_gpt2_dir, value_trunk="separate")
    assert policy.value_model is not None
    values = policy.predict_values(obs_as_tensor(env.reset(), "cpu"))
    assert values.shape == (3, 1)


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
@pytest.mark.parametrize("value_trunk", ["shared", "separate"])
def test_teacher_forced_columns_by_index_equal_the_count_and_slice_path(fixture, value_trunk, request, monkeypatch):
    """The update's forward asks the LM for the completion's columns by index; the values and the gradients are
    those of the previous path (logits of one more column, then sliced), which models without index support keep."""
    model_dir = request.getfixturevalue(fixture)
    env = vec_env(model_dir)
    policy = make_policy(env, model_dir, value_trunk=value_trunk)
    assert policy_module.takes_column_indices(policy.lm)
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding of the first prompt
    weights = torch.randn(3, 4, policy.action_space.n)

    def outputs_and_grads():
        policy.zero_grad(set_to_none=True)
        out = policy.evaluate_sequences(ids, mask, num_tokens=4)
        ((out.logits * weights).sum() + out.values.sum()).backward()
        grads = [p.grad.clone() for p in policy.parameters() if p.grad is not None]
        return out.logits.detach(), out.values.detach(), grads

    by_index = outputs_and_grads()
    monkeypatch.setattr(policy_module, "takes_column_indices", lambda model: False)
    sliced = outputs_and_grads()
    assert by_index[0].shape == (3, 4, policy.action_space.n) and by_index[1].shape == (3, 4)
    for a, b in zip(by_index[:2], sliced[:2]):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert len(by_index[2]) == len(sliced[2]) > 0
    for a, b in zip(by_index[2], sliced[2]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_column_index_support_is_read_from_the_forward_signature():
    class CountOnly(torch.nn.Module):
        def forward(self, input_ids, logits_to_keep: int = 0):
            return input_ids

    class CountOrIndices(torch.nn.Module):
        def forward(self, input_ids, logits_to_keep: "int | torch.Tensor" = 0):
            return input_ids

    class NoArgument(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    assert not policy_module.takes_column_indices(CountOnly())
    assert policy_module.takes_column_indices(CountOrIndices())
    assert not policy_module.takes_column_indices(NoArgument())


def test_adam_is_fused_unless_the_user_chooses_an_implementation(tiny_gpt2_dir):
    env = vec_env(tiny_gpt2_dir)
    assert make_policy(env, tiny_gpt2_dir).optimizer.defaults["fused"] is True
    chosen = make_policy(env, tiny_gpt2_dir, optimizer_kwargs={"foreach": True, "weight_decay": 0.0})
    assert chosen.optimizer.defaults["foreach"] is True and not chosen.optimizer.defaults["fused"]
    assert chosen.optimizer.defaults["weight_decay"] == 0.0
    plain = make_policy(env, tiny_gpt2_dir, optimizer_kwargs={"fused": False})
    assert not plain.optimizer.defaults["fused"]
    sgd = make_policy(env, tiny_gpt2_dir, optimizer_class=torch.optim.SGD, optimizer_kwargs={"momentum": 0.9})
    assert "fused" not in {k for k, v in sgd.optimizer.defaults.items() if v}
    # the fused step is AdamW's update: the same parameters as the per-parameter loop, to float rounding
    torch.manual_seed(0)
    fused = make_policy(env, tiny_gpt2_dir)
    torch.manual_seed(0)
    loop = make_policy(env, tiny_gpt2_dir, optimizer_kwargs={"foreach": False})
    for a, b in zip(fused.parameters(), loop.parameters()):
        assert torch.equal(a, b)
    for policy in (fused, loop):
        for _ in range(3):
            policy.optimizer.zero_grad()
            out = policy.evaluate_sequences(torch.arange(3, 12).repeat(2, 1), torch.ones(2, 9, dtype=torch.long), 4)
            (out.logits.logsumexp(-1).mean() + out.values.square().mean()).backward()
            policy.optimizer.step()
    for a, b in zip(fused.parameters(), loop.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_export_loads_with_auto_class_and_pipeline(tiny_gpt2_dir, tmp_path):
    env = vec_env(tiny_gpt2_dir)
    policy = make_policy(env, tiny_gpt2_dir)
    policy.save_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for a, b in zip(model.state_dict().values(), policy.lm.state_dict().values()):
        assert torch.equal(a, b)
    generator = pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    out = generator("The cat", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("The cat")


# ------------------------------------------------------------------------------ learning with SB3
@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-policy"), seed=0)


def test_stock_ppo_learns_to_emit_the_rewarded_token(micro_dir):
    env = micro_env(micro_dir)
    model = PPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=32, batch_size=64,
                learning_rate=3e-3, n_epochs=4, seed=0, device="cpu")
    before = prob_of_a(model.policy, env)
    model.learn(1536)
    after = prob_of_a(model.policy, env)
    assert before < 0.35 and after > 0.6, (before, after)


def test_a2c_runs_and_improves(micro_dir):
    env = micro_env(micro_dir)
    model = A2C(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=8, learning_rate=3e-3,
                seed=0, device="cpu")
    before = prob_of_a(model.policy, env)
    model.learn(1536)
    assert prob_of_a(model.policy, env) > before + 0.1


def test_maskable_ppo_with_reference_top_k_masks(micro_dir):
    env = micro_env(micro_dir, kl_coef=0.05, mask_top_k=2)
    env.reset()
    masks = env.action_masks()
    assert masks.shape == (8, 5) and (masks.sum(1) == 2).all()
    model = MaskablePPO(MaskableTransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=16,
                        batch_size=64, seed=0, device="cpu")
    model.learn(256)
    obs = env.reset()
    masks = env.action_masks()
    actions, _ = model.predict(obs, action_masks=masks)
    assert all(masks[i, a] for i, a in enumerate(actions))


def test_sb3_save_load_round_trip(micro_dir, tmp_path):
    env = micro_env(micro_dir)
    model = PPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=8, batch_size=32,
                learning_rate=1e-2, seed=0, device="cpu")
    model.learn(64)
    model.save(tmp_path / "ppo.zip")
    loaded = PPO.load(tmp_path / "ppo.zip", env=env, device="cpu")
    obs = obs_as_tensor(env.reset(), "cpu")
    with torch.no_grad():
        original, restored = model.policy.lm_forward(obs), loaded.policy.lm_forward(obs)
    assert torch.allclose(original.logits, restored.logits) and torch.allclose(original.values, restored.values)
    assert loaded.policy.model_name == str(micro_dir) and loaded.n_steps == 8
