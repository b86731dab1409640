"""Token-by-token stepping of a causal LM over a batch of independent streams, with a KV cache.

Both the environment (frozen reference model) and the agents' policy step a language model one
token at a time over ``B`` parallel episodes that start and end at different times. Running the
full context through the model at every step costs O(T^2); :class:`BatchedLMStepper` keeps one
batched, *left-padded* key/value cache instead, so each step is a single forward over ``B`` new
tokens:

* ``prefill(slots, sequences)`` (re)starts some slots from a token sequence (one batched forward
  over those slots, left-padded), writing their keys/values at the right end of the shared cache;
* ``step(tokens, active)`` appends one token to every slot (inactive slots get a masked column).

Columns that are masked for every slot (history of finished episodes) are trimmed from the left,
so the cache stays as long as the longest live episode. Position ids are tracked per slot, which
makes the result equal (to float tolerance) to an uncached forward over each slot's tokens.

The shared cache's layers are :class:`GrowingLayer` s: each holds its keys/values in a buffer with spare
columns on the right (grown by doubling) and exposes the live columns as a view, so a step writes one
column instead of copying the whole cache (Hugging Face's ``DynamicLayer`` concatenates at every step:
O(T) copy per token, O(T^2) per episode), and trimming the left is free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from typing import Any, Callable, ContextManager, NamedTuple, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

#: The keyword under which this transformers release passes a KV cache to ``forward`` (and the output field
#: holding it): ``cache`` from 5.24 on, ``past_key_values`` before (5.24 deprecates the old name).
LIBRARY_CACHE_KEYWORD: str = ("cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
                              else "past_key_values")


@functools.lru_cache(maxsize=None)
def _forward_cache_keyword(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return LIBRARY_CACHE_KEYWORD  # forward(**kwargs) wrappers pass the keyword on to a transformers model


@functools.lru_cache(maxsize=None)
def _forward_takes_column_indices(model_class: type) -> bool:
    parameter = inspect.signature(model_class.forward).parameters.get("logits_to_keep")
    return parameter is not None and "Tensor" in str(parameter.annotation)


def takes_column_indices(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` takes a 1-D tensor of column indices as ``logits_to_keep`` (transformers'
    ``int | torch.Tensor`` argument) and not only a count of last columns. Read once per model class from the
    ``forward`` signature (wrappers such as PEFT's are unwrapped first)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_column_indices(type(base))


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword ``model.forward`` takes its KV cache under: ``"cache"`` or ``"past_key_values"``.

    Detected once per model class from the ``forward`` signature (wrappers such as PEFT's are unwrapped
    first), so that no call passes a deprecated name and no call pays for a try/except.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_cache_keyword(type(base))


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned (``output.cache`` or, before transformers 5.24, ``past_key_values``)."""
    return output.get(LIBRARY_CACHE_KEYWORD)


class StepOutput(NamedTuple):
    """What one prefill or step returns."""

    logits: torch.Tensor  # (B, V) next-token logits, float32
    hidden: torch.Tensor | None  # (B, H) last-layer hidden state of the newest token, or None


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``input_ids`` and ``attention_mask``, both ``(B, max_len)`` int64."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: ``cumsum(mask) - 1``, clamped at 0 on padding. ``(B, T)``."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys`` / ``values`` ``(B, H, T, D)`` are views of the columns
    ``[start, end)`` of preallocated buffers ``(B, H, capacity, D)``.

    :meth:`update` (what the model's attention calls) writes the new columns in place and reallocates, doubling
    the live length, only when the buffer is full; :meth:`trim_left` and :meth:`pad_left` move ``start``.
    In-place writes to ``keys`` / ``values`` (the stepper's slot merges) write through to the buffers; a
    ``keys`` / ``values`` *reassigned* from outside (``DynamicLayer.crop``, ``reorder_cache``,
    ``batch_select_indices``, ``batch_repeat_interleave``: beam search, assisted decoding) is adopted as the new
    content at the next :meth:`update`, :meth:`trim_left` or :meth:`pad_left`.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, spare: int = 16) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._reallocate(keys, values, left=0, right=spare)

    def _reallocate(self, keys: torch.Tensor, values: torch.Tensor, left: int, right: int) -> None:
        """New buffers holding ``left`` zero columns, then ``keys`` / ``values``, then ``right`` spare columns."""
        length = keys.shape[2]
        self._keys = keys.new_zeros((*keys.shape[:2], left + length + right, keys.shape[-1]))
        self._values = values.new_zeros((*values.shape[:2], left + length + right, values.shape[-1]))
        self._keys[:, :, left:left + length] = keys
        self._values[:, :, left:left + length] = values
        self._start, self._end = 0, left + length
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys[:, :, self._start:self._end]
        self.values = self._values[:, :, self._start:self._end]
        self._exposed = (self.keys, self.values)

    def _adopt(self) -> None:
        """If ``keys`` / ``values`` were reassigned since :meth:`_expose`, make them the buffers' content."""
        if self.keys is not self._exposed[0] or self.values is not self._exposed[1]:
            self._reallocate(self.keys, self.values, left=0, right=16)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new columns ``(B, H, n, D)``; returns the live keys and values (views)."""
        self._adopt()
        width = key_states.shape[-2]
        if self._end + width > self._keys.shape[2]:
            live = self._end - self._start
            self._reallocate(self.keys, self.values, left=0, right=max(live + width, 16))
        self._keys[:, :, self._end:self._end + width] = key_states
        self._values[:, :, self._end:self._end + width] = value_states
        self._end += width
        self._expose()
        return self.keys, self.values

    def trim_left(self, columns: int) -> None:
        """Drop the ``columns`` oldest live columns (no copy)."""
        self._adopt()
        self._start += columns
        self._expose()

    def pad_left(self, columns: int) -> None:
        """Prepend ``columns`` zero columns (in place when the buffer has room on the left)."""
        self._adopt()
        if columns <= self._start:
            self._keys[:, :, self._start - columns:self._start] = 0
            self._values[:, :, self._start - columns:self._start] = 0
            self._start -= columns
            self._expose()
        else:
            self._reallocate(self.keys, self.values, left=columns, right=max(16, self._keys.shape[2] - self._end))


def _growing_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A ``DynamicCache`` of :class:`GrowingLayer` s holding copies of ``layers``' (keys, values)."""
    cache = DynamicCache()
    cache.layers = [GrowingLayer(keys, values) for keys, values in layers]
    return cache


class BatchedLMStepper:
    """Steps ``model`` over ``batch_size`` token streams with one left-padded KV cache.

    :param model: any Hugging Face causal LM (``AutoModelForCausalLM``).
    :param batch_size: number of parallel streams (slots).
    :param pad_id: token id used for padding (never attended to).
    :param output_hidden: also return the last-layer hidden state of the newest token (for value heads).
    :param context: a zero-argument callable returning the context every forward runs in (e.g. a PEFT
        model's ``disable_adapter``, to step the base model of a LoRA policy as the frozen reference).
    """

    def __init__(self, model: PreTrainedModel, batch_size: int, pad_id: int, output_hidden: bool = False,
                 context: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> None:
        self.model = model
        self.context = context
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.output_hidden = output_hidden
        self.cache: DynamicCache | None = None
        self.cache_keyword = cache_keyword(model)
        self.device = next(model.parameters()).device
        self.mask = torch.zeros((batch_size, 0), dtype=torch.long, device=self.device)  # (B, T)
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # (B,) real tokens so far
        self._ones = torch.ones((batch_size, 1), dtype=torch.long, device=self.device)  # (B, 1): step()'s column
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]  # what each slot has consumed

    @property
    def cache_length(self) -> int:
        """Number of columns currently held in the cache."""
        return int(self.mask.shape[1])

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: DynamicCache) -> StepOutput:
        with self.context():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, output_hidden_states=self.output_hidden, **{self.cache_keyword: cache})
        hidden = out.hidden_states[-1][:, -1].float() if self.output_hidden else None
        return StepOutput(out.logits[:, -1].float(), hidden)

    @torch.no_grad()
    def prefill(self, slots: Sequence[int], sequences: Sequence[Sequence[int]]) -> StepOutput:
        """Restart ``slots`` from ``sequences`` (each non-empty); returns outputs for those slots only."""
        if len(slots) != len(sequences) or not slots:
            raise ValueError(f"prefill needs one non-empty sequence per slot, got {len(slots)} slots")
        ids, mask = left_pad(sequences, self.pad_id, self.device)
        fresh = DynamicCache()
        out = self._forward(ids, mask, positions_from_mask(mask), fresh)
        self._merge(list(slots), fresh, mask)
        for slot, seq in zip(slots, sequences):
            self.tokens[slot] = list(seq)
        return out

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> StepOutput:
        """Append ``tokens`` ``(B,)`` to every slot; slots with ``active == False`` are masked out."""
        if self.cache is None:
            raise RuntimeError("step() before prefill(): every slot needs a prefix first")
        tokens = tokens.to(self.device)
        flags = [True] * self.batch_size if active is None else active.tolist()
        every = all(flags)
        if every:  # the common case: every slot continues (no masked column, nothing to trim)
            column = self._ones
        else:
            active = active.to(self.device)
            tokens = torch.where(active, tokens, torch.full_like(tokens, self.pad_id))
            column = active.long()[:, None]
        self.mask = torch.cat([self.mask, column], dim=1)
        out = self._forward(tokens[:, None], self.mask, self.positions[:, None], self.cache)
        self.positions = self.positions + column[:, 0]
        for slot_tokens, value, flag in zip(self.tokens, tokens.tolist(), flags):
            if flag:
                slot_tokens.append(value)
        if not every:
            self._trim()
        return out

    @torch.no_grad()
    def extend(self, chunks: Sequence[Sequence[int]]) -> StepOutput:
        """Append a chunk of tokens ``chunks[slot]`` (possibly empty) to every slot with ONE forward.

        Chunks are left-padded to the longest one, so every non-empty chunk's newest token sits in the last
        column (what the returned logits predict from); a slot with an empty chunk only gets masked columns
        (its output row is meaningless). With one-token chunks this is :meth:`step`. This is how a
        multi-turn episode's injected tokens (a responder's reply) enter the cache: one prefill of the new
        chunk, never a recompute of the history.
        """
        if self.cache is None:
            raise RuntimeError("extend() before prefill(): every slot needs a prefix first")
        if len(chunks) != self.batch_size:
            raise ValueError(f"extend needs one chunk per slot ({self.batch_size}), got {len(chunks)}")
        width = max(len(chunk) for chunk in chunks)
        if width == 0:
            raise ValueError("extend needs at least one non-empty chunk")
        ids, chunk_mask = left_pad(chunks, self.pad_id, self.device)  # (B, W)
        self.mask = torch.cat([self.mask, chunk_mask], dim=1)
        positions = self.positions[:, None] + (chunk_mask.cumsum(-1) - 1).clamp(min=0)  # (B, W)
        out = self._forward(ids, self.mask, positions, self.cache)
        self.positions = self.positions + chunk_mask.sum(-1)
        for slot, chunk in enumerate(chunks):
            self.tokens[slot].extend(int(t) for t in chunk)
        self._trim()
        return out

    def get_state(self) -> dict[str, Any]:
        """Everything the stepper holds (cache tensors included, copied), for checkpoints; see :meth:`set_state`."""
        layers = None if self.cache is None else [(layer.keys.clone(), layer.values.clone())
                                                  for layer in self.cache.layers]
        return {"layers": layers, "mask": self.mask.clone(), "positions": self.positions.clone(),
                "tokens": [list(t) for t in self.tokens]}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s result: later steps give exactly what the saved stepper would have."""
        if state["layers"] is None:
            self.cache = None
        else:
            self.cache = _growing_cache([(keys.to(self.device), values.to(self.device)) for keys, values in
                                         state["layers"]])
        self.mask = state["mask"].to(self.device).clone()
        self.positions = state["positions"].to(self.device).clone()
        self.tokens = [list(t) for t in state["tokens"]]

    def _merge(self, slots: list[int], fresh: DynamicCache, fresh_mask: torch.Tensor) -> None:
        """Write a prefilled cache for ``slots`` into the right end of the shared cache."""
        width = fresh_mask.shape[1]
        if self.cache is None:
            self.cache = _growing_cache([
                (layer.keys.new_zeros((self.batch_size, layer.keys.shape[1], 0, layer.keys.shape[-1])),
                 layer.values.new_zeros((self.batch_size, layer.values.shape[1], 0, layer.values.shape[-1])))
                for layer in fresh.layers])
        if width > self.cache_length:
            self._pad_left(width - self.cache_length)
        index = torch.as_tensor(slots, device=self.device)
        start = self.cache_length - width
        for shared, new in zip(self.cache.layers, fresh.layers):
            shared.keys[index] = 0
            shared.values[index] = 0
            shared.keys[index, :, start:] = new.keys
            shared.values[index, :, start:] = new.values
        self.mask[index] = 0
        self.mask[index, start:] = fresh_mask
        self.positions[index] = fresh_mask.sum(-1)
        self._trim()

    def _pad_left(self, n: int) -> None:
        for layer in self.cache.layers:
            layer.pad_left(n)
        self.mask = torch.cat([self.mask.new_zeros((self.batch_size, n)), self.mask], dim=1)

    def _trim(self) -> None:
        """Drop leading columns that no slot attends to."""
        if self.mask.shape[1] == 0 or bool(self.mask[:, 0].any()):  # first column in use: nothing to trim
            return
        used = self.mask.any(dim=0)
        if used.all() or not used.any():
            return
        cut = int(torch.nonzero(used)[0])
        if cut == 0:
            return
        for layer in self.cache.layers:
            layer.trim_left(cut)
        self.mask = self.mask[:, cut:]


@torch.no_grad()
def continuation_logprobs(model: PreTrainedModel, prefixes: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], pad_id: int,
                          context: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> list[list[float]]:
    """``[log p(c_t | prefix, c_<t) for t]`` of each non-empty continuation, in ONE left-padded forward.

    Each prefix must be non-empty (the first continuation token needs a position that predicts it). With left
    padding every continuation ends at the last column, so the logits of the last ``max_len + 1`` positions
    cover all of them (``logits_to_keep``); the log-probabilities are float32 values (returned as Python
    floats), the same precision as the KV-cached :class:`BatchedLMStepper`'s.
    """
    if len(prefixes) != len(continuations) or not continuations or not all(len(c) for c in continuations):
        raise ValueError(f"continuation_logprobs needs one non-empty continuation per prefix, got "
                         f"{len(prefixes)} prefixes and {[len(c) for c in continuations]} continuation lengths")
    device = next(model.parameters()).device
    ids, mask = left_pad([list(p) + list(c) for p, c in zip(prefixes, continuations)], pad_id, device)  # (B, L)
    width = max(len(c) for c in continuations)
    with context():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                       logits_to_keep=width + 1, use_cache=False).logits[:, :-1].float()  # (B, width, V)
    targets = ids[:, -width:, None]  # (B, width, 1): column j of `logits` predicts column L - width + j
    chosen = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, -1)  # (B, width) log-softmax
    rows = chosen.tolist()
    return [row[width - len(continuation):] for row, continuation in zip(rows, continuations)]


def masked_sums(values: Sequence[Sequence[float]], mask: Sequence[Sequence[int]] | None = None) -> list[float]:
    """``sum_t v_t`` over the entries of each row whose mask is non-zero (``mask`` default: all), in float64,
    left to right."""
    if mask is None:
        return [float(sum(row)) for row in values]
    if len(mask) != len(values) or any(len(m) != len(v) for v, m in zip(values, mask)):
        raise ValueError(f"masked_sums needs one mask entry per value, got rows of {[len(v) for v in values]} "
                         f"values and {[len(m) for m in mask]} mask entries")
    return [float(sum(v for v, keep in zip(row, row_mask) if keep)) for row, row_mask in zip(values, mask)]


def continuation_logprob_sums(model: PreTrainedModel, prefixes: Sequence[Sequence[int]],
                              continuations: Sequence[Sequence[int]], pad_id: int,
                              context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                              weights: Sequence[Sequence[int]] | None = None) -> list[float]:
    """``sum_t w_t log p(c_t | prefix, c_<t)`` of each non-empty continuation, in ONE left-padded forward
    (:func:`continuation_logprobs`, summed).

    ``weights`` (0/1 per continuation token, default all 1) selects the tokens that count: a multi-turn
    episode's agent tokens, its responder's tokens being context only.
    """
    return masked_sums(continuation_logprobs(model, prefixes, continuations, pad_id, context), weights)
