"""Peak memory and seconds per CORD step at Qwen2-Audio-7B size: NF4 base, LoRA r=16, N=4, 200 tokens, 30 s audio.

    python -m benchmarks.step_memory_speed --compare             # NVIDIA GPU: shared base vs separate teacher
    python -m benchmarks.step_memory_speed --prepare-only        # only build the random 7B checkpoint (~17 GB)
    python -m benchmarks.step_memory_speed --estimate            # the arithmetic memory estimate, no model
    python -m benchmarks.step_memory_speed --size tiny --steps 1 # the same script on the tiny model, CPU

What it does: builds Qwen2-Audio-7B-Instruct's architecture with random weights once
(benchmarks/random_checkpoint.py; the values and their source are there), loads it exactly as
recipes/qwen2audio_lora.yaml says (load_recipe + overrides, then cordlite's load_base and
attach_lora: NF4 base, LoRA r=16 on the language model), and runs K CORD steps with the paper's
settings: one distillation rollout at T=1.0 plus N=4 group rollouts at T=1.5, exactly 200 new
tokens each (the end tokens are suppressed so no rollout stops early), a 30 s spoken prompt
(750 audio positions), the teacher's text-view reference answer, the full-vocabulary reverse KL,
GRPO, backward and AdamW. Each step is cordlite.objective.step.collect + compute_loss + backward + optimizer,
the trainer's own calls.

Reported (JSON + Markdown table in benchmarks/results/, written atomically):
  memory   torch.cuda.max_memory_allocated / max_memory_reserved over the steps (peak RSS on CPU),
           per phase: collect (rollouts, teacher scoring, judge), student loss, optimizer
  time     seconds per step split into rollout, teacher scoring, judge (incl. the reference
           answer, generated once per new prompt), student loss (forward + backward), optimizer
  decode   rollout tokens/s per sequence and aggregate, against the weight-read roofline
           (benchmarks/roofline.py) with the measured device copy bandwidth
Options: --teacher separate (a second frozen NF4 copy scores the text view, as two-model trainers
do; benchmark only), --compare (both, one process, peak stats reset between them, and the ratios),
--separate-rollouts (the distillation and group rollouts in two generate calls, each with its own
prefill, as cordlite sampled them before one call with a temperature per row), --static-cache
(cache_implementation="static"), --compile (torch.compile on each decoder layer).

Departures from a real run: random weights and a small locally trained tokenizer (the embedding
keeps all 156032 rows); one prompt per step by default (the recipe accumulates 4 per optimizer
step: multiply the rollout/teacher/judge/loss times by 4 for its step time, peak memory is the
same because micro_batch_size is 1); rewards of random text are 0, which changes no shape.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.memory_meter import Memory
from benchmarks.random_checkpoint import ARCHS, QWEN2_AUDIO_7B, ensure_checkpoint
from benchmarks.roofline import GB, storage_bytes, copy_bandwidth, decode_roofline, estimate_step_memory, \
    kv_bytes_per_position, weight_bytes_per_token
from benchmarks.step_report import device_name, markdown, versions, write_text

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
QUESTION = ("A train leaves the station at {h} o'clock travelling at {v} kilometres per hour. A second train leaves "
            "the same station {d} hours later on the same track at {w} kilometres per hour. At what time does the "
            "second train catch up with the first, and how far from the station are they then?")


class BenchmarkError(RuntimeError):
    """A setting the benchmark cannot run with; the message says which and what to do."""


# --------------------------------------------------------------------------- inputs


def write_inputs(cache: Path, n_prompts: int, seconds: float) -> Path:
    """A `seconds`-long clip (seeded noise: the content does not change any shape) and a manifest of
    n_prompts distinct questions that all use it; returns the manifest path."""
    import numpy as np
    import soundfile as sf

    root = cache / "inputs"
    root.mkdir(parents=True, exist_ok=True)
    clip = root / f"clip_{seconds:g}s.wav"
    if not clip.is_file():
        audio = np.random.default_rng(0).normal(0.0, 0.05, int(seconds * SAMPLE_RATE)).astype("float32")
        tmp = root / f".{clip.name}.tmp-{os.getpid()}.wav"
        sf.write(tmp, audio, SAMPLE_RATE)
        os.replace(tmp, clip)
    rows = [{"id": f"bench{i}", "audio_path": clip.name,
             "question": QUESTION.format(h=6 + i % 5, v=60 + 5 * i, d=1 + i % 3, w=90 + 5 * i)} for i in range(n_prompts)]
    manifest = root / f"manifest_{n_prompts}_{seconds:g}s.jsonl"
    write_text(manifest, "".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def bench_overrides(ckpt: Path, manifest: Path, device: str, prompts_per_step: int, run_dir: Path) -> list[str]:
    """What the benchmark changes in the recipe: the model and data paths, and what CPU needs."""
    out = [f"model.name_or_path={ckpt}", f"data.train_manifest={manifest}", "data.max_audio_seconds=30",
           f"train.batch_size={prompts_per_step}", f"output.dir={run_dir}"]
    if device == "cpu":
        out += ["model.device=cpu", "train.mixed_precision='no'", "quantization.compute_dtype=float32"]
    else:
        out += ["model.device=cuda"]
    return out


# --------------------------------------------------------------------------- one configuration


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def speedups(model, static_cache: bool, compile_layers: bool) -> None:
    """The decode options: a static KV cache (read by generate from the model's generation config,
    so cordlite's own sample() picks it up) and torch.compile on each decoder layer (transformers'
    automatic generate-compile is off for bitsandbytes models, so it is applied per layer here)."""
    from cordlite.models.lora import base_of

    base = base_of(model)
    if static_cache:
        base.generation_config.cache_implementation = "static"
    if compile_layers:
        for layer in base.model.language_model.layers:
            layer.compile()


def run_config(recipe, teacher_mode: str, args, examples) -> dict:
    """Load, run warm-up + measured steps, and return the figures of one teacher configuration."""
    from cordlite.data import AudioCache, encode_views
    from cordlite.models.lora import attach_lora, trainable_parameters
    from cordlite.models.load import load_base
    from cordlite.models.runtime import resolve_runtime
    from cordlite.objective.step import ReferenceStore, Tokens, collect, compute_loss
    from cordlite.train.trainer import merge_stats, step_seed
    from benchmarks.step_variants import collect_variant, load_teacher_copy

    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
    mem = Memory(rt.device)
    mem.reset()
    t0 = time.perf_counter()
    model, processor = load_base(recipe.model, recipe.quantization, rt)
    model = attach_lora(model, recipe.lora, rt, seed=recipe.train.seed)
    teacher = load_teacher_copy(recipe, rt) if teacher_mode == "separate" else None
    speedups(model, args.static_cache, args.compile)
    if teacher is not None:
        speedups(teacher, args.static_cache, args.compile)
    load_s = time.perf_counter() - t0
    mem.record("load")
    after_load = mem.current()
    tokenizer = processor.tokenizer
    t = Tokens.of(model, tokenizer)
    # The end tokens are suppressed too, so every rollout runs the full max_new_tokens (paper: 200).
    tokens = Tokens(t.end_ids, t.pad_id, sorted(set(t.blocked_ids) | set(t.end_ids)))
    params = [p for _, p in trainable_parameters(model)]
    o, tr = recipe.optim, recipe.train
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    store = ReferenceStore(None)
    audio_cache = AudioCache(recipe.data.max_audio_seconds)
    variant = teacher is not None or args.separate_rollouts
    n_micro = tr.batch_size // tr.micro_batch_size
    steps = []
    for step in range(args.warmup + args.steps):
        measured = step >= args.warmup
        t_step = _sync(rt.device)
        optimizer.zero_grad(set_to_none=True)
        parts, backward_s, prompt_tokens = [], 0.0, []
        for micro in range(n_micro):
            torch.manual_seed(step_seed(tr.seed, step, micro))
            first = (step * n_micro + micro) * tr.micro_batch_size
            views = encode_views(processor, examples[first: first + tr.micro_batch_size], audio_cache,
                                 recipe.data.instruction, recipe.data.system_prompt).to(rt.device)
            prompt_tokens.append((views.audio["input_ids"].shape[1], views.text["input_ids"].shape[1]))
            mem.reset()
            if variant:
                c = collect_variant(model, tokenizer, views, recipe, rt, tokens, store, teacher=teacher,
                                    separate=args.separate_rollouts)
            else:
                c = collect(model, tokenizer, views, recipe, rt, tokens, store)
            mem.record("collect" if measured else "warmup")
            mem.reset()
            loss, stats = compute_loss(model, c, recipe, rt)
            tb = _sync(rt.device)
            (loss * (tr.micro_batch_size / tr.batch_size)).backward()
            backward_s += _sync(rt.device) - tb
            mem.record("student_loss" if measured else "warmup")
            parts.append({**c.stats, **stats})
            del c, loss
        mem.reset()
        t_opt = _sync(rt.device)
        torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm if o.max_grad_norm > 0 else float("inf"))
        optimizer.step()
        optimizer_s = _sync(rt.device) - t_opt
        mem.record("optimizer" if measured else "warmup")
        row = merge_stats(parts)
        row.update(step=step + 1, measured=measured, backward_s=backward_s, optimizer_s=optimizer_s,
                   step_s=_sync(rt.device) - t_step, micro_batches=n_micro,
                   audio_prompt_tokens=max(a for a, _ in prompt_tokens), text_prompt_tokens=max(b for _, b in prompt_tokens))
        steps.append(row)
        print(f"[{teacher_mode}] step {step + 1}/{args.warmup + args.steps}{'' if measured else ' (warm-up)'}: "
              f"{row['step_s']:.2f} s, rollout {row['rollout_s']:.2f} s", file=sys.stderr, flush=True)
    result = summarise(steps, mem, recipe, args, n_micro)
    result.update(teacher=teacher_mode, load_s=load_s, after_load=after_load,
                  weight_bytes_per_token=weight_bytes_per_token(model),
                  kv_bytes_per_position=kv_bytes_per_position(model.config, 2 if rt.dtype != torch.float32 else 4),
                  lora_params=sum(p.numel() for p in params), model_footprint_gb=_footprint(model, teacher))
    del model, teacher, optimizer, params, store
    _free(rt.device)
    return result


def _footprint(model, teacher) -> float:
    """GB of parameter storage, 4-bit constants included (get_memory_footprint leaves those out)."""
    return sum(storage_bytes(p) for m in (model, teacher) if m is not None for p in m.parameters()) / GB


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def summarise(steps: list[dict], mem: Memory, recipe, args, n_micro: int) -> dict:
    measured = [s for s in steps if s["measured"]] or steps
    keys = ("step_s", "rollout_s", "teacher_s", "judge_s", "forward_s", "backward_s", "optimizer_s")
    mean = {k: sum(s[k] for s in measured) / len(measured) for k in keys}
    mean["student_loss_s"] = mean["forward_s"] + mean["backward_s"]
    mean["other_s"] = mean["step_s"] - sum(mean[k] for k in keys[1:])  # prompt encoding, stats, syncs
    ro = recipe.rollout
    calls = 2 if args.separate_rollouts else 1  # generate calls per micro-batch (see step_variants)
    decode_steps = calls * ro.max_new_tokens * n_micro  # sequential decode steps per step
    tokens = sum(s["tokens_generated"] for s in measured) / len(measured)
    rollout_s = mean["rollout_s"]
    phases = {k: v for k, v in mem.peaks.items() if k not in ("load", "warmup")}  # the measured steps
    keys = {k for p in phases.values() for k in p}
    overall = {k: max(p.get(k, 0.0) for p in phases.values()) for k in keys}
    return {
        "mean": mean,
        "steps": steps,
        "memory": {"peak": overall, "by_phase": mem.peaks},
        "rollout": {
            "generate_calls_per_prompt": calls,
            "tokens_per_step": tokens,
            "decode_steps_per_step": decode_steps,
            "completion_len": sum(s["completion_len"] for s in measured) / len(measured),
            "all_full_length": all(s["completion_len"] == ro.max_new_tokens for s in measured),
            "per_sequence_tok_s": decode_steps / rollout_s if rollout_s else 0.0,
            "aggregate_tok_s": tokens / rollout_s if rollout_s else 0.0,
        },
    }


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_memory_speed", description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(ARCHS), default="7b", help="architecture (default: 7b)")
    p.add_argument("--recipe", default=str(REPO / "recipes" / "qwen2audio_lora.yaml"), help="recipe to load")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra recipe override, applied last (repeatable)")
    p.add_argument("--teacher", choices=("shared", "separate"), default="shared",
                   help="shared: adapters off on the one base (cordlite); separate: a second frozen copy")
    p.add_argument("--compare", action="store_true", help="run shared then separate and report the ratios")
    p.add_argument("--steps", type=int, default=2, help="measured steps (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default 1)")
    p.add_argument("--prompts-per-step", type=int, default=1, help="train.batch_size (default 1, see docstring)")
    p.add_argument("--audio-seconds", type=float, default=30.0, help="length of the spoken prompt (default 30)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--separate-rollouts", action="store_true",
                   help="the distillation and group rollouts in two generate calls (the former layout)")
    p.add_argument("--static-cache", action="store_true", help='generate with cache_implementation="static"')
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    p.add_argument("--cache", default=str(REPO / "cache" / "bench"), help="where the checkpoint and inputs live")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where results are written")
    p.add_argument("--prepare-only", action="store_true", help="build the checkpoint and inputs, then stop")
    p.add_argument("--weights-only", action="store_true",
                   help="load as the recipe does and report the weights' memory and bytes per decoded token (no steps; "
                        "runs on CPU for the 7B too)")
    p.add_argument("--estimate", action="store_true", help="print the 7B arithmetic memory estimate and stop")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.prompts_per_step < 1:
        p.error("--steps must be >= 1, --warmup >= 0, --prompts-per-step >= 1")
    if not 0 < args.audio_seconds <= 30:
        p.error("--audio-seconds must be in (0, 30]: Qwen2-Audio's encoder sees at most 30 s")
    return args


def run(args: argparse.Namespace) -> dict | None:
    from cordlite.recipe import load_recipe
    from cordlite.data import read_manifest

    if args.estimate:
        est = estimate_step_memory(QWEN2_AUDIO_7B)
        print(json.dumps({k: round(v, 3) for k, v in est.items()}, indent=2))
        return None
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda: torch sees no CUDA device; use --device cpu with --size tiny")
    if device == "cpu" and args.size == "7b" and not (args.prepare_only or args.weights_only):
        raise BenchmarkError("--size 7b needs an NVIDIA GPU (a 7B CORD step on CPU takes hours); run --size tiny "
                             "on CPU to check the script, --estimate for the arithmetic, or --prepare-only to build "
                             "the checkpoint")
    cache = Path(args.cache)
    ckpt = ensure_checkpoint(ARCHS[args.size], cache, progress=lambda m: print(m, file=sys.stderr, flush=True))
    n_prompts = (args.warmup + args.steps) * args.prompts_per_step
    manifest = write_inputs(cache, n_prompts, args.audio_seconds)
    if args.prepare_only:
        print(f"checkpoint: {ckpt}\ninputs: {manifest}")
        return None
    overrides = bench_overrides(ckpt, manifest, device, args.prompts_per_step, cache / "run") + list(args.overrides)
    if args.weights_only and device == "cpu":
        overrides.insert(0, "model.dtype=bfloat16")  # store what a GPU stores (CPU would default to fp32)
    recipe = load_recipe(args.recipe, overrides)
    if args.weights_only:
        return weights_report(recipe, args, device, overrides)
    ro = recipe.rollout
    if ro.share_rollouts or recipe.judge.mode != "rules" or recipe.train.micro_batch_size != 1:
        raise BenchmarkError("the benchmark runs the paper's layout: keep rollout.share_rollouts false, judge.mode "
                             "rules and train.micro_batch_size 1")
    examples = read_manifest(manifest)
    torch_device = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    bandwidth = copy_bandwidth(torch_device)  # before loading, so its buffers are not in any peak
    modes = ["shared", "separate"] if args.compare else [args.teacher]
    runs = {}
    for mode in modes:
        r = run_config(recipe, mode, args, examples)
        mean_context = max(s["audio_prompt_tokens"] for s in r["steps"]) + ro.max_new_tokens / 2
        kv_group = ro.group_size * mean_context * r["kv_bytes_per_position"]
        r["roofline"] = decode_roofline(r["weight_bytes_per_token"]["total"], bandwidth,
                                        r["rollout"]["per_sequence_tok_s"], kv_group)
        runs[mode] = r
    report = {
        "benchmark": "step_memory_speed", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.step_memory_speed " + shlex.join(args.argv),
        "size": args.size, "device": device_name(torch_device), "versions": versions(),
        "settings": {"recipe": os.path.relpath(args.recipe, REPO), "group_size": ro.group_size,
                     "max_new_tokens": ro.max_new_tokens, "audio_seconds": args.audio_seconds,
                     "prompts_per_step": recipe.train.batch_size, "lora_r": recipe.lora.r,
                     "quantization": recipe.quantization.mode, "kl_chunk_size": recipe.loss.kl_chunk_size,
                     "gradient_checkpointing": recipe.train.gradient_checkpointing, "steps": args.steps,
                     "warmup": args.warmup, "separate_rollouts": args.separate_rollouts,
                     "static_cache": args.static_cache, "compile": args.compile},
        "overrides": overrides, "bandwidth_gb_s": bandwidth / GB, "runs": runs,
    }
    if len(runs) == 2:
        a, b = runs["shared"], runs["separate"]
        report["ratios_separate_over_shared"] = {
            k: b["memory"]["peak"][k] / a["memory"]["peak"][k] for k in a["memory"]["peak"] if a["memory"]["peak"][k]}
        report["ratios_separate_over_shared"]["step_s"] = b["mean"]["step_s"] / a["mean"]["step_s"]
    if args.size == "7b":
        report["estimate_gb"] = estimate_step_memory(QWEN2_AUDIO_7B, new_tokens=ro.max_new_tokens,
                                                     group_size=ro.group_size, kl_chunk=recipe.loss.kl_chunk_size)
    tag = "_".join([args.size, device, "compare" if args.compare else args.teacher]
                   + [f for f, on in (("separate", args.separate_rollouts), ("static", args.static_cache),
                                      ("compile", args.compile)) if on])
    out = Path(args.out)
    write_text(out / f"step_memory_speed_{tag}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out / f"step_memory_speed_{tag}.md", markdown(report))
    report["paths"] = [str(out / f"step_memory_speed_{tag}.{ext}") for ext in ("json", "md")]
    return report


def weights_report(recipe, args, device: str, overrides: list[str]) -> dict:
    """The weights alone, loaded exactly as for the steps: storage by kind and bytes read per token."""
    from cordlite.models.lora import attach_lora, base_of, trainable_parameters
    from cordlite.models.load import load_base
    from cordlite.models.runtime import resolve_runtime

    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
    mem = Memory(rt.device)
    mem.reset()
    t0 = time.perf_counter()
    model, _ = load_base(recipe.model, recipe.quantization, rt)
    model = attach_lora(model, recipe.lora, rt, seed=recipe.train.seed)
    load_s = time.perf_counter() - t0
    mem.record("load")
    storage: dict[str, int] = {}
    for name, p in base_of(model).named_parameters():
        kind = ("lora" if "lora_" in name else "audio_tower+projector" if "audio_tower" in name
                or "multi_modal_projector" in name else "embed_tokens" if "embed_tokens" in name
                else "lm_head" if name.startswith("lm_head") else "language_model")
        storage[kind] = storage.get(kind, 0) + storage_bytes(p)
    report = {
        "benchmark": "step_memory_speed --weights-only", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.step_memory_speed " + shlex.join(args.argv), "size": args.size,
        "device": device_name(rt.device), "versions": versions(), "overrides": overrides, "load_s": load_s,
        "storage_gb": {k: v / GB for k, v in storage.items()}, "storage_total_gb": sum(storage.values()) / GB,
        "lora_params": sum(p.numel() for _, p in trainable_parameters(model)),
        "weight_bytes_per_token": weight_bytes_per_token(model),
        "kv_bytes_per_position": kv_bytes_per_position(model.config, 2),
        "memory_after_load": mem.peaks["load"],
    }
    tag = f"{args.size}_{device}_weights"
    out = Path(args.out)
    write_text(out / f"step_memory_speed_{tag}.json", json.dumps(report, indent=2, default=str) + "\n")
    lines = [f"# Weights as loaded ({args.size}, {report['device']})", "", f"Command: `{report['command']}`", "",
             "| part | GB |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in report["storage_gb"].items()]
    lines += [f"| total | {report['storage_total_gb']:.3f} |", "",
              f"Weight bytes read per decoded token: {report['weight_bytes_per_token']['total'] / GB:.3f} GB; "
              f"KV cache per position: {report['kv_bytes_per_position'] / 1e6:.3f} MB; "
              f"LoRA parameters: {report['lora_params']:,}.", ""]
    write_text(out / f"step_memory_speed_{tag}.md", "\n".join(lines))
    report["paths"] = [str(out / f"step_memory_speed_{tag}.{ext}") for ext in ("json", "md")]
    report["markdown"] = "\n".join(lines)
    return report


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from cordlite.schema import ConfigError

    try:
        report = run(args)
    except (BenchmarkError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if report is not None:
        print(report.get("markdown") or markdown(report))
        print("written: " + ", ".join(report["paths"]), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
