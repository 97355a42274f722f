"""Where and in what precision a run executes: the resolved device and dtypes (`Runtime`).

    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)

Half precision on CUDA is bf16 where the GPU computes it natively (compute capability 8.0 and up:
A100, H100, RTX 30xx/40xx, L4, A10) and fp16 elsewhere (T4, V100), with loss scaling
(torch.amp.GradScaler) so small gradients survive fp16's range. `auto` picks it; the choice is
written to RUN/runtime.json.
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
    autocast: bool  # half-precision autocast around forward passes (CUDA)
    gradient_checkpointing: bool
    amp_dtype: torch.dtype = torch.bfloat16  # autocast's dtype where autocast is on
    loss_scaling: bool = False  # fp16 autocast: the loss is scaled before backward (GradScaler)

    def describe(self) -> dict:
        """The resolved choices, for RUN/runtime.json."""
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"device": str(self.device), "device_name": name, "dtype": str(self.dtype).removeprefix("torch."),
                "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
                "autocast": str(self.amp_dtype).removeprefix("torch.") if self.autocast else None,
                "loss_scaling": self.loss_scaling, "gradient_checkpointing": self.gradient_checkpointing}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bf16 natively (not by emulation)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_runtime(model: ModelConfig, quant: QuantizationConfig, train: TrainConfig, local_rank: int = 0) -> Runtime:
    """Device and precision; `local_rank` picks this process's GPU under a multi-process launch."""
    if model.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device: 'cuda' but torch sees no CUDA device; use device: auto or cpu")
    use_cuda = model.device == "cuda" or (model.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    on_cuda = device.type == "cuda"
    half = torch.bfloat16 if not on_cuda or cuda_has_bf16(device) else torch.float16
    if on_cuda and half == torch.float16 and train.mixed_precision == "bf16":
        raise RuntimeError(f"train.mixed_precision: 'bf16' but {torch.cuda.get_device_name(device)} has no native bf16; "
                           "use auto (fp16 with loss scaling on this GPU) or fp16")
    dtype = DTYPES[model.dtype] if model.dtype != "auto" else (half if on_cuda else torch.float32)
    compute = DTYPES[quant.compute_dtype] if quant.compute_dtype != "auto" else (half if on_cuda else torch.float32)
    mp = train.mixed_precision
    autocast = mp in ("bf16", "fp16") or (mp == "auto" and on_cuda)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp, half)
    ckpt = train.gradient_checkpointing == "on" or (train.gradient_checkpointing == "auto" and on_cuda)
    return Runtime(device, dtype, compute, autocast, ckpt, amp, autocast and amp == torch.float16)
