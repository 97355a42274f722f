"""What merge and infer both start from: a run or adapter directory resolved to its adapter,
and a checkpoint directory loaded for inference.

    src = resolve_adapter("runs/qwen2audio_cord")         # AdapterSource: adapter dir, run dir, recipe
    model, processor = load_model("models/qwen2audio-cord")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


class MergeError(RuntimeError):
    """Merge cannot go ahead; the message names the path or option and what to do."""


@dataclass(frozen=True)
class AdapterSource:
    """A saved adapter and what cordlite recorded with it."""

    adapter_dir: Path
    run_dir: Path | None  # the training run it belongs to, when it sits in one
    base_model: str | None  # as recorded (local path or hub id)
    steps: int | None
    recipe: dict | None  # the resolved recipe of the run


def resolve_adapter(path: str | Path) -> AdapterSource:
    """A run directory, a checkpoint's adapter or a bare adapter directory -> AdapterSource."""
    from cordlite.models.adapter import AdapterError, adapter_metadata, locate_adapter, recorded_base_models, \
        training_recipe

    try:
        adapter_dir, run_dir = locate_adapter(path)
    except AdapterError as e:
        raise MergeError(str(e)) from None
    meta = adapter_metadata(adapter_dir)
    recorded = recorded_base_models(adapter_dir)
    steps = meta.get("steps", meta.get("step"))
    return AdapterSource(adapter_dir, run_dir, recorded[0] if recorded else None,
                         int(steps) if isinstance(steps, int) else None, training_recipe(adapter_dir, run_dir))


def pick_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        from cordlite.models.runtime import ModelLoadError

        raise ModelLoadError("--device cuda: torch sees no CUDA device; use --device auto or cpu")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


def load_model(path: str, device: str = "auto", dtype: str = "auto", quantize: str = "none"):
    """A checkpoint of a family cordlite runs, for inference (eval mode), and its processor (left padding).

    `quantize="nf4"` loads the language model in 4 bit (audio encoder, projector and LM head stay
    unquantised); a checkpoint exported with `cordlite merge --quantize nf4` is 4-bit already.
    """
    from transformers import AutoConfig

    from cordlite.config import QuantizationConfig
    from cordlite.models.families import FamilyError, detect_family, mark_family
    from cordlite.models.load import bnb_config
    from cordlite.models.runtime import DTYPES, ModelLoadError

    dev = pick_device(device)
    torch_dtype = DTYPES[dtype] if dtype != "auto" else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    try:
        family = detect_family(path)
    except FamilyError as e:
        raise ModelLoadError(str(e).replace("model.name_or_path: ", "--model ")) from None
    try:
        prequantized = getattr(AutoConfig.from_pretrained(path), "quantization_config", None) is not None
        kwargs: dict = {"dtype": torch_dtype}
        if quantize == "nf4" and not prequantized:
            kwargs["quantization_config"] = bnb_config(QuantizationConfig(mode="nf4"), torch_dtype,
                                                       family.skip_modules())
        if quantize == "nf4" or prequantized:
            kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
        model = family.transformers_class().from_pretrained(path, **kwargs)
        processor = family.load_processor(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"--model: cannot load {path!r} ({e}). Pass a directory written by `cordlite merge`, "
                             "a checkpoint directory, or a hub id reachable from this machine") from None
    mark_family(model, family)
    if "device_map" not in kwargs:
        model.to(dev)
    processor.tokenizer.padding_side = "left"  # batched prompts must end at the same column
    return model.eval(), processor
