"""The 7B CORD step on one consumer GPU, estimated term by term: seconds and peak memory, former and now.

    python -m benchmarks.step_memory_speed --estimate [--host-ms 45] [--gpu rtx4090]

recipes/qwen2audio_lora.yaml on Qwen2-Audio-7B-Instruct (NF4 base, LoRA r 16 on the 7 linears of the
language model, 4 prompts a step, 1 + N = 5 rollouts each, 200 new tokens, 30 s spoken prompts: 790
prompt positions, 750 of them audio; text view 100 positions). Two layouts:

  former  rollouts per micro-batch (4 calls of 5 rows), each row a copy of its prompt in a cache that
          grows by concatenation; the gradient pass runs every row's prompt again (checkpointing on);
          the reference prefetch decodes 64 text rows in one unbudgeted call
  now     the step's 20 rows in one call, each prompt's keys and values once (shared-prefix cache);
          the gradient pass reads each prompt once (checkpointing on); every call within
          rollout.kv_budget_gb (6 GB in the recipe)

Every term is arithmetic on the shapes, the GPU's sheet values and three stated assumptions:
  host_ms       host time per decode step (Python, transformers, peft, bitsandbytes wrappers and
                kernel launches of 32 layers: about 5,000 aten ops, measured on the CPU by
                benchmarks/host_overhead.py); a decode step takes max(host, GPU) because generate
                synchronises every step and the GPU runs behind the host
  bw_eff        fraction of the sheet bandwidth that decode's weight and KV reads reach (0.8)
  mm_eff        fraction of the sheet bf16 FLOP/s that the large matmuls reach (0.6), plus 20% for
                the non-matmul work of a layer (norms, rotary, activations, attention)
Decode reads the language model's weights once per step for all rows. bitsandbytes 0.50.2 runs its
fused 4-bit kernel (0.52 bytes a weight) only up to a number of rows that depends on the GPU and the
weight's shape (backends/cuda/ops.py, _gemm_4bit_use_custom_cuda); beyond it the weight is dequantised
to bf16 and multiplied (0.5 + 2 + 2 = 4.5 bytes a weight). FUSED_ROWS holds those limits for the 7B's
shapes, read off that function. The gradient pass always dequantises (its kernel needs the bf16 weight).
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Gpu:
    name: str
    bandwidth: float  # bytes/s, the sheet's
    bf16_flops: float  # dense bf16 tensor FLOP/s with fp32 accumulate, the sheet's
    memory: float  # bytes
    fused_rows: dict  # weight shape -> most rows bitsandbytes' fused 4-bit kernel takes


# bitsandbytes 0.50.2, _gemm_4bit_use_custom_cuda, for the 7B's weights [out, in]: an RTX 4090 (sm89, 128 SMs)
# takes q/k/v/o [4096, 4096] fused up to 8 rows, gate/up [11008, 4096] and down [4096, 11008] up to 64;
# an H100 (sm90, 132 SMs) q/k/v/o up to 7, gate/up up to 32, down up to 5.
RTX4090 = Gpu("RTX 4090", 1008e9, 165.2e12, 24e9, {"attn": 8, "gate_up": 64, "down": 64})
H100 = Gpu("H100 SXM", 3350e9, 989e12, 80e9, {"attn": 7, "gate_up": 32, "down": 5})
GPUS = {"rtx4090": RTX4090, "h100": H100}


@dataclass(frozen=True)
class Shape:
    """The 7B step's shapes (recipes/qwen2audio_lora.yaml on Qwen2-Audio-7B-Instruct)."""

    hidden: int = 4096
    ffn: int = 11008
    layers: int = 32
    kv_heads: int = 32
    head_dim: int = 128
    vocab: int = 156032
    encoder_params: float = 0.637e9  # Whisper-large-v3 encoder + projector
    encoder_positions: int = 1500
    prompts: int = 4
    rows: int = 5  # 1 distillation + N = 4 group rollouts
    audio_prompt: int = 790
    text_prompt: int = 100
    new: int = 200
    lora_r: int = 16
    reference_block: int = 64  # text-view references generated ahead per call block
    kv_budget: float = 6e9


def _sizes(s: Shape) -> dict:
    attn = 4 * s.layers * s.hidden * s.hidden  # q, k, v, o (no GQA)
    gate_up = 2 * s.layers * s.hidden * s.ffn
    down = s.layers * s.hidden * s.ffn
    lora = s.layers * s.lora_r * (4 * 2 * s.hidden + 3 * (s.hidden + s.ffn))
    return {"attn": attn, "gate_up": gate_up, "down": down, "dec": attn + gate_up + down, "head": s.vocab * s.hidden,
            "lora": lora, "kv_pos": 2 * s.layers * s.kv_heads * s.head_dim * 2}  # bf16 K and V a position


NF4 = 0.5 + 1 / 64 + 4 / 64 / 256  # packed 4-bit + uint8 absmax per 64 + nested fp32 per 256 blocks
DEQUANT = NF4 + 2 + 2  # read 4-bit, write bf16, read it back in the matmul


def decode_weight_bytes(s: Shape, gpu: Gpu, rows: int) -> float:
    """Weight bytes one decode step of `rows` rows reads (fused kernel or dequantise + matmul per shape)."""
    z = _sizes(s)
    per = lambda part: z[part] * (NF4 if rows <= gpu.fused_rows[part] else DEQUANT)  # noqa: E731
    return per("attn") + per("gate_up") + per("down") + 2 * z["head"] + 4 * z["lora"]


def estimate(layout: str, s: Shape = Shape(), gpu: Gpu = RTX4090, host_ms: float = 45.0, bw_eff: float = 0.8,
             mm_eff: float = 0.6) -> dict:
    """Line items of one optimizer step: seconds by phase and peak memory by phase (GB), with the terms."""
    if layout not in ("former", "now"):
        raise ValueError(f"layout {layout!r}: former or now")
    z = _sizes(s)
    bw, flops = bw_eff * gpu.bandwidth, mm_eff * gpu.bf16_flops
    now = layout == "now"
    host = host_ms / 1e3
    t: dict[str, float] = {}
    terms: dict[str, str] = {}

    def matmul_s(positions: float, passes: float) -> float:  # 2 FLOPs a weight a position, 20% non-matmul work
        return 1.2 * passes * 2 * (z["dec"] * positions) / flops

    dequant_pass = (z["dec"]) * DEQUANT / bw  # every weight dequantised once: one forward (or backward) pass

    # rollouts: prefill (cordlite's, without the LM head), then decode
    b, r, p, n = s.prompts, s.rows, s.audio_prompt, s.new
    calls = 1 if now else b
    rows_per_call = b * r // calls
    t["encoder"] = 1.2 * 2 * s.encoder_params * s.encoder_positions * b / flops
    t["prefill"] = matmul_s(b * (p - 1), 1) + calls * dequant_pass
    kv_prefix = (b // calls) * (p - 1) * z["kv_pos"]  # a call's prompts, once each (now) or per row (former)
    mean_suffix = rows_per_call * (n / 2) * z["kv_pos"]
    if now:
        kv_read = kv_prefix + mean_suffix
    else:  # each row a copy of its prompt; concatenation rewrites the cache every step (read + write) before the read
        kv_read = 3 * rows_per_call * (p - 1 + n / 2) * z["kv_pos"]
    gpu_step = (decode_weight_bytes(s, gpu, rows_per_call) + kv_read) / bw
    t["decode"] = calls * n * max(host, gpu_step)
    terms["decode"] = (f"{calls} call(s) x {n} steps x max(host {host_ms:.0f} ms, GPU {gpu_step * 1e3:.1f} ms: "
                       f"{decode_weight_bytes(s, gpu, rows_per_call) / GB:.2f} GB weights at {rows_per_call} rows + "
                       f"{kv_read / GB:.2f} GB KV)")
    # teacher: text view + the distillation row, per micro-batch (1 prompt), no grad
    t["teacher"] = matmul_s(b * (s.text_prompt + n), 1) + b * dequant_pass + 2 * b * n * z["head"] * 2 / flops
    # gradient pass per micro-batch: forward, checkpoint recompute, input-gradient backward (3 passes)
    grad_positions = (p + r * n) if now else r * (p + n)
    passes = 2 if now else 1  # the prompt pass and the completion pass each read every weight
    t["gradient"] = b * (matmul_s(grad_positions, 3) + 3 * passes * dequant_pass
                         + 3 * 2 * r * n * z["head"] * 2 / flops)
    terms["gradient"] = f"{b} x {grad_positions} positions x 3 passes (forward, recompute, input gradient)"
    # the reference prefetch: 64 text rows per block of 16 steps, greedy, in budgeted calls (now) or one call
    ref_rows = s.reference_block
    ref_kv_row = (s.text_prompt - 1 + n) * z["kv_pos"]
    ref_calls = -(-ref_rows * ref_kv_row // s.kv_budget) if now else 1
    ref_rows_call = -(-ref_rows // ref_calls)
    ref_gpu = (decode_weight_bytes(s, gpu, ref_rows_call) + ref_rows_call * (s.text_prompt + n / 2) * z["kv_pos"]
               * (1 if now else 3)) / bw
    steps_per_block = ref_rows // b
    t["prefetch"] = ref_calls * n * max(host, ref_gpu) / steps_per_block
    terms["prefetch"] = (f"{ref_calls:.0f} call(s) of {ref_rows_call:.0f} rows x {n} steps x max(host, GPU "
                         f"{ref_gpu * 1e3:.1f} ms), every {steps_per_block} steps")
    t["optimizer"] = 16 * z["lora"] / bw  # AdamW reads and writes params, grads, m, v in fp32
    t["step"] = sum(t.values())

    # memory (peak allocated): resident + the largest phase
    m: dict[str, float] = {}
    resident = z["dec"] * NF4 + 2 * 2 * z["head"] + 2 * (s.encoder_params + 0.0025e9) + 16 * z["lora"]
    m["resident"] = resident
    if now:
        rollout_kv = b * (p - 1 + r * n) * z["kv_pos"]
        ref_kv = min(s.kv_budget, ref_rows_call * ref_kv_row)
    else:
        rollout_kv = r * (p - 1 + n) * z["kv_pos"] + r * (p + n) * z["kv_pos"] / s.layers  # + one layer's concat copy
        ref_kv = ref_rows * ref_kv_row * (1 + 1 / s.layers)
    prefill_act = (b // calls) * (p - 1) * (3 * s.ffn + 4 * s.hidden) * 2  # one layer's activations, bf16
    m["rollouts"] = rollout_kv + prefill_act + rows_per_call * s.vocab * 4 * 4  # + logits and the sampler's fp32/64
    m["prefetch"] = ref_kv + ref_rows_call * s.vocab * 4 * 4
    ckpt = grad_positions * s.hidden * 2 * s.layers  # checkpointed layer inputs, bf16
    prompt_kv = (p * z["kv_pos"]) if now else 0.0  # the prompt's keys and values, kept with their graph
    layer = grad_positions * (3 * s.ffn + 6 * s.hidden) * 2 * 2  # one layer recomputed, with its gradient
    kl_chunk = r * 32 * s.vocab * 4 * 4  # a 32-position chunk of full-vocabulary log-probs, with gradient
    teacher_lp = n * s.vocab * 4
    m["gradient"] = ckpt + prompt_kv + layer + kl_chunk + teacher_lp + s.ffn * s.hidden * 2  # + a dequantised weight
    m["peak"] = resident + max(m["rollouts"], m["prefetch"], m["gradient"])
    return {"layout": layout, "gpu": gpu.name, "host_ms": host_ms, "bw_eff": bw_eff, "mm_eff": mm_eff,
            "seconds": t, "memory_gb": {k: v / GB for k, v in m.items()}, "terms": terms}


def markdown(host_ms: float = 45.0, gpu: Gpu = RTX4090) -> str:
    """Both layouts side by side, every term, and the step time at other host costs."""
    a, b = estimate("former", gpu=gpu, host_ms=host_ms), estimate("now", gpu=gpu, host_ms=host_ms)
    lines = [f"7B CORD step estimate on {gpu.name} (host {host_ms:.0f} ms a decode step, {a['bw_eff']:.0%} of the "
             f"bandwidth, {a['mm_eff']:.0%} of bf16 FLOP/s + 20%)", "",
             "| phase (s) | former | now | how (now) |", "|---|---|---|---|"]
    for k in ("prefetch", "encoder", "prefill", "decode", "teacher", "gradient", "optimizer", "step"):
        lines.append(f"| {k} | {a['seconds'][k]:.2f} | {b['seconds'][k]:.2f} | {b['terms'].get(k, '')} |")
    lines += ["", "| memory (GB) | former | now |", "|---|---|---|"]
    for k in ("resident", "rollouts", "prefetch", "gradient", "peak"):
        lines.append(f"| {k} | {a['memory_gb'][k]:.2f} | {b['memory_gb'][k]:.2f} |")
    lines += ["", "| host ms a decode step | " + " | ".join(str(h) for h in (25, 35, 45, 60)) + " |",
              "|---|" + "---|" * 4]
    for layout in ("former", "now"):
        cells = [f"{estimate(layout, gpu=gpu, host_ms=h)['seconds']['step']:.1f}" for h in (25, 35, 45, 60)]
        lines.append(f"| {layout} s/step | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
