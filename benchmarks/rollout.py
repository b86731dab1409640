"""Rollout throughput (generated tokens/s) of TokenPPO, stock SB3 PPO and the naive path, against a
hand-written batched KV-cache loop doing the same work (the ceiling).

Every variant generates ``--batch`` episodes of ``--new-tokens`` tokens from the same prompts with the same
model: per token one policy forward (logits + value head), one sample, one reference forward (the KL term),
and a reward call per finished episode. The variants are timed interleaved (a, b, c, d, a, b, ...), after
one warm-up call each.

(a) ceiling: a minimal loop over Hugging Face's returned KV caches (policy and reference caches);
(b) ``TokenPPO.collect_rollouts`` on ``make_text_vec_env`` (the batched ``TextGen-v0`` vector env);
(c) stock ``stable_baselines3.PPO.collect_rollouts`` with ``TransformerPolicy`` on the same env;
(d) naive: no KV cache anywhere: TokenPPO with ``policy_kwargs={"use_kv_cache": False}`` (the policy re-runs
    the whole context at every token) and the env's reference stepper replaced, in this script only, by one
    that re-runs each slot's whole history (the env always caches, by design);
(d') TokenPPO with ``use_kv_cache=False`` only (the env's reference keeps its KV cache).

With ``--turns K > 1``, the multi-turn case instead (``rollout_dialogue.json``): ``K``-turn dialogues of
``--new-tokens / K`` agent tokens per turn, a fixed reply after each turn but the last:
(a) ceiling: the same hand-written loop, each reply entering both KV caches with one forward of its chunk;
(b) ``TokenPPO.collect_rollouts`` on ``TextChat-v0`` (responder ``FixedReply``; the bench model never emits
    EOS, so every turn has exactly the budgeted tokens in both).

    python benchmarks/rollout.py --threads 1 --batch 16 --new-tokens 64 --repeats 5
    python benchmarks/rollout.py --threads 1 --batch 16 --new-tokens 128 --turns 4 --repeats 5
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402


def _sample_step(out, ref, value_head, generator, records: tuple[list, list, list, list]):
    """One token per row from the policy's last logits, recording the action, its log pi, the value and log pi_ref
    (what the env and the policy compute per step); returns the actions ``(B, 1)``."""
    import torch

    actions, logprobs, values, ref_logprobs = records
    logp = torch.log_softmax(out.logits[:, -1].float(), -1)
    # inverse-CDF sampling (torch.multinomial costs more than the forward on CPU; see agents.policy._sample)
    cdf = logp.exp().cumsum(-1)
    draw = torch.rand((logp.shape[0], 1), generator=generator) * cdf[:, -1:]
    action = torch.searchsorted(cdf, draw, right=True).clamp_(max=cdf.shape[-1] - 1)
    actions.append(action)
    logprobs.append(logp.gather(1, action))
    values.append(value_head(out.hidden_states[-1][:, -1]))
    ref_logprobs.append(torch.log_softmax(ref.logits[:, -1].float(), -1).gather(1, action))
    return action


def ceiling_rollout(policy_lm, value_head, ref_lm, tokenizer, prompts: list[str], new_tokens: int,
                    generator) -> int:
    """Generate ``new_tokens`` per prompt with policy + reference KV caches; returns the tokens generated."""
    import torch

    from text_envs.lm_stepper import cache_keyword, left_pad, positions_from_mask, returned_cache

    policy_key, ref_key = cache_keyword(policy_lm), cache_keyword(ref_lm)
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    ids, mask = left_pad(encoded, tokenizer.pad_token_id, torch.device("cpu"))
    positions = positions_from_mask(mask)
    batch = ids.shape[0]
    actions, logprobs, values, ref_logprobs = [], [], [], []
    with torch.no_grad():
        out = policy_lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1, output_hidden_states=True)
        ref = ref_lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        position = positions[:, -1:] + 1
        for t in range(new_tokens):
            action = _sample_step(out, ref, value_head, generator, (actions, logprobs, values, ref_logprobs))
            if t == new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
            out = policy_lm(input_ids=action, attention_mask=mask, position_ids=position, use_cache=True,
                            logits_to_keep=1, output_hidden_states=True, **{policy_key: returned_cache(out)})
            ref = ref_lm(input_ids=action, attention_mask=mask, position_ids=position, use_cache=True,
                         logits_to_keep=1, **{ref_key: returned_cache(ref)})
            position = position + 1
    completions = tokenizer.batch_decode(torch.cat(actions, 1).tolist(), skip_special_tokens=True)
    common.vowel_reward(prompts, completions)
    return batch * new_tokens


class FixedReply:
    """A responder answering every turn with the same message, reward 0 (the multi-turn benchmark's other side)."""

    name = "fixed-reply"
    message = "Go on, tell me more."

    def reset(self, *, seed=None, options=None) -> str:
        return "Tell me a story."

    def respond(self, agent_text: str):
        return self.message, 0.0, False, {}


def ceiling_dialogue(policy_lm, value_head, ref_lm, tokenizer, turns: int, turn_tokens: int, batch: int,
                     generator) -> int:
    """``turns`` turns of ``turn_tokens`` sampled tokens per row, the fixed reply's chunk entering both KV caches
    with one forward after each turn but the last; returns the agent tokens generated."""
    import torch

    from text_envs.dialogue import ChatFormat
    from text_envs.lm_stepper import cache_keyword, positions_from_mask, returned_cache

    chat = ChatFormat(tokenizer, use_template=False)
    opening = torch.tensor([chat.opening("Tell me a story.")] * batch)
    chunk = torch.tensor([chat.reply(FixedReply.message, close_turn=True)] * batch)
    keys = cache_keyword(policy_lm), cache_keyword(ref_lm)
    mask = torch.ones_like(opening)
    actions, logprobs, values, ref_logprobs = [], [], [], []

    def forward(ids, mask, out=None, ref=None):
        positions = positions_from_mask(mask)[:, -ids.shape[1]:]
        extra = {} if out is None else {keys[0]: returned_cache(out)}
        extra_ref = {} if ref is None else {keys[1]: returned_cache(ref)}
        out = policy_lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1, output_hidden_states=True, **extra)
        ref = ref_lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                     **extra_ref)
        return out, ref

    with torch.no_grad():
        out, ref = forward(opening, mask)
        for turn in range(turns):
            for t in range(turn_tokens):
                action = _sample_step(out, ref, value_head, generator, (actions, logprobs, values, ref_logprobs))
                if turn == turns - 1 and t == turn_tokens - 1:
                    break
                step = action if t < turn_tokens - 1 else torch.cat([action, chunk], 1)  # turn end: + the reply
                mask = torch.cat([mask, mask.new_ones(step.shape)], dim=1)
                out, ref = forward(step, mask, out, ref)
            tokenizer.batch_decode(torch.cat(actions[-turn_tokens:], 1).tolist(), skip_special_tokens=True)
    return batch * turns * turn_tokens


def dialogue_main(args) -> dict:
    """The multi-turn case (``--turns K``): TokenPPO on TextChat-v0 against :func:`ceiling_dialogue`."""
    import torch

    from agents import TokenPPO, TransformerPolicy, make_text_vec_env
    from text_envs.dialogue import ChatFormat
    from text_envs.models import load_model, load_tokenizer

    if args.new_tokens % args.turns:
        raise SystemExit(f"--new-tokens {args.new_tokens} must be a multiple of --turns {args.turns}")
    turn_tokens = args.new_tokens // args.turns
    model_path = common.resolve_model(args.model, args.seed)
    tokenizer = load_tokenizer(model_path)
    chunk = len(ChatFormat(tokenizer, use_template=False).reply(FixedReply.message, close_turn=True))
    env_kwargs = {"model": model_path, "responder": FixedReply, "kl_coef": 0.05, "max_turns": args.turns,
                  "max_turn_tokens": turn_tokens, "max_episode_tokens": args.new_tokens + args.turns * chunk + 1,
                  "max_prompt_tokens": 32, "prompt_format": "raw"}
    env = make_text_vec_env(args.batch, env_kwargs=env_kwargs, env_id="TextChat-v0")
    algo = TokenPPO(TransformerPolicy, env, n_steps=args.new_tokens, batch_size=args.batch, n_epochs=1,
                    policy_kwargs={"model": model_path}, seed=args.seed, device="cpu")
    _, callback = algo._setup_learn(10**9, callback=None)

    def collect() -> int:
        before = algo.num_timesteps
        algo.collect_rollouts(algo.env, callback, algo.rollout_buffer, n_rollout_steps=algo.n_steps)
        return algo.num_timesteps - before

    policy_lm = load_model(model_path, device="cpu", dtype="float32")
    ref_lm = load_model(model_path, device="cpu", dtype="float32")
    hidden = policy_lm.config.n_embd if hasattr(policy_lm.config, "n_embd") else policy_lm.config.hidden_size
    value_head = torch.nn.Linear(hidden, 1)
    generator = torch.Generator().manual_seed(args.seed)
    workloads = {
        "(a) ceiling: hand-written KV-cache dialogue loop": lambda: ceiling_dialogue(
            policy_lm, value_head, ref_lm, tokenizer, args.turns, turn_tokens, args.batch, generator),
        "(b) TokenPPO.collect_rollouts on TextChat-v0": collect,
    }
    results = common.interleaved(workloads, args.repeats)
    a, b = results.values()
    common.print_table(f"Multi-turn rollout: agent tokens/s, batch {args.batch}, {args.turns} turns of {turn_tokens} "
                       f"tokens, {args.threads} thread(s), median of {args.repeats}", list(results.items()))
    payload = {"config": {"batch": args.batch, "turns": args.turns, "turn_tokens": turn_tokens,
                          "reply_tokens": chunk, "repeats": args.repeats, "kl_coef": 0.05,
                          "model": common.describe_model(model_path)},
               "environment": common.environment(args.threads), "results": results,
               "targets": {"tokenppo_dialogue_vs_ceiling": 0.8},
               "ratios_cpu_time": {"tokenppo_dialogue_vs_ceiling": common.cpu_ratio(b, a)},
               "ratios": {"tokenppo_dialogue_vs_ceiling": common.ratio(b, a)}}
    common.write_result("rollout_dialogue", args.out, payload)
    return payload


def uncached_stepper_class():
    """A drop-in for the env's ``BatchedLMStepper`` that keeps no KV cache: every step re-runs each slot's
    whole token history (what RL4LMs' replay does), for the fully naive variant (e)."""
    import torch

    from text_envs.lm_stepper import BatchedLMStepper, StepOutput, left_pad, positions_from_mask

    class UncachedStepper(BatchedLMStepper):
        def _full(self, sequences) -> StepOutput:
            ids, mask = left_pad(sequences, self.pad_id, self.device)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                             use_cache=False, logits_to_keep=1, output_hidden_states=self.output_hidden)
            hidden = out.hidden_states[-1][:, -1].float() if self.output_hidden else None
            return StepOutput(out.logits[:, -1].float(), hidden)

        @torch.no_grad()
        def prefill(self, slots, sequences) -> StepOutput:
            for slot, seq in zip(slots, sequences):
                self.tokens[slot] = list(seq)
            self.cache = True  # "started"
            return self._full(sequences)

        @torch.no_grad()
        def step(self, tokens, active=None) -> StepOutput:
            active = torch.ones(self.batch_size, dtype=torch.bool) if active is None else active
            values = tokens.tolist()
            for slot in torch.nonzero(active).flatten().tolist():
                self.tokens[slot].append(values[slot])
            return self._full([seq if seq else [self.pad_id] for seq in self.tokens])

    return UncachedStepper


def main(argv: list[str] | None = None) -> dict:
    cli = common.parser(__doc__.splitlines()[0], batch=16, new_tokens=64, repeats=3)
    cli.add_argument("--turns", type=int, default=1, help="> 1: the multi-turn case (TextChat-v0), this many turns")
    args = cli.parse_args(argv)
    common.pin_threads(args.threads)
    if args.turns > 1:
        return dialogue_main(args)
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import set_random_seed

    from agents import TokenPPO, TransformerPolicy, make_text_vec_env
    from text_envs.models import load_model, load_tokenizer

    model_path = common.resolve_model(args.model, args.seed)
    set_random_seed(args.seed)
    env_kwargs = {"model": model_path, "task": common.bench_task(args.new_tokens),
                  "reward_model": common.vowel_reward, "kl_coef": 0.05, "max_new_tokens": args.new_tokens}

    def make(cls, uncached_reference: bool = False, **policy_kwargs):
        env = make_text_vec_env(args.batch, env_kwargs=env_kwargs)
        if uncached_reference:
            batch = env.env.batch
            batch.stepper = uncached_stepper_class()(batch.stepper.model, args.batch, batch.pad_id)
        algo = cls(TransformerPolicy, env, n_steps=args.new_tokens, batch_size=args.batch, n_epochs=1,
                   policy_kwargs={"model": model_path, **policy_kwargs}, seed=args.seed, device="cpu")
        _, callback = algo._setup_learn(10**9, callback=None)

        def collect() -> int:
            before = algo.num_timesteps
            algo.collect_rollouts(algo.env, callback, algo.rollout_buffer, n_rollout_steps=algo.n_steps)
            return algo.num_timesteps - before
        return collect

    # (a) the ceiling: same weights and value head as the policy, its own reference copy
    tokenizer = load_tokenizer(model_path)
    policy_lm = load_model(model_path, device="cpu", dtype="float32")
    ref_lm = load_model(model_path, device="cpu", dtype="float32")
    value_head = torch.nn.Linear(policy_lm.config.n_embd if hasattr(policy_lm.config, "n_embd")
                                 else policy_lm.config.hidden_size, 1)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    def ceiling() -> int:
        prompts = [common.PROMPTS[i] for i in rng.integers(len(common.PROMPTS), size=args.batch)]
        return ceiling_rollout(policy_lm, value_head, ref_lm, tokenizer, prompts, args.new_tokens, generator)

    workloads = {
        "(a) ceiling: hand-written KV-cache loop": ceiling,
        "(b) TokenPPO.collect_rollouts": make(TokenPPO),
        "(c) SB3 PPO.collect_rollouts + TransformerPolicy": make(PPO),
        "(d) naive: TokenPPO, no KV cache (policy and reference)": make(TokenPPO, uncached_reference=True,
                                                                         use_kv_cache=False),
        "(d') TokenPPO, use_kv_cache=False (env reference still cached)": make(TokenPPO, use_kv_cache=False),
    }
    results = common.interleaved(workloads, args.repeats)
    a, b, c, d, d_policy = results.values()
    title = (f"Rollout: generated tokens/s, batch {args.batch}, {args.new_tokens} new tokens, "
             f"{args.threads} thread(s), median of {args.repeats}")
    common.print_table(title, list(results.items()))
    ratios = {"tokenppo_vs_ceiling": common.ratio(b, a), "sb3ppo_vs_ceiling": common.ratio(c, a),
              "tokenppo_vs_naive": common.ratio(b, d), "tokenppo_vs_naive_policy_only": common.ratio(b, d_policy)}
    cpu_ratios = {"tokenppo_vs_ceiling": common.cpu_ratio(b, a), "sb3ppo_vs_ceiling": common.cpu_ratio(c, a),
                  "tokenppo_vs_naive": common.cpu_ratio(b, d),
                  "tokenppo_vs_naive_policy_only": common.cpu_ratio(b, d_policy)}
    payload = {"config": {"batch": args.batch, "new_tokens": args.new_tokens, "repeats": args.repeats,
                          "kl_coef": 0.05, "reward": "vowel_reward", "model": common.describe_model(model_path),
                          "naive_note": "(d) disables every KV cache: the policy with use_kv_cache=False and the "
                                        "env's reference through a benchmark-side uncached stepper (the env itself "
                                        "always caches); (d') disables the policy's cache only"},
               "environment": common.environment(args.threads),
               "results": results, "targets": {"tokenppo_vs_ceiling": 0.8, "sb3ppo_vs_ceiling": 0.5,
                                               "tokenppo_vs_naive": 5.0},
               "ratios_cpu_time": cpu_ratios, "ratios": ratios}
    common.write_result("rollout", args.out, payload)
    return payload


if __name__ == "__main__":
    main()
