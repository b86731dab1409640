"""Update throughput (trained tokens/s = completion tokens x epochs / time) of ``TokenPPO.train()``, against a
plain forward + backward + optimizer loop over the same sequences, epochs and minibatches (the ceiling),
and against stock SB3 ``PPO.train()`` with ``TransformerPolicy`` on a rollout of the same size (SB3 evaluates
each token's observation with its own forward pass).

One rollout of ``--batch`` episodes x ``--new-tokens`` tokens is collected once per algorithm; then the
updates are timed interleaved (ceiling, TokenPPO, SB3 PPO, ceiling, ...), after one warm-up each.

    python benchmarks/update.py --threads 1 --batch 16 --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SB3_LABEL = "SB3 PPO.train() + TransformerPolicy (one forward per token)"


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0], batch=16, new_tokens=64, repeats=3)
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per update (default 4)")
    p.add_argument("--minibatch", type=int, default=4, help="sequences per minibatch (default 4; SB3 PPO gets "
                                                            "minibatch x new-tokens observations)")
    p.add_argument("--skip-sb3", action="store_true", help="leave stock SB3 PPO out (it is slow)")
    args = p.parse_args(argv)
    common.pin_threads(args.threads)
    import numpy as np
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import set_random_seed

    from agents import TokenPPO, TransformerPolicy, make_text_vec_env
    from agents.rl_math import gather_logprobs
    from text_envs.lm_stepper import positions_from_mask

    model_path = common.resolve_model(args.model, args.seed)
    set_random_seed(args.seed)
    env_kwargs = {"model": model_path, "task": common.bench_task(args.new_tokens),
                  "reward_model": common.vowel_reward, "kl_coef": 0.05, "max_new_tokens": args.new_tokens}

    def make(cls, batch_size: int):
        env = make_text_vec_env(args.batch, env_kwargs=env_kwargs)
        algo = cls(TransformerPolicy, env, n_steps=args.new_tokens, batch_size=batch_size, n_epochs=args.epochs,
                   policy_kwargs={"model": model_path}, seed=args.seed, device="cpu")
        _, callback = algo._setup_learn(10**9, callback=None)
        algo.collect_rollouts(algo.env, callback, algo.rollout_buffer, n_rollout_steps=algo.n_steps)
        return algo

    # --- TokenPPO
    ppo = make(TokenPPO, args.minibatch)
    buffer = ppo.rollout_buffer
    n_tokens = buffer.num_tokens

    def tokenppo_update() -> int:
        ppo.train()
        return n_tokens * args.epochs

    # --- the ceiling: same sequences, epochs, minibatches; pre-collated tensors, a fresh policy copy
    ceiling_policy = TransformerPolicy(ppo.observation_space, ppo.action_space, lambda _: 5e-5, model=model_path)
    ceiling_policy.set_training_mode(True)
    lm, head, optimizer = ceiling_policy.lm, ceiling_policy.value_head, ceiling_policy.optimizer
    buffer.compute_gae(1.0, 0.95)
    rng = np.random.default_rng(args.seed)
    batches = [list(buffer.minibatches(args.minibatch, rng)) for _ in range(args.epochs)]

    def ceiling_update() -> int:
        for epoch in batches:
            for batch in epoch:
                keep = batch.actions.shape[1] + 1
                out = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=positions_from_mask(batch.attention_mask), logits_to_keep=keep,
                         output_hidden_states=True, use_cache=False)
                logprobs = gather_logprobs(out.logits[:, :-1], batch.actions)
                values = head(out.hidden_states[-1][:, -keep:-1]).squeeze(-1)
                mask = batch.completion_mask
                loss = (-(logprobs * batch.advantages) * mask).sum() / mask.sum() + \
                    0.5 * (((values - batch.returns) ** 2) * mask).sum() / mask.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return n_tokens * args.epochs

    workloads = {"ceiling: plain forward+backward+AdamW loop": ceiling_update, "TokenPPO.train()": tokenppo_update}
    if not args.skip_sb3:
        sb3 = make(PPO, args.minibatch * args.new_tokens)
        sb3_tokens = sb3.rollout_buffer.buffer_size * sb3.rollout_buffer.n_envs

        def sb3_update() -> int:
            sb3.train()
            return sb3_tokens * args.epochs
        workloads[SB3_LABEL] = sb3_update

    results = common.interleaved(workloads, args.repeats, no_warmup=(SB3_LABEL,))
    stats = list(results.values())
    title = (f"Update: trained tokens/s (tokens x epochs / s), {args.batch} sequences x {args.new_tokens} tokens, "
             f"{args.epochs} epochs, minibatch {args.minibatch} sequences, {args.threads} thread(s), "
             f"median of {args.repeats}")
    common.print_table(title, list(results.items()))
    ratios = {"tokenppo_vs_ceiling": common.ratio(stats[1], stats[0])}
    cpu_ratios = {"tokenppo_vs_ceiling": common.cpu_ratio(stats[1], stats[0])}
    if not args.skip_sb3:
        ratios["tokenppo_vs_sb3ppo"] = common.ratio(stats[1], stats[2])
        cpu_ratios["tokenppo_vs_sb3ppo"] = common.cpu_ratio(stats[1], stats[2])
    payload = {"config": {"batch": args.batch, "new_tokens": args.new_tokens, "epochs": args.epochs,
                          "minibatch_sequences": args.minibatch, "repeats": args.repeats,
                          "rollout_tokens": n_tokens, "model": common.describe_model(model_path)},
               "environment": common.environment(args.threads), "results": results,
               "targets": {"tokenppo_vs_ceiling": 0.7, "tokenppo_vs_sb3ppo": 10.0},
               "ratios_cpu_time": cpu_ratios, "ratios": ratios}
    common.write_result("update", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
