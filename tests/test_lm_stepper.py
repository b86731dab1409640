"""The stepper's KV cache layer (``GrowingLayer``): in-place appends, growth, trimming and padding, and a stepper
built on it gives bit-for-bit what the concatenating Hugging Face layer gives."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from text_envs import lm_stepper
from text_envs.lm_stepper import BatchedLMStepper, GrowingLayer
from text_envs.models import load_model


def _states(columns: int, start: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.arange(2 * 3 * columns * 4, dtype=torch.float32).view(2, 3, columns, 4) + start  # (B, H, T, D)
    return keys, -keys


def test_update_appends_in_place_until_full_then_grows():
    keys, values = _states(5)
    layer = GrowingLayer(keys, values, spare=3)
    buffer = layer._keys.data_ptr()
    for step in range(3):  # three columns of spare room: no reallocation
        new_k, new_v = _states(1, start=1000.0 + step)
        out_k, out_v = layer.update(new_k, new_v)
        assert layer._keys.data_ptr() == buffer
        assert torch.equal(out_k[:, :, -1:], new_k) and torch.equal(out_v[:, :, -1:], new_v)
    assert layer.keys.shape[2] == 8 and torch.equal(layer.keys[:, :, :5], keys)
    new_k, new_v = _states(2, start=5000.0)
    out_k, _ = layer.update(new_k, new_v)  # full: reallocated with room for as many columns again
    assert layer._keys.data_ptr() != buffer and layer._keys.shape[2] >= 2 * 10
    assert out_k.shape[2] == 10 and torch.equal(out_k[:, :, :5], keys) and torch.equal(out_k[:, :, -2:], new_k)
    assert layer.get_seq_length() == 10


def test_trim_and_pad_left():
    keys, values = _states(6)
    layer = GrowingLayer(keys, values)
    layer.trim_left(2)
    assert torch.equal(layer.keys, keys[:, :, 2:]) and torch.equal(layer.values, values[:, :, 2:])
    layer.pad_left(1)  # room on the left (the trimmed columns): in place, zeros
    assert layer.keys.shape[2] == 5 and not layer.keys[:, :, 0].any() and torch.equal(layer.keys[:, :, 1:], keys[:, :, 2:])
    layer.pad_left(4)  # more than the room left: reallocated
    assert layer.keys.shape[2] == 9 and not layer.keys[:, :, :5].any() and torch.equal(layer.values[:, :, 5:], values[:, :, 2:])
    layer.keys[0, :, -1] = 7.0  # in-place writes (the stepper's slot merges) reach the buffer
    assert bool((layer._keys[0, :, layer._end - 1] == 7.0).all())


@pytest.mark.parametrize("operation", ["crop", "reorder_cache", "batch_select_indices", "batch_repeat_interleave"])
def test_keys_reassigned_by_hugging_face_methods_are_adopted(operation):
    """DynamicLayer's crop / beam-search reorder / batch selection reassign ``keys`` and ``values``: the layer
    must keep growing from what they were set to, exactly like the concatenating layer."""
    keys, values = _states(5)
    growing, plain = GrowingLayer(keys, values), DynamicLayer()
    plain.lazy_initialization(keys, values)
    plain.keys, plain.values = keys.clone(), values.clone()
    argument = {"crop": -2, "reorder_cache": torch.tensor([1, 0]), "batch_select_indices": torch.tensor([1]),
                "batch_repeat_interleave": 2}[operation]
    for layer in (growing, plain):
        getattr(layer, operation)(argument)
    for step in range(20):  # past the spare room: the adopted content survives a reallocation
        new_k, new_v = _states(1, start=1000.0 + step)
        new_k, new_v = new_k[:1].expand(plain.keys.shape[0], -1, -1, -1), new_v[:1].expand(plain.keys.shape[0], -1, -1, -1)
        out_growing, out_plain = growing.update(new_k, new_v), plain.update(new_k, new_v)
        assert torch.equal(out_growing[0], out_plain[0]) and torch.equal(out_growing[1], out_plain[1])
    growing.trim_left(1)
    assert torch.equal(growing.keys, plain.keys[:, :, 1:])


class _ConcatenatingLayer(DynamicLayer):
    """The previous layer: Hugging Face's concatenation, trimmed and padded by slicing and concatenating."""

    def __init__(self, keys, values):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys.clone(), values.clone()

    def trim_left(self, columns):
        self.keys, self.values = self.keys[:, :, columns:], self.values[:, :, columns:]

    def pad_left(self, columns):
        zeros = self.keys.new_zeros((*self.keys.shape[:2], columns, self.keys.shape[-1]))
        self.keys, self.values = torch.cat([zeros, self.keys], 2), torch.cat([zeros.clone(), self.values], 2)


def _drive(model, layer_class, monkeypatch) -> torch.Tensor:
    """Prefills, steps with inactive slots, a restart, a multi-token extend: every output, concatenated."""
    monkeypatch.setattr(lm_stepper, "GrowingLayer", layer_class)
    stepper = BatchedLMStepper(model, 3, 0, output_hidden=True)
    outputs = [stepper.prefill([0, 1, 2], [[5, 6, 7], [8, 9], [10, 11, 12, 13]]).logits]
    for t in range(24):
        active = torch.tensor([True, t % 5 != 2, t < 20])
        outputs.append(stepper.step(torch.full((3,), 20 + t), active).logits)
        if t == 10:  # a new episode in slot 1, longer than the cache: padded on the left
            outputs.append(stepper.prefill([1], [list(range(30, 60))]).logits)
        if t == 15:
            outputs.append(stepper.extend([[40, 41], [42], [43, 44, 45]]).logits)
    assert isinstance(stepper.cache.layers[0], layer_class)
    return torch.cat(outputs)


@pytest.mark.parametrize("model_dir", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_stepper_on_growing_layers_equals_the_concatenating_cache(model_dir, request, monkeypatch):
    model = load_model(str(request.getfixturevalue(model_dir)), device="cpu", dtype="float32")
    growing = _drive(model, GrowingLayer, monkeypatch)
    concatenating = _drive(model, _ConcatenatingLayer, monkeypatch)
    assert torch.equal(growing, concatenating)
