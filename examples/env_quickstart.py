"""TextGen-v0 in five minutes: make an env, step it, swap reward models, batch it.

Run: python examples/env_quickstart.py
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

import text_envs  # noqa: F401  (registers TextGen-v0)


def main() -> None:
    env = gym.make("TextGen-v0", task="sentiment", max_new_tokens=8, render_mode="ansi")
    obs, info = env.reset(seed=0)
    print("prompt:", info["prompt"])
    total, terminated = 0.0, False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += reward
    print("random completion:", repr(info["text"]), "score:", info["score"], "return:", round(total, 3))

    # the same prompt scored by other reward models, swapped through the env arguments
    for spec, kwargs in (("toxicity", None), ("length", {"target_words": 5}), ("format", {"pattern": r"\.$"})):
        scored = gym.make("TextGen-v0", reward_model=spec, reward_kwargs=kwargs, kl_coef=0.0, max_new_tokens=6)
        scored.reset(options={"prompt": info["prompt"]})
        for token in scored.unwrapped.tokenizer(" I am glad.", add_special_tokens=False)["input_ids"]:
            _, _, done, _, final = scored.step(token)
            if done:
                break
        else:
            _, _, _, _, final = scored.step(scored.unwrapped.tokenizer.eos_token_id)
        print(f"{spec:>9}: {final['score']:+.3f} for {final['text']!r}")

    # natively batched: one KV-cached reference forward per step for all 4 episodes
    envs = gym.make_vec("TextGen-v0", num_envs=4, task="arithmetic")
    obs, info = envs.reset(seed=0)
    for _ in range(5):
        obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
    print("batched prompts:", list(info.get("final_info", {}).get("prompt", [])) or "still running",
          "rewards:", np.round(rewards, 3))


if __name__ == "__main__":
    main()
