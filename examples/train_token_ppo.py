"""Fine-tune the bundled tiny LM with TokenPPO on the sentiment task, then export it.

Run: python examples/train_token_ppo.py [TIMESTEPS]   (default 8192 generated tokens)
"""

from __future__ import annotations

import sys
import tempfile

from transformers import pipeline

from agents import TokenPPO, TransformerPolicy, make_text_vec_env
from agents.evaluation import evaluate_model


def main(timesteps: int = 8192) -> None:
    env = make_text_vec_env(16, env_kwargs={"model": "tiny", "task": "sentiment", "kl_coef": 0.05})
    model = TokenPPO(TransformerPolicy, env, policy_kwargs={"model": "tiny"}, learning_rate=1e-4, seed=0,
                     verbose=1)
    before = evaluate_model(model.policy.lm, "sentiment", n=32, env=env.env)
    model.learn(timesteps)
    after = evaluate_model(model.policy.lm, "sentiment", n=32, env=env.env)
    print(f"held-out score {before.score_mean:+.3f} -> {after.score_mean:+.3f}, KL {after.kl_mean:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        model.policy.save_pretrained(folder)  # a plain Hugging Face model folder
        generate = pipeline("text-generation", model=folder, device="cpu")
        print(generate("The best thing about today is", max_new_tokens=12, do_sample=True)[0]["generated_text"])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8192)
