"""Where and in what precision a run executes: the resolved device and dtypes (`Runtime`).

    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cordlite.config import ModelConfig, QuantizationConfig, TrainConfig


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded; the message names model.name_or_path."""


@dataclass(frozen=True)
class Runtime:
    """Resolved device and precision of a run."""

    device: torch.device
    dtype: torch.dtype  # unquantised weights
    compute_dtype: torch.dtype  # 4-bit matmuls
    autocast: bool  # bf16 autocast around forward passes
    gradient_checkpointing: bool


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_runtime(model: ModelConfig, quant: QuantizationConfig, train: TrainConfig, local_rank: int = 0) -> Runtime:
    """Device and precision; `local_rank` picks this process's GPU under a multi-process launch."""
    if model.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device: 'cuda' but torch sees no CUDA device; use device: auto or cpu")
    use_cuda = model.device == "cuda" or (model.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    on_cuda = device.type == "cuda"
    dtype = DTYPES[model.dtype] if model.dtype != "auto" else (torch.bfloat16 if on_cuda else torch.float32)
    compute = DTYPES[quant.compute_dtype] if quant.compute_dtype != "auto" else (torch.bfloat16 if on_cuda else torch.float32)
    autocast = train.mixed_precision == "bf16" or (train.mixed_precision == "auto" and on_cuda)
    ckpt = train.gradient_checkpointing == "on" or (train.gradient_checkpointing == "auto" and on_cuda)
    return Runtime(device, dtype, compute, autocast, ckpt)
