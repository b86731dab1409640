"""TRL side of ``benchmarks/vs_trl.py``: run in a *separate* virtual environment that has TRL (see README).

    /tmp/trl-ppo-venv/bin/python benchmarks/_trl_runner.py --algo ppo --model DIR --batch 16 --new-tokens 32

Prints one line ``RESULT {json}`` with the generated tokens/s of each timed ``trainer.train()`` and the peak
RSS of the process. Uses the same prompts and programmatic reward as our side (``benchmarks/common.py``).
TRL's PPOTrainer only accepts a reward *model*; its ``get_reward`` is wrapped so that a marker module
scores the decoded completions with :func:`benchmarks.common.vowel_reward` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def ppo_trainer(args, steps: int, output_dir: str):
    import torch
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")

    class ProgrammaticReward(nn.Module):
        """Marker: scores decoded completions with the shared programmatic reward."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("unused", torch.zeros(1))

    if not hasattr(ppo_module, "_bench_original_get_reward"):
        ppo_module._bench_original_get_reward = ppo_module.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        if isinstance(model, ProgrammaticReward):
            prompts = tokenizer.batch_decode(query_responses[:, :context_length], skip_special_tokens=True)
            texts = tokenizer.batch_decode(query_responses[:, context_length:], skip_special_tokens=True)
            return None, torch.tensor(common.vowel_reward(prompts, texts)), None
        return ppo_module._bench_original_get_reward(model, query_responses, pad_token_id, context_length)

    ppo_module.get_reward = get_reward  # the latest trainer's marker class
    prompts = [common.PROMPTS[i % len(common.PROMPTS)] for i in range(max(64, args.batch))]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})
    policy = AutoModelForCausalLM.from_pretrained(args.model)
    reference = AutoModelForCausalLM.from_pretrained(args.model)
    value = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
    config = PPOConfig(output_dir=output_dir, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                       num_mini_batches=1, num_ppo_epochs=args.epochs, response_length=args.new_tokens,
                       kl_coef=args.kl_coef, total_episodes=steps * args.batch, learning_rate=5e-5,
                       stop_token=None, num_sample_generations=0, local_rollout_forward_batch_size=args.batch,
                       report_to="none", use_cpu=True, save_strategy="no", logging_steps=10**6, seed=args.seed,
                       bf16=False, disable_tqdm=True, dataloader_num_workers=0)
    return PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                      reward_model=ProgrammaticReward(), train_dataset=dataset, value_model=value)


def critic_free_trainer(args, steps: int, output_dir: str):
    from datasets import Dataset
    from transformers import AutoTokenizer

    if args.algo == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    prompts = [common.PROMPTS[i % len(common.PROMPTS)] for i in range(max(64, args.batch))]
    dataset = Dataset.from_dict({"prompt": prompts})
    config = Config(output_dir=output_dir, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                    num_generations=args.group_size, max_completion_length=args.new_tokens, beta=args.kl_coef,
                    num_iterations=args.epochs, learning_rate=5e-5, max_steps=steps, report_to="none",
                    use_cpu=True, save_strategy="no", logging_steps=10**6, seed=args.seed, bf16=False,
                    disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    return Trainer(model=args.model, reward_funcs=common.vowel_reward, args=config, train_dataset=dataset,
                   processing_class=tokenizer)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--algo", choices=("ppo", "grpo", "rloo"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--updates", type=int, default=4, help="optimisation steps (rollout + update) per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    common.pin_threads(args.threads)
    warnings.filterwarnings("ignore")
    import trl

    build = ppo_trainer if args.algo == "ppo" else critic_free_trainer
    rates, cpu_rates = [], []
    with tempfile.TemporaryDirectory() as out:
        build(args, 1, out).train()  # warm-up (not timed)
        for _ in range(args.repeats):
            trainer = build(args, args.updates, out)
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.train()
            tokens = args.updates * args.batch * args.new_tokens
            rates.append(tokens / (time.perf_counter() - start))
            cpu_rates.append(tokens / (time.process_time() - cpu_start))
            del trainer
    result = {"side": f"trl {trl.__version__}", "algo": args.algo, "tokens_per_s": rates, "cpu_tokens_per_s": cpu_rates,
              "peak_rss_bytes": common.peak_rss_bytes()}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
