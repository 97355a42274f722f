"""Peak memory of a rollout's prefill at Qwen2-Audio-7B's shapes on CPU: generate()'s own prefill
(every prompt position gets a full-vocabulary logit row) against cordlite's prefilled cache (the
language model reads the prompt without its LM head; logits for the last position only).

    python -m benchmarks.prefill_memory --out benchmarks/results/prefill_memory

The model is Qwen2AudioForConditionalGeneration with the 7B's vocabulary (156,032), width (4,096),
MLP (11,008) and heads (32), in bfloat16, random weights, with 2 decoder layers and 1 encoder layer
instead of 32 and 32: the prompt's logits ([rows, positions, vocabulary]) do not depend on depth,
and the shallow model fits a laptop's memory. The prompt is one 30 s spoken question as the
audio view gives it to the language model: 750 audio positions and 50 text positions, as merged
input embeddings. Two cases: 5 rows of one prompt (a CORD rollout group: 1 + 4) and 5 prompts with
one row each (a batch of greedy evaluation). Each measurement runs in its own process (freed memory
kept by the allocator would hide the next one's peak): the peak RSS (VmHWM, reset before it) minus
the RSS before it, with max_new_tokens 1 (the prefill and one sampled token).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks.memory_meter import GB, Memory
from cordlite.train.meter import proc_status_kb

PROMPT = 800  # 750 audio positions (30 s at 25 per second) + 50 text positions


def build(vocab: int, hidden: int, inter: int, heads: int, layers: int):
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2AudioForConditionalGeneration, Qwen2Config

    text = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=8192,
                       tie_word_embeddings=False, use_sliding_window=False, bos_token_id=0, eos_token_id=1,
                       pad_token_id=0)
    audio = Qwen2AudioEncoderConfig(encoder_layers=1, d_model=1280, encoder_attention_heads=20, encoder_ffn_dim=5120,
                                    num_mel_bins=128, max_source_positions=1500)
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=2)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # values do not matter to memory; they must only be finite
            p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float32) - 0.5).mul_(0.04).to(p.dtype))
    return model.eval()


def measure(model, rows: int, prompts: int, shared: bool, hidden: int) -> dict:
    from cordlite.models.families import FAMILIES, mark_family
    from cordlite.models.sampling import sample

    mark_family(model, FAMILIES["qwen2_audio"])
    g = torch.Generator().manual_seed(1)
    embeds = (torch.randn(prompts, PROMPT, hidden, generator=g) * 0.02).to(torch.bfloat16)
    prompt = {"inputs_embeds": embeds, "attention_mask": torch.ones(prompts, PROMPT, dtype=torch.long),
              "input_ids": torch.full((prompts, PROMPT), 5, dtype=torch.long)}
    gc.collect()
    mem = Memory(torch.device("cpu"))
    before = proc_status_kb("VmRSS") * 1024 / GB
    mem.reset()
    t0 = time.perf_counter()
    with torch.no_grad():
        sample(model, prompt, rows, temperature=1.0, max_new_tokens=1, end_ids=[1], pad_id=0, share_prefill=shared)
    seconds = time.perf_counter() - t0
    mem.record("prefill")
    return {"rows_per_prompt": rows, "prompts": prompts, "prefilled_cache": shared,
            "peak_over_start_gb": round(mem.peaks["prefill"]["rss_gb"] - before, 3), "seconds": round(seconds, 2)}


def main() -> None:
    import subprocess
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/prefill_memory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="A small vocabulary and width (a seconds-long check).")
    ap.add_argument("--one", nargs=3, type=int, metavar=("ROWS", "PROMPTS", "SHARED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = (dict(vocab=4096, hidden=256, inter=512, heads=4, layers=2) if args.small else
             dict(vocab=156032, hidden=4096, inter=11008, heads=32, layers=2))
    if args.one:  # one measurement, in this fresh process
        t0 = time.perf_counter()
        model = build(**shape)
        r = measure(model, args.one[0], args.one[1], bool(args.one[2]), shape["hidden"])
        r["build_seconds"] = round(time.perf_counter() - t0 - r["seconds"], 1)
        r["parameters_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
        print(json.dumps(r), flush=True)
        return
    load0 = os.getloadavg()[0]
    rows = []
    for rows_per_prompt, prompts in ((5, 1), (1, 5)):
        for shared in (0, 1):
            cmd = [sys.executable, "-m", "benchmarks.prefill_memory", "--threads", str(args.threads),
                   "--one", str(rows_per_prompt), str(prompts), str(shared)] + (["--small"] if args.small else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    logit_gb = 5 * PROMPT * shape["vocab"] * 2 / GB  # bf16 [5 rows, 800 positions, vocabulary]
    result = {"shape": shape, "prompt_positions": PROMPT, "dtype": "bfloat16", "threads": args.threads,
              "prompt_logits_gb_bf16": round(logit_gb, 3), "runs": rows,
              "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "load_average_start": load0}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["| rows x prompts | generate()'s own prefill | prefilled cache (cordlite) |", "|---|---|---|"]
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        lines.append(f"| {a['rows_per_prompt']} x {a['prompts']} | {a['peak_over_start_gb']:.2f} GB, {a['seconds']} s "
                     f"| {b['peak_over_start_gb']:.2f} GB, {b['seconds']} s |")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
