"""``TransformerPolicy``: a stable-baselines3 actor-critic policy that *is* a Hugging Face causal LM.

* Action logits are the LM head's logits for the last real token of the observation (no extra
  vocabulary-sized layer, no orthogonal re-initialisation of pretrained weights).
* The value is a small linear head on the same trunk's last hidden state (``value_trunk="shared"``,
  default) or on a separate copy of the trunk (``value_trunk="separate"``).
* During rollouts (no gradient) the policy keeps one KV cache per env slot and feeds only the new
  token when an observation extends the previous one by exactly the action taken, or only the new
  chunk when the env appended tokens after the action (a ``TextChat-v0`` reply: one prefill of the
  chunk, never a recompute of the dialogue); other slots (new episodes, any mismatch) are
  re-prefilled. Same results as the uncached forward.
* Sampling controls (``temperature``, ``top_k``, ``top_p``) change the distribution itself, so the
  log-probability stored for PPO is that of the distribution actually sampled from.

Works with ``stable_baselines3.PPO``/``A2C`` (``TransformerPolicy``) and with
``sb3_contrib.MaskablePPO`` (``MaskableTransformerPolicy``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.distributions import CategoricalDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn
from transformers import AutoModel, PreTrainedModel

from agents.lora import LoraSettings
from agents.rl_math import process_logits
from text_envs.errors import ConfigError, InvalidObservationError
from text_envs.lm_stepper import BatchedLMStepper, positions_from_mask, takes_column_indices
from text_envs.models import check_vocabulary, load_model, load_tokenizer, quiet_transformers
from text_envs.validation import check_bool

VALUE_TRUNKS = ("shared", "separate")
# SB3 constructor parameters that a language-model policy does not use (dropped from saved kwargs)
_UNUSED_SB3_PARAMETERS = ("net_arch", "activation_fn", "ortho_init", "log_std_init", "full_std", "use_expln",
                          "squash_output", "features_extractor_class", "features_extractor_kwargs",
                          "share_features_extractor", "normalize_images", "use_sde")


class LMOutput(NamedTuple):
    """Policy logits and values for a batch of observations."""

    logits: torch.Tensor  # (B, V) or (B, T, V)
    values: torch.Tensor  # (B,) or (B, T)


def _as_token_tensors(obs: PyTorchObs, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of an observation batch as int64 ``(B, L)``, checked: integer ids in
    ``0 .. vocab_size - 1`` and a 0/1 mask (e.g. ``VecNormalize(norm_obs=True)`` turns ids into floats)."""
    if not isinstance(obs, dict) or "input_ids" not in obs or "attention_mask" not in obs:
        raise ConfigError("TransformerPolicy needs Dict observations with 'input_ids' and 'attention_mask' "
                          "(the TextGen-v0 observation space)")
    ids, mask = obs["input_ids"], obs["attention_mask"]
    if ids.shape != mask.shape or ids.dim() != 2:
        raise InvalidObservationError(f"input_ids and attention_mask must both be (batch, length), got "
                                      f"{tuple(ids.shape)} and {tuple(mask.shape)}")
    for name, tensor, high in (("input_ids", ids, vocab_size - 1), ("attention_mask", mask, 1)):
        if tensor.numel() == 0:
            continue
        if tensor.is_floating_point() and not bool((tensor == tensor.round()).all()):
            raise InvalidObservationError(f"{name} must hold integers, got non-integer values (normalised "
                                          "observations? token ids must reach the policy unchanged)")
        low_value, high_value = (int(value) for value in torch.aminmax(tensor))
        if low_value < 0 or high_value > high:
            raise InvalidObservationError(f"{name} must lie in 0..{high}, got values in {low_value}..{high_value}")
    return ids.long(), mask.long()


def _trim_left_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop leading columns that are padding in every row. ``(B, L) -> (B, L')``."""
    used = mask.any(dim=0)
    first = int(torch.nonzero(used)[0]) if used.any() else mask.shape[1] - 1
    return ids[:, first:], mask[:, first:]


def _sample(distribution: Distribution, deterministic: bool) -> torch.Tensor:
    """Draw one action per row of a categorical ``distribution`` (SB3 ``get_actions`` semantics).

    Sampling is by inverse CDF (``searchsorted`` of one uniform per row in the cumulative
    probabilities): the same distribution as ``torch.multinomial``, which on CPU draws one exponential
    variate per vocabulary entry and costs ~20x more for a (16, 4096) batch (more than the forward pass
    of a small LM). Zero-probability tokens (masked or filtered out) are never drawn.
    """
    if deterministic:
        return distribution.get_actions(deterministic=True)
    probs = distribution.distribution.probs  # (B, V), masked/filtered entries are exactly 0
    cdf = probs.cumsum(-1)
    draw = torch.rand((*cdf.shape[:-1], 1), device=cdf.device, dtype=cdf.dtype) * cdf[..., -1:]
    return torch.searchsorted(cdf, draw, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def optimizer_options(optimizer_class: type[torch.optim.Optimizer], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the policy builds its optimizer with: ``kwargs``, plus ``fused=True`` for PyTorch's
    ``Adam`` / ``AdamW`` unless ``kwargs`` chooses an implementation (``fused`` or ``foreach``).

    The fused kernel does the same update (to float rounding) over all parameters at once instead of PyTorch's
    CPU default, a Python loop over them (``benchmarks/fixes.py`` measures the update before and after); it
    exists on every device the policy runs on (CPU, CUDA, MPS).
    """
    if optimizer_class in (torch.optim.Adam, torch.optim.AdamW) and not {"fused", "foreach"} & kwargs.keys():
        return {**kwargs, "fused": True}
    return dict(kwargs)


def _disable_dropout(module: nn.Module) -> None:
    """Set every dropout probability to 0: rollout and update must see the same distribution (PPO's ratio)."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0


class TransformerPolicyCore:
    """The LM machinery shared by :class:`TransformerPolicy` and :class:`MaskableTransformerPolicy`."""

    lm: PreTrainedModel
    value_head: nn.Linear
    value_model: nn.Module | None
    _distribution_class: type[Distribution]

    def _store_lm_options(self, model: str | PreTrainedModel, value_trunk: str, temperature: float, top_k: int,
                          top_p: float, use_kv_cache: bool, dtype: str, trust_remote_code: bool,
                          lora: LoraSettings | dict[str, Any] | None = None,
                          gradient_checkpointing: bool = False) -> None:
        self.lora = LoraSettings.from_value(lora)
        if self.lora is not None and value_trunk == "separate":
            raise ConfigError("value_trunk='separate' is for full fine-tuning; a LoRA policy keeps the value head on "
                              "the shared trunk")
        self.gradient_checkpointing = check_bool("gradient_checkpointing", gradient_checkpointing)
        if value_trunk not in VALUE_TRUNKS:
            raise ConfigError(f"value_trunk must be one of {VALUE_TRUNKS}, got {value_trunk!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        if not (isinstance(top_k, int) and top_k >= 0):
            raise ConfigError(f"top_k must be an int >= 0 (0 disables it), got {top_k!r}")
        if not 0 < top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (1 disables it), got {top_p!r}")
        if dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
        self.model_name = model
        self.value_trunk = value_trunk
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.use_kv_cache = use_kv_cache
        self.dtype_option = dtype
        self.trust_remote_code = trust_remote_code
        self._stepper: BatchedLMStepper | None = None
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None  # last (ids, mask) seen in a rollout

    def _build_lm(self) -> None:
        """Load the LM (fp32 master weights), the value head and, optionally, a separate value trunk; with
        LoRA, wrap the LM with ``peft`` (frozen base, trainable adapters)."""
        self.lm = load_model(self.model_name, device="cpu", dtype="float32", trust_remote_code=self.trust_remote_code)
        self.lm.requires_grad_(True)
        _disable_dropout(self.lm)
        if self.gradient_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            from peft import get_peft_model

            with warnings.catch_warnings():
                # peft reads transformers' deprecated `is_gradient_checkpointing` (peft's call, not ours):
                # ignored for this one message so that every LoRA run does not print it.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                self.lm = get_peft_model(self.lm, self.lora.peft_config(self.lm.config.model_type))
        hidden = self.lm.config.get_text_config().hidden_size
        self.value_model = None
        if self.value_trunk == "separate":
            self.value_model = AutoModel.from_config(self.lm.config.get_text_config())
            self.value_model.load_state_dict(self.lm.base_model.state_dict())
            _disable_dropout(self.value_model)
        self.value_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.value_head.weight, std=1.0 / np.sqrt(hidden + 1))
        nn.init.zeros_(self.value_head.bias)
        name = self.model_name if isinstance(self.model_name, str) else str(self.model_name.name_or_path)
        self.tokenizer = load_tokenizer(name)
        check_vocabulary(self.tokenizer, int(self.lm.get_output_embeddings().weight.shape[0]), name)

    def _lm_options(self) -> dict[str, Any]:
        return {"model": self.model_name, "value_trunk": self.value_trunk, "temperature": self.temperature,
                "top_k": self.top_k, "top_p": self.top_p, "use_kv_cache": self.use_kv_cache,
                "dtype": self.dtype_option, "trust_remote_code": self.trust_remote_code,
                "lora": None if self.lora is None else self.lora.to_dict(),
                "gradient_checkpointing": self.gradient_checkpointing}

    # --------------------------------------------------------------------------------------- LoRA
    @contextlib.contextmanager
    def reference_context(self) -> Iterator[None]:
        """Run the LM as the frozen reference: the LoRA adapters disabled (the base model), under the policy's
        autocast (bf16 on CUDA). What an env sharing its reference with this policy runs its forwards in."""
        if self.lora is None:
            raise ConfigError("only a LoRA policy can be its own reference (with its adapters disabled)")
        with self.lm.disable_adapter(), self._autocast():
            yield

    def _frozen_names(self) -> set[str]:
        """State-dict keys of the frozen base weights of a LoRA policy (reloaded from the model, never saved)."""
        if self.lora is None:
            return set()
        # every frozen entry of the LM's state (tied weights, e.g. a tied LM head, appear under several names)
        return {f"lm.{name}" for name, value in self.lm.state_dict(keep_vars=True).items() if not value.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The module's state; for a LoRA policy without the frozen base weights (adapters, value head only):
        SB3's ``save`` then stores megabytes, not the whole model."""
        state = super().state_dict(*args, **kwargs)  # type: ignore[misc]
        frozen = self._frozen_names()
        if not frozen or args or kwargs.get("destination") is not None or kwargs.get("prefix"):
            return state  # a parent module's recursive call: leave its dictionary alone
        return type(state)((key, value) for key, value in state.items() if key not in frozen)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load a state saved by :meth:`state_dict`: for a LoRA policy the frozen base weights may be absent
        (they come from the base model); anything else missing or unexpected is still an error under ``strict``."""
        frozen = self._frozen_names()
        result = super().load_state_dict(state_dict, strict=strict and not frozen, assign=assign)  # type: ignore[misc]
        if frozen and strict:
            missing = [k for k in result.missing_keys if k not in frozen]
            if missing or result.unexpected_keys:
                raise ConfigError(f"the saved LoRA policy does not match this one: missing {missing[:5]}, "
                                  f"unexpected {list(result.unexpected_keys)[:5]}")
        return result

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA (``dtype="auto"`` / ``"bfloat16"``), else a no-op context (cheaper than a disabled
        ``torch.autocast``: this runs at every rollout step)."""
        if self.dtype_option not in ("auto", "bfloat16"):
            return contextlib.nullcontext()
        device = self.value_head.weight.device  # the policy moves as a whole (SB3's .to(device))
        if device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    # ----------------------------------------------------------------------------- uncached forwards
    def _trunk(self, ids: torch.Tensor, mask: torch.Tensor, keep: int,
               drop_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward: logits of the last ``keep`` positions ``(B, keep, V)`` and value-trunk hidden
        states of the same positions ``(B, keep, H)``; with ``drop_last``, of the ``keep - 1`` positions before
        the last one (no LM head on the last column, and, where the model takes column indices as
        ``logits_to_keep``, no slice of the logits whose backward would write a vocabulary-sized zero tensor)."""
        positions = positions_from_mask(mask)
        width = ids.shape[1]
        stop = width - 1 if drop_last else width
        logits_to_keep: int | torch.Tensor = keep
        if drop_last and takes_column_indices(self.lm):
            logits_to_keep = torch.arange(width - keep, stop, device=ids.device)  # (keep - 1,)
        with self._autocast():
            out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=logits_to_keep,
                          output_hidden_states=self.value_model is None, use_cache=False)
            if self.value_model is None:
                hidden = out.hidden_states[-1][:, width - keep:stop]
            else:
                hidden = self.value_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                          use_cache=False).last_hidden_state[:, width - keep:stop]
        logits = out.logits[:, :-1] if drop_last and isinstance(logits_to_keep, int) else out.logits
        return logits.float(), hidden.float()

    def lm_forward(self, obs: PyTorchObs) -> LMOutput:
        """Logits ``(B, V)`` and values ``(B,)`` of the last real token, with one uncached forward."""
        ids, mask = _trim_left_padding(*_as_token_tensors(obs, self.action_space.n))
        logits, hidden = self._trunk(ids, mask, keep=1)
        return LMOutput(logits[:, -1], self.value_head(hidden[:, -1]).squeeze(-1))

    def evaluate_sequences(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_tokens: int,
                           action_positions: torch.Tensor | None = None) -> LMOutput:
        """Teacher-forced evaluation of whole sequences in ONE forward.

        ``input_ids``/``attention_mask`` ``(B, L)`` hold left-padded prompts followed by completions
        right-padded to ``num_tokens = T`` (the completions occupy the last ``T`` columns). Returns the
        processed logits ``(B, T, V)`` predicting each completion token and the values ``(B, T)`` of the
        states before each completion token.

        Multi-turn dialogues: ``action_positions`` ``(B, T)`` gives the column of each of the ``T`` actions (the
        env's tokens fill the other columns after the prompt); the same forward runs over the whole dialogue
        and the outputs predicting the actions are gathered, so they equal the per-step outputs of the rollout.
        """
        if action_positions is None:
            logits, hidden = self._trunk(input_ids, attention_mask, keep=num_tokens + 1, drop_last=True)
            logits = process_logits(logits, self.temperature, self.top_k, self.top_p)
            return LMOutput(logits, self.value_head(hidden).squeeze(-1))
        width = input_ids.shape[1]
        keep = width - int(action_positions.min()) + 1  # from the column before the first action on
        logits, hidden = self._trunk(input_ids, attention_mask, keep=keep)
        rows = action_positions - 1 - (width - keep)  # (B, T): index into the kept columns
        logits = logits.gather(1, rows[..., None].expand(-1, -1, logits.shape[-1]))  # (B, T, V)
        hidden = hidden.gather(1, rows[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, T, H)
        logits = process_logits(logits, self.temperature, self.top_k, self.top_p)
        return LMOutput(logits, self.value_head(hidden).squeeze(-1))

    # ---------------------------------------------------------------------------- cached rollouts
    def reset_cache(self) -> None:
        """Forget the rollout KV cache (called whenever the weights may have changed)."""
        self._stepper = None
        self._previous = None

    def _cached_forward(self, obs: PyTorchObs, last_actions: torch.Tensor | None) -> LMOutput:
        """Like :meth:`lm_forward`, reusing each slot's KV cache when its observation extends the previous
        one by exactly ``last_actions[slot]``."""
        ids, mask = _as_token_tensors(obs, self.action_space.n)
        batch = ids.shape[0]
        if self._stepper is None or self._stepper.batch_size != batch or self.value_model is not None:
            self._stepper = BatchedLMStepper(self.lm, batch, int(self.tokenizer.pad_token_id), output_hidden=True)
            self._previous = None
        match: torch.Tensor | None = None
        if self._previous is not None and last_actions is not None:
            prev_ids, prev_mask = self._previous
            if prev_ids.shape == ids.shape:  # the observation shifted left by one, the last action at the end
                actions = last_actions.long().view(-1).to(ids.device)
                if (torch.equal(ids[:, :-1], prev_ids[:, 1:]) and torch.equal(mask[:, :-1], prev_mask[:, 1:])
                        and torch.equal(ids[:, -1], actions) and bool(mask[:, -1].all())
                        and not bool(prev_mask[:, 0].any())):  # steady state: every slot continues (whole-batch test)
                    with self._autocast():
                        out = self._stepper.step(actions)
                    self._previous = (ids, mask)
                    return LMOutput(out.logits, self.value_head(out.hidden).squeeze(-1))
                match = ((ids[:, :-1] == prev_ids[:, 1:]).all(1) & (mask[:, :-1] == prev_mask[:, 1:]).all(1)
                         & (ids[:, -1] == actions) & (mask[:, -1] == 1) & (prev_mask[:, 0] == 0))
        if match is None:
            match = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        logits = torch.empty((batch, self.lm.get_output_embeddings().weight.shape[0]), device=ids.device)
        hidden = torch.empty((batch, self.value_head.in_features), device=ids.device)
        chunks = self._continuations(ids, mask, match, last_actions)
        extended = torch.as_tensor([chunk is not None for chunk in chunks], dtype=torch.bool, device=ids.device)
        with self._autocast():
            if extended.any() and not any(chunk is not None and len(chunk) > 1 for chunk in chunks):
                out = self._stepper.step(last_actions.long().view(-1).to(ids.device), active=extended)
                logits[extended], hidden[extended] = out.logits[extended], out.hidden[extended]
            elif extended.any():  # the env appended tokens (a multi-turn reply): one prefill of each new chunk
                out = self._stepper.extend([chunk or [] for chunk in chunks])
                logits[extended], hidden[extended] = out.logits[extended], out.hidden[extended]
            if (~extended).any():
                slots = torch.nonzero(~extended).flatten().tolist()
                sequences = [ids[slot][mask[slot].bool()].tolist() for slot in slots]
                out = self._stepper.prefill(slots, sequences)
                logits[slots], hidden[slots] = out.logits, out.hidden
        self._previous = (ids, mask)
        return LMOutput(logits, self.value_head(hidden).squeeze(-1))

    def _continuations(self, ids: torch.Tensor, mask: torch.Tensor, match: torch.Tensor,
                       last_actions: torch.Tensor | None) -> list[list[int] | None]:
        """Per slot, the tokens its cache lacks when the observation continues what the cache consumed (the
        last action, plus whatever the env appended after it: a multi-turn reply), else None (a new episode,
        or any other change: re-prefilled)."""
        chunks: list[list[int] | None] = [None] * ids.shape[0]
        if last_actions is None or self._previous is None:
            return chunks
        actions = last_actions.long().view(-1).tolist()
        for slot in range(ids.shape[0]):
            if bool(match[slot]):
                chunks[slot] = [actions[slot]]
                continue
            consumed = self._stepper.tokens[slot]
            if not consumed:
                continue
            real = ids[slot][mask[slot].bool()].tolist()
            if len(real) > len(consumed) + 1 and real[len(consumed)] == actions[slot] \
                    and real[:len(consumed)] == consumed:
                chunks[slot] = real[len(consumed):]
        return chunks

    def _rollout_outputs(self, obs: PyTorchObs) -> LMOutput:
        """Cached forward when collecting rollouts without gradients, else the uncached one."""
        if self.use_kv_cache and not torch.is_grad_enabled() and self.value_model is None:
            return self._cached_forward(obs, getattr(self, "_last_actions", None))
        return self.lm_forward(obs)

    def _remember_actions(self, actions: torch.Tensor) -> None:
        self._last_actions = actions.detach()

    # --------------------------------------------------------------------------- SB3 policy API
    def _build(self, lr_schedule: Schedule) -> None:
        self._build_lm()
        self.action_dist = self._distribution_class(self.action_space.n)
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]  # LoRA: no frozen base
        self.optimizer = self.optimizer_class(trainable, lr=lr_schedule(1),
                                              **optimizer_options(self.optimizer_class, self.optimizer_kwargs))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self._lm_options())
        for key in _UNUSED_SB3_PARAMETERS:
            data.pop(key, None)
        return data

    def set_training_mode(self, mode: bool) -> None:
        """Switch train/eval mode; entering training invalidates the rollout KV cache."""
        if mode:
            self.reset_cache()
        super().set_training_mode(mode)  # type: ignore[misc]

    def _distribution(self, logits: torch.Tensor, action_masks: np.ndarray | None = None) -> Distribution:
        distribution = self.action_dist.proba_distribution(
            action_logits=process_logits(logits, self.temperature, self.top_k, self.top_p))
        if action_masks is not None:
            if not isinstance(distribution, MaskableCategoricalDistribution):
                raise ConfigError("action_masks need MaskableTransformerPolicy (use it with sb3_contrib.MaskablePPO)")
            distribution.apply_masking(action_masks)
        return distribution

    def forward(self, obs: PyTorchObs, deterministic: bool = False,
                action_masks: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample actions; returns ``actions (B,)``, ``values (B, 1)``, ``log_prob (B,)``."""
        logits, values = self._rollout_outputs(obs)
        if action_masks is None and not deterministic:
            # same distribution as Categorical(logits=process_logits(logits)), without torch.distributions'
            # per-call overhead (argument validation, broadcasting): log-softmax, inverse-CDF sample, gather
            logprobs = torch.log_softmax(process_logits(logits, self.temperature, self.top_k, self.top_p), -1)
            cdf = logprobs.exp().cumsum(-1)
            draw = torch.rand((cdf.shape[0], 1), device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
            actions = torch.searchsorted(cdf, draw, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
            self._remember_actions(actions)
            return actions, values.view(-1, 1), logprobs.gather(-1, actions[:, None]).squeeze(-1)
        distribution = self._distribution(logits, action_masks)
        actions = _sample(distribution, deterministic)
        self._remember_actions(actions)
        return actions, values.view(-1, 1), distribution.log_prob(actions)

    def evaluate_actions(self, obs: PyTorchObs, actions: torch.Tensor,
                         action_masks: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values ``(B, 1)``, log-probabilities ``(B,)`` and entropies ``(B,)`` of ``actions`` (uncached)."""
        logits, values = self.lm_forward(obs)
        distribution = self._distribution(logits, action_masks)
        return values.view(-1, 1), distribution.log_prob(actions.view(-1)), distribution.entropy()

    def get_distribution(self, obs: PyTorchObs, action_masks: np.ndarray | None = None) -> Distribution:
        """The action distribution for ``obs`` (uncached forward)."""
        return self._distribution(self.lm_forward(obs).logits, action_masks)

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """Values ``(B, 1)`` of ``obs`` (uncached forward)."""
        return self.lm_forward(obs).values.view(-1, 1)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False,
                 action_masks: np.ndarray | None = None) -> torch.Tensor:
        logits, _ = self._rollout_outputs(observation)
        actions = _sample(self._distribution(logits, action_masks), deterministic)
        self._remember_actions(actions)
        return actions

    # ------------------------------------------------------------------------------------- export
    def save_pretrained(self, directory: str | Path, merge: bool = False, verbose: bool = False) -> Path:
        """Export the policy's LM and tokenizer as a Hugging Face folder.

        Full fine-tuning: a plain model folder (``AutoModelForCausalLM.from_pretrained(directory)`` and
        ``pipeline("text-generation", model=directory)`` load it). LoRA: the adapter folder
        (``peft.AutoPeftModelForCausalLM.from_pretrained(directory)`` loads it with its base model), or with
        ``merge=True`` a plain model with the adapters merged into the base weights (the policy itself is
        left unchanged). ``verbose`` shows transformers' "Writing model shards" progress bar.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = self.lm
        if self.lora is not None and merge:
            model = copy.deepcopy(self.lm).merge_and_unload()
        with quiet_transformers(verbose):
            model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
        return directory


class TransformerPolicy(TransformerPolicyCore, ActorCriticPolicy):
    """Actor-critic policy wrapping a causal LM, for ``PPO``, ``A2C`` and :class:`~agents.TokenPPO`.

    :param observation_space: the TextGen ``Dict`` observation space.
    :param action_space: ``Discrete(vocab_size)``.
    :param lr_schedule: learning-rate schedule (given by the algorithm).
    :param model: model alias, local path or hub id (see ``textgen-rl models``), or a loaded model.
    :param value_trunk: ``"shared"`` (value head on the policy's trunk) or ``"separate"`` (its own copy).
    :param temperature: sampling temperature (> 0).
    :param top_k: keep only the ``top_k`` most likely tokens (0: off).
    :param top_p: nucleus sampling threshold (1: off).
    :param use_kv_cache: reuse per-slot KV caches during rollouts.
    :param dtype: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"float32"`` or ``"bfloat16"``.
    :param trust_remote_code: passed to ``from_pretrained`` for hub models with custom code.
    :param lora: LoRA adapters (:class:`~agents.lora.LoraSettings` or a dict such as ``{"r": 16}``): the base
        weights stay frozen, the adapters and the value head train, and an env created with
        ``reference_model="<policy>"`` uses the base with the adapters disabled as its reference.
    :param gradient_checkpointing: recompute activations in the backward pass (less memory for long
        sequences, ~30 % more compute in the update).
    :param use_sde: must be False (given by SB3's PPO/A2C; SDE does not apply to discrete actions).
    :param optimizer_class: optimizer of the LM and value head.
    :param optimizer_kwargs: its keyword arguments.
    """

    _distribution_class = CategoricalDistribution

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Discrete, lr_schedule: Schedule,
                 model: str | PreTrainedModel = "tiny", value_trunk: str = "shared", temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, use_kv_cache: bool = True, dtype: str = "auto",
                 trust_remote_code: bool = False, lora: LoraSettings | dict[str, Any] | None = None,
                 gradient_checkpointing: bool = False, use_sde: bool = False,
                 optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
                 optimizer_kwargs: dict[str, Any] | None = None) -> None:
        if use_sde:
            raise ConfigError("use_sde=True is not supported: TextGen actions are discrete tokens")
        self._store_lm_options(model, value_trunk, temperature, top_k, top_p, use_kv_cache, dtype, trust_remote_code,
                               lora, gradient_checkpointing)
        super().__init__(observation_space, action_space, lr_schedule, ortho_init=False,
                         optimizer_class=optimizer_class, optimizer_kwargs=optimizer_kwargs)


class MaskableTransformerPolicy(TransformerPolicyCore, MaskableActorCriticPolicy):
    """:class:`TransformerPolicy` for ``sb3_contrib.MaskablePPO``: every method accepts ``action_masks``.

    Use it with :class:`~agents.vec_env.TextGenVecEnv` created with ``mask_top_k``/``mask_top_p``,
    which masks every token outside the reference model's top-k / nucleus (NLPO-style).
    Parameters as :class:`TransformerPolicy` (without ``use_sde``).
    """

    _distribution_class = MaskableCategoricalDistribution

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Discrete, lr_schedule: Schedule,
                 model: str | PreTrainedModel = "tiny", value_trunk: str = "shared", temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, use_kv_cache: bool = True, dtype: str = "auto",
                 trust_remote_code: bool = False, lora: LoraSettings | dict[str, Any] | None = None,
                 gradient_checkpointing: bool = False,
                 optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
                 optimizer_kwargs: dict[str, Any] | None = None) -> None:
        self._store_lm_options(model, value_trunk, temperature, top_k, top_p, use_kv_cache, dtype, trust_remote_code,
                               lora, gradient_checkpointing)
        super().__init__(observation_space, action_space, lr_schedule, ortho_init=False,
                         optimizer_class=optimizer_class, optimizer_kwargs=optimizer_kwargs)
