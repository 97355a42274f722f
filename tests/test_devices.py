"""No operation of a step mixes devices: an index or mask built on the CPU for a CUDA tensor stops the
first GPU run ("Expected all tensors to be on the same device"). Checked on this CPU-only machine with
the meta device standing for a GPU, under a torch function mode that records every call whose tensor
arguments live on more than one device; the CUDA runs themselves are tests/test_gpu.py's."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


_MOVES = {"to", "cpu", "cuda", "copy_", "tensor", "as_tensor", "__get__", "__set__", "device"}


class _OneDevice(TorchFunctionMode):
    """Records (function, devices) for every call whose tensor arguments sit on several devices."""

    def __init__(self):
        super().__init__()
        self.mixed: list[tuple[str, set]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name not in _MOVES:
            devices = {t.device for t in _tensors((args, kwargs)) if not (t.dim() == 0 and t.device.type == "cpu")}
            if len(devices) > 1:
                self.mixed.append((name, devices))
        return func(*args, **kwargs)


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


def test_a_frame_store_selects_its_missing_clips_on_the_features_device(monkeypatch):
    """FrameCache.frames_of picks the clips it has not seen with an index on the features' device."""
    from cordlite.models import audio_view

    tower = torch.nn.Linear(2, 2, device="meta")
    monkeypatch.setattr(audio_view, "_parts", lambda model: (tower, None, None, None, None))
    monkeypatch.setattr(audio_view, "encode_audio",
                        lambda model, f, m: (torch.zeros(f.shape[0], 3, 2, device=f.device), torch.tensor([3] * f.shape[0])))
    cache = audio_view.FrameCache()
    cache.frames["seen"] = torch.zeros(3, 2, device="meta")
    audio = {"input_features": torch.zeros(3, 4, 6, device="meta"), "feature_attention_mask": torch.ones(3, 6, device="meta")}
    with _OneDevice() as mode:
        hidden, lengths = cache.frames_of(None, ["a", "seen", "b"], audio)
    assert mode.mixed == []
    assert hidden.device.type == "meta" and hidden.shape == (3, 3, 2)


def test_an_unquantised_base_is_read_straight_onto_its_device(tiny_model_dir, monkeypatch):
    """quantization none (the paper recipe's bf16 7B) loads through device_map onto the run's device,
    as the 4-bit path does, instead of reading 17 GB into host memory and moving it afterwards."""
    from transformers import Qwen2AudioForConditionalGeneration

    from cordlite.config import ModelConfig, QuantizationConfig, TrainConfig
    from cordlite.models.load import load_base
    from cordlite.models.runtime import resolve_runtime

    seen = {}
    real = Qwen2AudioForConditionalGeneration.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(Qwen2AudioForConditionalGeneration, "from_pretrained", classmethod(spy))
    model_cfg, quant = ModelConfig(name_or_path=str(tiny_model_dir), device="cpu"), QuantizationConfig(mode="none")
    model, _ = load_base(model_cfg, quant, resolve_runtime(model_cfg, quant, TrainConfig()))
    assert seen["device_map"] == {"": "cpu"} and "quantization_config" not in seen
    assert {p.device.type for p in model.parameters()} == {"cpu"}
