"""Host time of one decode step of the 7B's layer structure: what a GPU cannot hide when decoding is
launch-bound (the host_ms of benchmarks/step_estimate.py).

    python -m benchmarks.host_overhead [--rows 20] [--threads 1] [--out benchmarks/results/host_overhead.json]

A Qwen2-Audio with the 7B's structure (32 decoder layers, 32 heads, NF4 linears through bitsandbytes,
LoRA r 16 on the 7 linears through peft) but 128 wide, so the arithmetic is negligible and what is
left is the per-operation cost: Python in transformers, peft and bitsandbytes, torch's dispatcher, and
the small CPU kernels that stand in for GPU launches. It decodes `rows` rows (4 prompts x 5 rows, the
recipe's step) with cordlite's sampler, with the shared-prefix cache and with transformers' dynamic
cache, and reports milliseconds and aten operations per decode step (each aten op is a kernel launch
on a GPU). The difference of a 34-token and a 2-token call divides out the prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _model(cache: Path):
    from cordlite.models.load import load_base
    from cordlite.models.lora import attach_lora
    from cordlite.models.runtime import resolve_runtime
    from cordlite.models.tiny import TinySpec
    from cordlite.models.tiny_checkpoint import ensure_tiny_qwen2audio
    from cordlite.recipe import recipe_from_dict

    spec = TinySpec(num_hidden_layers=32, hidden_size=128, intermediate_size=256, num_attention_heads=32,
                    num_key_value_heads=32, audio_layers=1)
    path = ensure_tiny_qwen2audio(cache / "deep32-narrow", spec)
    raw = {"model": {"name_or_path": str(path), "device": "cpu"}, "quantization": {"mode": "nf4"},
           "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "data": {"train_manifest": "unused"},
           "output": {"dir": str(cache / "unused")}}
    recipe = recipe_from_dict(raw, check_paths=False)
    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
    model, _ = load_base(recipe.model, recipe.quantization, rt)
    return attach_lora(model, recipe.lora, rt).eval()


def _ops(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def measure(rows: int = 20, group: int = 5, prompt_len: int = 100, repeats: int = 3,
            cache: Path = REPO / "cache" / "bench") -> dict:
    from cordlite.models.sampling import sample

    model = _model(cache)
    prompts = rows // group
    prompt = {"input_ids": torch.randint(0, 900, (prompts, prompt_len), generator=torch.Generator().manual_seed(0)),
              "attention_mask": torch.ones(prompts, prompt_len, dtype=torch.long)}

    def run(tokens: int, kv: str):
        return lambda: sample(model, prompt, group, temperature=1.0, max_new_tokens=tokens, end_ids=[1], pad_id=0,
                              blocked_ids=[1], keys=torch.arange(prompts), kv_cache=kv)

    out = {}
    for kv in ("auto", "dynamic"):
        run(2, kv)()  # warm-up
        per_step = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(34, kv)()
            long = time.perf_counter() - t0
            t0 = time.perf_counter()
            run(2, kv)()
            per_step.append((long - (time.perf_counter() - t0)) / 32)
        ops = (_ops(run(12, kv)) - _ops(run(2, kv))) / 10
        out["shared_prefix" if kv == "auto" else "dynamic"] = {"ms_per_step": 1e3 * min(per_step),
                                                               "aten_ops_per_step": ops}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    result = measure(args.rows)
    record = {"benchmark": "host_overhead", "rows": args.rows, "threads": args.threads, "result": result,
              "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "load_average_start": load}, "torch": torch.__version__}
    text = json.dumps(record, indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_name(f".{Path(args.out).name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, args.out)
    print(text, file=sys.stdout)
    return record


if __name__ == "__main__":
    main()
