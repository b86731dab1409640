"""The one device and dtype resolver of ``text_envs`` and ``agents``.

``resolve_device("auto")`` is CUDA when present, else the CPU; ``resolve_dtype("auto", device)`` is
bfloat16 on CUDA and float32 elsewhere. Every model, reward model and policy resolves its device here,
so a bad value fails the same way everywhere: a :class:`~text_envs.errors.ConfigError` naming it,
before anything is loaded. torch is imported lazily (listing tasks or rewards needs none of it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from text_envs.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_TYPES", "resolve_device", "resolve_dtype"]

#: Device types a model can run on here ("meta", "xla"... would fail later, deep inside torch).
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps")
_EXPECTED = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def _available(device_type: str) -> bool:
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available()
    if device_type == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return True


def resolve_device(device: Any = "auto") -> "torch.device":
    """Turn a device specification into a :class:`torch.device`.

    :param device: ``"auto"`` (or ``None``: CUDA if available, else CPU), a device string such as ``"cpu"``
        or ``"cuda:0"``, or a :class:`torch.device`.
    :return: The device.
    :raises ConfigError: If the value is not a device of :data:`DEVICE_TYPES`, or names one this machine
        does not have.
    """
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise ConfigError(f"device={device!r} is not a device; expected {_EXPECTED}")
    try:
        resolved = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={device!r} is not a device; expected {_EXPECTED}") from None
    if resolved.type not in DEVICE_TYPES:
        raise ConfigError(f"device={device!r}: models cannot run on {resolved.type!r} devices here; expected {_EXPECTED}")
    if not _available(resolved.type):
        raise ConfigError(f"device={device!r} but {resolved.type.upper()} is not available on this machine; use "
                          "'auto' or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def _dtypes() -> dict[str, "torch.dtype"]:
    import torch

    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: Any = "auto", device: Any = "auto") -> "torch.dtype":
    """Turn a dtype specification into a floating-point :class:`torch.dtype`.

    :param dtype: ``"auto"`` (``bfloat16`` on CUDA, ``float32`` elsewhere), one of ``"float32"``/``"fp32"``,
        ``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"``, or one of those :class:`torch.dtype`.
    :param device: The device the model will run on (only used by ``"auto"``; validated in every case).
    :return: The dtype.
    :raises ConfigError: On any other value; the message lists the accepted ones.
    """
    import torch

    dtypes = _dtypes()
    accepted = ["auto", *dtypes]
    resolved_device = resolve_device(device)
    if isinstance(dtype, torch.dtype):
        if dtype in dtypes.values():
            return dtype
        raise ConfigError(f"dtype={dtype} is not supported; expected one of {accepted} or the matching torch dtypes")
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key == "auto":
            return torch.bfloat16 if resolved_device.type == "cuda" else torch.float32
        if key in dtypes:
            return dtypes[key]
    raise ConfigError(f"dtype={dtype!r} is not supported; expected one of {accepted} or a torch dtype")
