"""Decode roofline and memory arithmetic for the step benchmark.

    python -m benchmarks.step_memory_speed --estimate        (prints estimate_step_memory for the 7B, no GPU)

Decoding one token for a batch reads every language-model weight once (the batch shares the
read), so at batch 1 the fastest possible decode is

    tokens/s  <=  copy bandwidth (bytes/s)  /  weight bytes read per decoded token

`weight_bytes_per_token` sums the storage actually read per step: 4-bit packed weights plus
their quantisation constants, the bf16 norms and biases, the LoRA matrices (the student decodes
with adapters on), one embedding row per sequence (negligible) and the full bf16 LM head. The
audio encoder and projector run once per prompt (prefill), not per token, and are left out.
The KV cache read grows with the context and is reported beside it, not in the bound.
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


def kv_bytes_per_position(config, dtype_bytes: int) -> int:
    """Bytes of K and V cached per token position, all layers (read once per decode step)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * dtype_bytes


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


def decode_roofline(weight_bytes: int, bandwidth: float, per_sequence_tok_s: float,
                    kv_bytes_group_step: float = 0.0) -> dict[str, float]:
    """The batch-1 weight-read bound and how close the rollouts came; `kv_bytes_group_step` (the KV cache
    the N-row group call reads per decode step at its mean context) gives the tighter bound of that call."""
    bound = bandwidth / weight_bytes if weight_bytes else 0.0
    with_kv = bandwidth / (weight_bytes + kv_bytes_group_step) if weight_bytes else 0.0
    return {"bandwidth_gb_s": bandwidth / GB, "weight_gb_per_token": weight_bytes / GB,
            "bound_tok_s_batch1": bound, "achieved_per_sequence_tok_s": per_sequence_tok_s,
            "fraction_of_bound": per_sequence_tok_s / bound if bound else 0.0,
            "kv_gb_per_step_group_call": kv_bytes_group_step / GB, "bound_tok_s_group_call_with_kv": with_kv}


def estimate_step_memory(arch, *, lora_r: int = 16, group_size: int = 4,
                         n_distill: int = 1, audio_prompt_tokens: int = 790, text_prompt_tokens: int = 100,
                         new_tokens: int = 200, kl_chunk: int = 32) -> dict[str, float]:
    """Arithmetic estimate (GB) of one CORD micro-batch on an NF4 base with LoRA, by line item.

    Weights and optimizer state stay for the whole step; the three phases (rollout, teacher
    scoring, student loss) come one after another, so the peak is the resident part plus the
    largest phase. Activations assume gradient checkpointing (the recipe's setting)."""
    from benchmarks.random_checkpoint import parameter_counts

    c = parameter_counts(arch)
    h, f, L, V = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers, arch.vocab_size
    kv = arch.num_key_value_heads * arch.head_dim
    nf4 = c["lm_linear"] * (0.5 + 1 / 64) + c["lm_linear"] / 64 / 256 * 4  # packed + uint8 absmax + nested fp32
    bf16 = 2 * (c["embed_tokens"] + c["lm_head"]), 2 * (c["audio_tower"] + c["projector"] + c["lm_other"])
    lora = L * lora_r * (2 * (h + h) + 2 * (h + kv) + 3 * (h + f))  # q,o + k,v + gate,up,down (the recipe's 7)
    kv_pos = 2 * L * kv * 2  # bf16 K and V per position
    rows = n_distill + group_size
    seq = audio_prompt_tokens + new_tokens
    items = {
        "weights_nf4_linear": nf4 / GB,
        "weights_bf16_embed_and_head": bf16[0] / GB,
        "weights_bf16_audio_projector_norms": bf16[1] / GB,
        "lora_params_grads_adamw_fp32": 4 * 4 * lora / GB,
        # rollout: the N group rollouts are one generate call; the distillation rollout is another
        "rollout_kv_cache_group_call": group_size * seq * kv_pos / GB,
        # Qwen2AudioForConditionalGeneration.forward has no logits_to_keep: prefill makes bf16 logits for every prompt token
        "rollout_prefill_logits_bf16": group_size * audio_prompt_tokens * V * 2 / GB,
        "teacher_logprobs_fp32": n_distill * new_tokens * V * 4 / GB,
        "teacher_chunk_logits": n_distill * kl_chunk * V * 4 * 2 / GB,
        "loss_checkpointed_layer_inputs": rows * seq * h * 2 * L / GB,
        "loss_one_layer_recompute": rows * seq * (3 * f + 6 * h) * 2 / GB,
        "loss_kl_chunk_with_grad": rows * kl_chunk * V * 4 * 4 / GB,
    }
    resident = sum(v for k, v in items.items() if k.startswith(("weights", "lora")))
    rollout = items["rollout_kv_cache_group_call"] + items["rollout_prefill_logits_bf16"]
    teacher = items["teacher_logprobs_fp32"] + items["teacher_chunk_logits"]
    loss = (items["teacher_logprobs_fp32"] + items["loss_checkpointed_layer_inputs"]
            + items["loss_one_layer_recompute"] + items["loss_kl_chunk_with_grad"])
    items.update(resident=resident, phase_rollout=rollout, phase_teacher=teacher, phase_loss=loss,
                 peak_estimate=resident + max(rollout, teacher, loss), lora_params=float(lora))
    return items
