"""Stock stable-baselines3 algorithms on TextGen: PPO and A2C with TransformerPolicy, MaskablePPO with
NLPO-style top-k masks from the reference model.

Run: python examples/compare_sb3_algorithms.py [TIMESTEPS]   (default 512 generated tokens each)
"""

from __future__ import annotations

import sys

from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, PPO

from agents import MaskableTransformerPolicy, TransformerPolicy, make_text_vec_env


def main(timesteps: int = 512) -> None:
    env_kwargs = {"model": "tiny", "task": "sentiment", "kl_coef": 0.05, "max_new_tokens": 8}
    for name, algo, policy, masks in (("PPO", PPO, TransformerPolicy, 0), ("A2C", A2C, TransformerPolicy, 0),
                                      ("MaskablePPO", MaskablePPO, MaskableTransformerPolicy, 50)):
        env = make_text_vec_env(8, mask_top_k=masks, env_kwargs=env_kwargs)
        extra = {"n_steps": 32, "batch_size": 64} if algo is not A2C else {"n_steps": 8}
        # ent_coef = kl_coef approximates the agent's half of the KL penalty (TokenPPO adds it exactly)
        model = algo(policy, env, policy_kwargs={"model": "tiny"}, ent_coef=0.05, seed=0, **extra)
        model.learn(timesteps)
        returns = [episode["r"] for episode in model.ep_info_buffer]
        print(f"{name}: trained {model.num_timesteps} tokens, {len(returns)} episodes, "
              f"mean episode return {sum(returns) / max(1, len(returns)):+.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
