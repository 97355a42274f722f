"""What a step cost: its peak memory, and the model FLOPs it did (for metrics.jsonl and the progress bar).

Peak memory of a step: CUDA's max_memory_allocated since the step began; on CPU the process's peak
RSS (VmHWM, reset at each step by writing "5" to /proc/self/clear_refs on Linux; elsewhere the peak
of the whole process, which can only overstate it).

Model FLOPs of a step (stated formula; multiply-adds count 2):
    2 * N_dec * (positions the language model reads without grad: prefills, decode steps of every
                 row, the teacher's text view + completion, the reference answers)
  + 2 * N_head * (positions whose logits are computed without grad: decode steps, teacher completion)
  + 4 * N_dec * (positions of the gradient pass)  +  4 * N_head * (its completion positions)
N_dec counts the decoder's linear weights (attention and MLP of every layer, LoRA left out) and
N_head the LM head's (vocabulary x hidden). The gradient pass counts forward + input gradient (2 + 2
per weight): the frozen base's weight gradients are never computed, and the recomputation of
gradient checkpointing is not model work. Attention scores and the audio encoder are left out.
MFU = FLOPs / step seconds / the device's peak dense bf16 FLOP/s (PEAK_FLOPS), where it is known.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# Dense bf16 tensor FLOP/s (fp32 accumulate) by the name torch reports, from the vendors' sheets.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
    "RTX 4090": 165.2e12, "RTX 3090": 71e12, "RTX 5090": 209.5e12, "A6000": 155e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The device's peak dense bf16 FLOP/s, or None where cordlite does not know it (CPU, other GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory since the last reset_peak_memory: CUDA allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return proc_status_kb("VmHWM") * 1024 / 1e9


def proc_status_kb(field: str) -> int:
    try:
        m = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        m = None
    if m:
        return int(m.group(1))
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux; no reset possible


def linear_sizes(model) -> tuple[int, int]:
    """(N_dec, N_head): the weights of the language model's decoder linears and of its LM head."""
    from cordlite.models.families import family_or_none

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_or_none(base)
    decoder = family.lm(base) if family is not None else getattr(base, "model", base)
    n_dec = 0
    for name, module in decoder.named_modules():
        if "lora_" in name or not hasattr(module, "in_features") or not hasattr(module, "out_features"):
            continue
        if hasattr(module, "base_layer"):  # peft's wrapper: its base_layer is counted
            continue
        n_dec += module.in_features * module.out_features
    head = base.get_output_embeddings()
    return n_dec, head.in_features * head.out_features


def step_flops(n_dec: int, n_head: int, stats: dict[str, float]) -> float:
    """Model FLOPs of one step from its position counts (the formula in the module docstring)."""
    no_grad = sum(stats.get(k, 0.0) for k in ("prefill_positions", "decode_positions", "teacher_positions",
                                               "reference_positions"))
    no_grad_head = sum(stats.get(k, 0.0) for k in ("decode_positions", "teacher_head_positions",
                                                    "reference_decode_positions"))
    return (2 * n_dec * no_grad + 2 * n_head * no_grad_head
            + 4 * n_dec * stats.get("grad_positions", 0.0) + 4 * n_head * stats.get("grad_head_positions", 0.0))
