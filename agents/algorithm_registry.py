"""The algorithms that ``textgen-rl train`` and ``textgen-rl compare`` know, by name, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from text_envs.errors import ConfigError

if TYPE_CHECKING:  # importing stable-baselines3 costs seconds: only when an algorithm is built
    from stable_baselines3.common.base_class import BaseAlgorithm


@dataclass(frozen=True)
class AlgoSpec:
    """How to build one algorithm on a TextGen vector env."""

    name: str
    description: str
    load_class: Callable[[], type["BaseAlgorithm"]]  # imported lazily
    maskable: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)  # CLI hyper-parameters (tuned for the tiny LM)
    entropy_for_kl: bool = False  # stock SB3 algorithms approximate the agent's KL half with ent_coef
    #: env arguments this algorithm runs best with, unless the caller sets them (see :func:`make_algorithm`)
    env_defaults: dict[str, Any] = field(default_factory=dict)


def _token_ppo() -> type["BaseAlgorithm"]:
    from agents.algos import TokenPPO

    return TokenPPO


def _sb3(name: str) -> Callable[[], type["BaseAlgorithm"]]:
    def load() -> type["BaseAlgorithm"]:
        if name == "MaskablePPO":
            from sb3_contrib import MaskablePPO

            return MaskablePPO
        import stable_baselines3

        return getattr(stable_baselines3, name)

    return load


def _agents(name: str) -> Callable[[], type["BaseAlgorithm"]]:
    def load() -> type["BaseAlgorithm"]:
        import agents

        return getattr(agents, name)

    return load


#: The env's KL penalty for the critic-free algorithms: they use only each sequence's return, the same sum of
#: rewards in every mode, so ``"sparse"`` (one batched teacher-forced reference pass per episode) optimises the
#: dense mode's objective without stepping the reference model token by token.
SEQUENCE_KL: dict[str, Any] = {"kl_penalty": "sparse"}

ALGORITHMS: dict[str, AlgoSpec] = {
    spec.name: spec
    for spec in (
        # deferred KL: the dense mode's per-token rewards (rebuilt by the buffer) at the sparse mode's cost
        AlgoSpec("token-ppo", "TokenPPO: sequence-level PPO, exact KL objective", _token_ppo,
                 defaults={"learning_rate": 1e-4, "n_steps": 64, "batch_size": 16, "n_epochs": 4},
                 env_defaults={"kl_penalty": "deferred"}),
        AlgoSpec("ppo", "stable-baselines3 PPO with TransformerPolicy", _sb3("PPO"), entropy_for_kl=True,
                 defaults={"learning_rate": 2e-4, "n_steps": 64, "batch_size": 256, "n_epochs": 4, "gamma": 1.0}),
        AlgoSpec("a2c", "stable-baselines3 A2C with TransformerPolicy", _sb3("A2C"), entropy_for_kl=True,
                 defaults={"learning_rate": 1e-4, "n_steps": 16, "gamma": 1.0}),
        AlgoSpec("maskable-ppo", "sb3-contrib MaskablePPO, reference top-k masks (NLPO-style)", _sb3("MaskablePPO"),
                 maskable=True, entropy_for_kl=True,
                 defaults={"learning_rate": 2e-4, "n_steps": 64, "batch_size": 256, "n_epochs": 4, "gamma": 1.0}),
        AlgoSpec("reinforce", "REINFORCE with a moving-average baseline", _agents("Reinforce"),
                 defaults={"learning_rate": 2e-4, "n_steps": 64, "batch_size": 16}, env_defaults=dict(SEQUENCE_KL)),
        AlgoSpec("rloo", "RLOO: k samples per prompt, leave-one-out baseline", _agents("RLOO"),
                 defaults={"learning_rate": 2e-4, "n_steps": 64, "batch_size": 16}, env_defaults=dict(SEQUENCE_KL)),
        AlgoSpec("grpo", "GRPO: group-normalised advantages, clipped ratio", _agents("GRPO"),
                 defaults={"learning_rate": 2e-4, "n_steps": 64, "batch_size": 16}, env_defaults=dict(SEQUENCE_KL)),
        AlgoSpec("dr-grpo", "Dr. GRPO: GRPO without std scaling or length normalisation", _agents("GRPO"),
                 defaults={"learning_rate": 2e-4, "n_steps": 64, "batch_size": 16, "loss_type": "dr_grpo"},
                 env_defaults=dict(SEQUENCE_KL)),
        AlgoSpec("dapo", "DAPO: clip-higher, token-level loss, dynamic sampling", _agents("GRPO"),
                 defaults={"learning_rate": 2e-4, "n_steps": 64, "batch_size": 16, "loss_type": "dapo",
                           "clip_range_low": 0.2, "clip_range_high": 0.28}, env_defaults=dict(SEQUENCE_KL)),
    )
}

#: Model-aware learning rates (see :func:`default_hyperparameters`): ``(max parameters, full fine-tuning, LoRA)``.
#: ``None`` keeps the algorithm's registry default (tuned on the bundled tiny LM). Measured on
#: SmolLM2-135M-Instruct: full fine-tuning at the tiny LM's 1e-4 gives approx_kl ~40 in the first update.
LEARNING_RATES: tuple[tuple[float, float | None, float], ...] = (
    (50e6, None, 1e-3),
    (1e9, 2e-6, 1e-4),
    (float("inf"), 1e-6, 5e-5),
)


def count_parameters(model: Any) -> int:
    """Parameters of a model (alias, folder, hub id or loaded model), counted without loading weights."""
    import torch

    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    from transformers import AutoModelForCausalLM

    from text_envs.models import load_config

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(load_config(model))
    return sum(p.numel() for p in skeleton.parameters())


def default_hyperparameters(name: str, model: Any, lora: bool) -> dict[str, Any]:
    """Defaults that depend on the model's size and on full vs LoRA training (:data:`LEARNING_RATES`); they
    override the algorithm's registry defaults, explicit arguments override them."""
    if name not in ALGORITHMS:
        return {}
    parameters = count_parameters(model)
    for limit, full, adapters in LEARNING_RATES:
        if parameters <= limit:
            rate = adapters if lora else full
            return {} if rate is None else {"learning_rate": rate}
    return {}


MASK_TOP_K = 50  # NLPO-style action masks: the reference model's 50 most likely next tokens


def make_algorithm(name: str, env_kwargs: dict[str, Any], num_envs: int, model: str, seed: int = 0,
                   device: str = "auto", learning_rate: float | None = None, kl_target: float | None = None,
                   overrides: dict[str, Any] | None = None, lora: dict[str, Any] | None = None,
                   gradient_checkpointing: bool = False, env_id: str = "TextGen-v0") -> "BaseAlgorithm":
    """Build algorithm ``name`` with a TransformerPolicy over ``model`` on a fresh TextGen vector env.

    :param name: a key of :data:`ALGORITHMS`.
    :param env_kwargs: arguments of ``gym.make_vec("TextGen-v0", ...)``; the algorithm's
        :attr:`AlgoSpec.env_defaults` fill the ones it leaves out (token-ppo: ``kl_penalty="deferred"``; the
        critic-free ones: ``"sparse"``, :data:`SEQUENCE_KL`; the stock SB3 algorithms keep the env's default,
        ``"dense"``: their GAE needs the per-token rewards and MaskablePPO's action masks the stepped reference).
    :param num_envs: parallel episodes.
    :param model: the policy's model (alias, path or hub id).
    :param seed: random seed.
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    :param learning_rate: overrides the algorithm's default.
    :param kl_target: adaptive KL target (sequence algorithms only).
    :param overrides: other constructor arguments overriding the defaults.
    :param lora: LoRA adapters of the policy (``{"r": 16, ...}``, see :class:`~agents.lora.LoraSettings`); the
        env then shares the policy's base model (adapters disabled) as its reference.
    :param gradient_checkpointing: recompute activations in the update (less memory).
    :param env_id: ``"TextGen-v0"`` or the multi-turn ``"TextChat-v0"`` (``env_kwargs`` are then its arguments).
    """
    from agents.lora import LoraSettings, share_reference
    from agents.policy import MaskableTransformerPolicy, TransformerPolicy
    from agents.vec_env import make_text_vec_env
    from text_envs.config import SHARED_REFERENCE

    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    spec = ALGORITHMS[name]
    settings = LoraSettings.from_value(lora)
    kwargs = {**spec.defaults, **default_hyperparameters(name, model, settings is not None), **(overrides or {})}
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    env_kwargs = {**spec.env_defaults, **env_kwargs}
    if settings is not None and env_kwargs.get("kl_coef", 0.05) > 0:
        env_kwargs = {**env_kwargs, "reference_model": SHARED_REFERENCE}
    if spec.entropy_for_kl:
        kwargs.setdefault("ent_coef", float(env_kwargs.get("kl_coef", 0.05)))
    elif kl_target is not None:
        kwargs["kl_target"] = kl_target
    env = make_text_vec_env(num_envs, mask_top_k=MASK_TOP_K if spec.maskable else 0, env_kwargs=env_kwargs,
                            env_id=env_id)
    policy = MaskableTransformerPolicy if spec.maskable else TransformerPolicy
    policy_kwargs: dict[str, Any] = {"model": model}
    if settings is not None:
        policy_kwargs["lora"] = settings.to_dict()
    if gradient_checkpointing:
        policy_kwargs["gradient_checkpointing"] = True
    algorithm = spec.load_class()(policy, env, policy_kwargs=policy_kwargs, seed=seed, device=device, **kwargs)
    share_reference(algorithm)  # stock SB3 algorithms (the sequence algorithms did it when building the policy)
    return algorithm
