"""Decode roofline of the step benchmark: weight bytes read per decoded token, measured bandwidth.

Decoding one token for a batch reads every language-model weight once (the batch shares the
read), so the fastest possible decode step is

    seconds per step  >=  (weight bytes read per step + KV cache bytes read per step) / copy bandwidth

`weight_bytes_per_token` sums the storage of the loaded model: 4-bit packed weights plus their
quantisation constants, the bf16 norms and biases, the LoRA matrices (the student decodes with
adapters on), one embedding row per sequence (negligible) and the full bf16 LM head. That is what a
step reads while bitsandbytes' fused 4-bit kernel serves the call's rows; past its row limit a
weight is dequantised to bf16 first and read three times over (benchmarks/step_estimate.py has the
limits and the 7B arithmetic). The audio encoder and projector run once per prompt, not per token.
"""

from __future__ import annotations

import time

import torch

GB = 1e9


def storage_bytes(p: torch.Tensor) -> int:
    n = p.numel() * p.element_size()
    qs = getattr(p, "quant_state", None)  # bitsandbytes Params4bit
    if qs is not None:
        for t in (qs.absmax, qs.code, getattr(qs, "offset", None)):
            if isinstance(t, torch.Tensor):
                n += t.numel() * t.element_size()
        if getattr(qs, "nested", False) and qs.state2 is not None:
            n += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
            n += qs.state2.code.numel() * qs.state2.code.element_size()
    scb = getattr(p, "SCB", None)  # bitsandbytes Int8Params
    if isinstance(scb, torch.Tensor):
        n += scb.numel() * scb.element_size()
    return n


def weight_bytes_per_token(model) -> dict[str, int]:
    """Bytes of parameter storage read to decode one token (batch 1), by kind; `total` sums them."""
    from cordlite.models.lora import base_of

    out = {"lm_4bit": 0, "lm_other": 0, "lora": 0, "embed_row": 0, "lm_head": 0}
    for name, p in base_of(model).named_parameters():
        if "audio_tower" in name or "multi_modal_projector" in name:
            continue  # prefill only
        if "embed_tokens" in name:
            out["embed_row"] += p.shape[-1] * p.element_size()  # one row gathered per sequence
        elif name.startswith("lm_head"):
            out["lm_head"] += storage_bytes(p)
        elif "lora_" in name:
            out["lora"] += storage_bytes(p)
        elif getattr(p, "quant_state", None) is not None or hasattr(p, "SCB"):
            out["lm_4bit"] += storage_bytes(p)
        else:
            out["lm_other"] += storage_bytes(p)
    out["total"] = sum(out.values())
    return out


def copy_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int | None = None) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (each copy reads and writes nbytes)."""
    cuda = device.type == "cuda"
    nbytes = nbytes or (1 << 30 if cuda else 1 << 26)
    repeats = repeats or (20 if cuda else 5)
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    dst.copy_(src)  # warm-up: first-touch page faults and kernel load are not bandwidth
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync()
    seconds = time.perf_counter() - t0
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return 2 * nbytes * repeats / seconds


def decode_roofline(weight_bytes: int, bandwidth: float, steps_per_s: float, kv_bytes_step: float = 0.0) -> dict:
    """The weight-read bound on decode steps per second and how close the rollouts came; `kv_bytes_step`
    (the KV cache a rollout call reads per step, all its rows, at its mean context) gives the tighter
    bound with the cache. Each decode step produces one token for every row of the call."""
    bound = bandwidth / weight_bytes if weight_bytes else 0.0
    with_kv = bandwidth / (weight_bytes + kv_bytes_step) if weight_bytes else 0.0
    return {"bandwidth_gb_s": bandwidth / GB, "weight_gb_per_step": weight_bytes / GB,
            "bound_steps_per_s": bound, "achieved_steps_per_s": steps_per_s,
            "fraction_of_bound": steps_per_s / bound if bound else 0.0,
            "kv_gb_per_step": kv_bytes_step / GB, "bound_steps_per_s_with_kv": with_kv,
            "fraction_of_bound_with_kv": steps_per_s / with_kv if with_kv else 0.0}
