"""LoRA policies with the ``peft`` library, and the reference model they share with the env.

``TransformerPolicy(..., lora=LoraSettings(r=16))`` (or ``lora={"r": 16}``) wraps the policy's LM with
``peft.get_peft_model``: the base weights are frozen, the adapters and the value head train. The
KL reference is then **the same base with the adapters disabled** (``disable_adapter()``): an env
created with ``reference_model="<policy>"`` (:data:`text_envs.config.SHARED_REFERENCE`) loads no
reference of its own, and :func:`share_reference` attaches the policy's LM to it, so a LoRA run holds
one copy of the base weights. The sequence algorithms (TokenPPO, REINFORCE, RLOO, GRPO) call it when
they build their policy; with stock SB3 algorithms call ``share_reference(model)`` after constructing
them (``textgen-rl train`` does).

LoRA dropout is always 0: PPO's ratio needs the rollout and the update to see the same distribution
(the policy disables every dropout for the same reason).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from text_envs.errors import ConfigError, MissingDependencyError
from text_envs.validation import check_int, check_real, describe

__all__ = ["LoraSettings", "share_reference"]


@dataclass(frozen=True)
class LoraSettings:
    """The adapters of a LoRA policy (``peft.LoraConfig`` for a causal LM).

    :param r: rank of the adapters.
    :param alpha: scaling numerator (the update is scaled by ``alpha / r``); None: ``2 * r``.
    :param target_modules: ``"all-linear"`` (every linear layer but the LM head), or a list of module
        names (e.g. ``["q_proj", "v_proj"]``).
    """

    r: int = 16
    alpha: float | None = None
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "r", check_int("lora r", self.r, 1, 4096))
        if self.alpha is not None:
            object.__setattr__(self, "alpha", check_real("lora alpha", self.alpha, 0.0, 1e6, low_open=True))
        targets = self.target_modules
        if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets):
            object.__setattr__(self, "target_modules", tuple(targets))
        elif not (isinstance(targets, str) and targets):
            raise ConfigError(f"lora target_modules must be 'all-linear' or a list of module names, got "
                              f"{describe(targets)}")

    @classmethod
    def from_value(cls, value: Any) -> LoraSettings | None:
        """``None``, a :class:`LoraSettings` or a dict of its fields."""
        if value is None or isinstance(value, LoraSettings):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"r", "alpha", "target_modules"})
            if unknown:
                raise ConfigError(f"unknown lora setting(s) {unknown}; accepted: r, alpha, target_modules")
            return cls(**value)
        raise ConfigError(f"lora must be None, a LoraSettings or a dict, got {describe(value)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for SB3's saved policy arguments)."""
        data = asdict(self)
        data["target_modules"] = data["target_modules"] if isinstance(data["target_modules"], str) \
            else list(data["target_modules"])
        return data

    def peft_config(self, model_type: str = "") -> Any:
        """The ``peft.LoraConfig`` (``model_type``: the base model's, e.g. GPT-2's Conv1D layers need
        ``fan_in_fan_out``)."""
        try:
            from peft import LoraConfig, TaskType
        except ImportError as error:
            raise MissingDependencyError("LoRA policies need the peft package: pip install 'textgen-rl[lora]' "
                                         "(or pip install peft)") from error
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=self.r, lora_alpha=self.alpha or 2 * self.r,
                          lora_dropout=0.0, target_modules=targets, bias="none",
                          fan_in_fan_out=model_type in _CONV1D_MODEL_TYPES)


#: Model types whose linear layers are transformers' ``Conv1D`` (weights stored transposed).
_CONV1D_MODEL_TYPES = ("gpt2",)


def share_reference(algo: Any) -> bool:
    """Attach a LoRA policy's base model (adapters disabled) as the reference of an env created with
    ``reference_model="<policy>"``. Returns True if it attached one; no-op otherwise.

    :raises ConfigError: if the env waits for a shared reference but the policy has no adapters (a
        fully fine-tuned policy drifts: it cannot be its own reference).
    """
    env = getattr(algo, "env", None)
    if env is None or not any(env.get_attr("reference_pending")):
        return False
    policy = algo.policy
    if getattr(policy, "lora", None) is None:
        raise ConfigError("the env shares its reference with the policy (reference_model='<policy>'), which needs "
                          "a LoRA policy (policy_kwargs={'lora': {...}}); a fully fine-tuned policy cannot be its "
                          "own reference")
    env.env_method("attach_reference", policy.lm, policy.reference_context)
    return True
