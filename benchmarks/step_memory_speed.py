"""Seconds and peak memory of the trainer's own CORD optimizer step at Qwen2-Audio-7B size, by phase.

    python -m benchmarks.step_memory_speed --compare              # NVIDIA GPU: shared base vs separate teacher
    python -m benchmarks.step_memory_speed --size mid --device cpu --layouts   # CPU: this arrangement vs the former
    python -m benchmarks.step_memory_speed --estimate             # the 7B step on an RTX 4090, term by term
    python -m benchmarks.step_memory_speed --prepare-only         # only build the random checkpoint

What it runs: recipes/qwen2audio_lora.yaml (NF4 base, LoRA r 16, N = 4 group rollouts at T = 1.5 plus
one distillation rollout at T = 1.0, 200 new tokens, 4 prompts an optimizer step in micro-batches of
1, gradient checkpointing, rollout.kv_budget_gb 6) on a checkpoint of the model's architecture with
random weights (benchmarks/random_checkpoint.py: 7b, or the mid-size CPU model), through the trainer's
own setup and step (cordlite.train.trainer.setup, cordlite.train.optimizer_step.run_step): the
reference prefetch, the rollouts, the judge, the teacher's log-probs, the gradient pass, the
optimizer. The end tokens are suppressed, so every rollout and reference runs the full
max_new_tokens. Spoken prompts are seeded noise of --audio-seconds.

Configurations, each loaded afresh and run for --warmup + --steps steps:
  --teacher separate   a second frozen copy of the base is the teacher (benchmarks/step_variants.py)
  --compare            shared and separate, side by side with their ratios
  --layouts            this release's step and the former arrangement (step_variants.run_step_former),
                       side by side, with the check that both sample the same rollouts and get equal losses

Reported (JSON + Markdown in --out, written atomically): seconds per phase (reference prefetch,
rollouts, judge, teacher, gradient pass, optimizer) and per step, peak memory per phase (CUDA
allocated; peak RSS on CPU), rollout tokens/s, generate calls and their largest KV cache against the
budget, model FLOPs and MFU, and the decode roofline with the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
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
from benchmarks.random_checkpoint import ARCHS, ensure_checkpoint
from benchmarks.roofline import GB, copy_bandwidth, decode_roofline, storage_bytes, weight_bytes_per_token
from benchmarks.step_report import device_name, markdown, versions, write_text

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
QUESTION = ("A train leaves the station at {h} o'clock travelling at {v} kilometres per hour. A second train leaves "
            "the same station {d} hours later on the same track at {w} kilometres per hour. At what time does the "
            "second train catch up with the first, and how far from the station are they then?")
PHASES = ("references_s", "rollout_s", "judge_s", "teacher_s", "forward_s", "backward_s", "optimizer_s")
SIZE_DEFAULTS = {"7b": {"audio_seconds": 30.0, "new_tokens": 200}, "mid": {"audio_seconds": 10.0, "new_tokens": 64},
                 "tiny": {"audio_seconds": 30.0, "new_tokens": 200}}


class BenchmarkError(RuntimeError):
    """A setting the benchmark cannot run with; the message says which and what to do."""


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


def bench_overrides(ckpt: Path, manifest: Path, device: str, prompts_per_step: int, run_dir: Path,
                    new_tokens: int) -> list[str]:
    """What the benchmark changes in the recipe: the model and data paths, the batch, and what CPU needs."""
    out = [f"model.name_or_path={ckpt}", f"data.train_manifest={manifest}", "data.max_audio_seconds=30",
           f"train.batch_size={prompts_per_step}", "train.micro_batch_size=1", f"output.dir={run_dir}",
           f"rollout.max_new_tokens={new_tokens}", "output.progress=false", "data.shuffle=false"]
    if device == "cpu":
        out += ["model.device=cpu", "model.dtype=float32", "train.mixed_precision='no'",
                "quantization.compute_dtype=float32"]
    else:
        out += ["model.device=cuda"]
    return out


# --------------------------------------------------------------------------- one configuration


def rows_by_prompt(offset: int, c) -> dict[int, list[list[int]]]:
    """Each prompt's rollouts as token lists (valid tokens only): its distillation row, then its group."""
    out: dict[int, list[list[int]]] = {}
    for ids, mask, src in zip(c.completion_ids.tolist(), c.completion_mask.tolist(), c.source.tolist()):
        out.setdefault(offset + src, []).append([t for t, m in zip(ids, mask) if m])
    return out


def run_config(recipe, layout: str, teacher_mode: str, args) -> dict:
    """Load the trainer's parts afresh, run warm-up + measured steps, and return the figures."""
    import shutil

    from benchmarks.step_variants import load_teacher_copy, run_step_former, separate_teacher
    from cordlite.objective.references import Tokens
    from cordlite.train.distributed import Dist
    from cordlite.train.optimizer_step import run_step
    from cordlite.train.trainer import setup

    run_dir = Path(recipe.output.dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # no references cached from another configuration
    run_dir.mkdir(parents=True)
    device = torch.device("cuda", 0) if recipe.model.device == "cuda" else torch.device("cpu")
    mem = Memory(device)
    mem.reset()
    t0 = time.perf_counter()
    parts, _ = setup(recipe, Dist(), run_dir)
    teacher = load_teacher_copy(recipe, parts.rt) if teacher_mode == "separate" else None
    load_s = time.perf_counter() - t0
    mem.record("load")
    after_load = mem.current()
    t = parts.tokens  # the end tokens suppressed too: every rollout runs the full max_new_tokens (paper: 200)
    parts.tokens = Tokens(t.end_ids, t.pad_id, sorted(set(t.blocked_ids) | set(t.end_ids)))
    state = {"measured": False, "rollouts": {}}

    def phase(name: str, data) -> None:
        # The prefetch runs in the first step only (64 prompts ahead): its peak is kept even in warm-up.
        mem.record(name if state["measured"] or name == "prefetch" else "warmup")
        mem.reset()
        if name == "rollouts":
            state["rollouts"].update(rows_by_prompt(*data))

    parts.phase = phase
    step_fn = run_step if layout == "now" else run_step_former
    steps = []
    with separate_teacher(teacher) if teacher is not None else contextlib.nullcontext():
        for step in range(args.warmup + args.steps):
            state["measured"], state["rollouts"] = step >= args.warmup, {}
            mem.reset()
            row = step_fn(parts, step)
            row.update(measured=state["measured"], rollouts=state["rollouts"])
            steps.append(row)
            print(f"[{layout}, {teacher_mode}] step {step + 1}/{args.warmup + args.steps}"
                  f"{'' if state['measured'] else ' (warm-up)'}: {row['step_seconds']:.2f} s, rollouts "
                  f"{row['rollout_s']:.2f} s, gradient pass {row['forward_s'] + row['backward_s']:.2f} s",
                  file=sys.stderr, flush=True)
    result = summarise(steps, mem, parts)
    result.update(layout=layout, teacher=teacher_mode, load_s=load_s, after_load=after_load,
                  references=dict(parts.store.answers),
                  weight_bytes_per_token=weight_bytes_per_token(parts.model),
                  lora_params=sum(p.numel() for p in parts.params), model_footprint_gb=_footprint(parts.model, teacher))
    del parts, teacher
    _free(device)
    return result


def _footprint(model, teacher) -> float:
    """GB of parameter storage, 4-bit constants included (get_memory_footprint leaves those out)."""
    return sum(storage_bytes(p) for m in (model, teacher) if m is not None for p in m.parameters()) / GB


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def summarise(steps: list[dict], mem: Memory, parts) -> dict:
    measured = [s for s in steps if s["measured"]] or steps
    mean = {k: sum(s.get(k, 0.0) for s in measured) / len(measured) for k in (*PHASES, "step_seconds")}
    mean["gradient_s"] = mean["forward_s"] + mean["backward_s"]
    # The reference prefetch runs once per block of steps (64 prompts ahead): its time, spread over them.
    from cordlite.train.optimizer_step import REFERENCE_BATCH

    block = max(1, REFERENCE_BATCH // parts.per_rank)
    mean["prefetch_block_s"] = max(s.get("references_s", 0.0) for s in steps)
    mean["references_s"] = mean["prefetch_block_s"] / block
    mean["step_with_prefetch_s"] = mean["step_seconds"] - sum(s.get("references_s", 0.0) for s in measured) / len(
        measured) + mean["references_s"]
    phases = {k: v for k, v in mem.peaks.items() if k not in ("load", "warmup")}
    keys = {k for p in phases.values() for k in p}
    ro = parts.recipe.rollout
    tokens = sum(s["tokens_generated"] for s in measured) / len(measured)
    decode_steps = sum(s.get("generate_calls", 0) for s in measured) / len(measured) * ro.max_new_tokens
    return {
        "mean": mean,
        "steps": steps,
        "memory": {"peak": {k: max(p.get(k, 0.0) for p in phases.values()) for k in keys}, "by_phase": mem.peaks},
        "kv_budget_gb": ro.kv_budget_gb,
        "rollout": {
            "tokens_per_step": tokens, "decode_steps_per_step": decode_steps,
            "generate_calls": sum(s.get("generate_calls", 0) for s in measured) / len(measured),
            "kv_cache_gb": max(s.get("kv_cache_gb", 0.0) for s in measured),
            "reference_kv_cache_gb": max((s.get("reference_kv_cache_gb", 0.0) for s in steps), default=0.0),
            "per_sequence_tok_s": decode_steps / mean["rollout_s"] if mean["rollout_s"] else 0.0,
            "aggregate_tok_s": tokens / mean["rollout_s"] if mean["rollout_s"] else 0.0,
        },
        "tflops_per_step": sum(s["tflops"] for s in measured) / len(measured),
        "mfu": measured[-1].get("mfu"),
        "losses": [s["loss"] for s in measured],
    }


def sameness(a: dict, b: dict) -> dict:
    """Whether two configurations sampled the same rollouts at every step, and how far their losses are."""
    same = all(sa["rollouts"] == sb["rollouts"] for sa, sb in zip(a["steps"], b["steps"]))
    diffs = [abs(sa["loss"] - sb["loss"]) / max(abs(sa["loss"]), 1e-12) for sa, sb in zip(a["steps"], b["steps"])]
    return {"identical_rollouts": same, "identical_references": a["references"] == b["references"],
            "references": len(a["references"]), "max_relative_loss_difference": max(diffs),
            "steps": len(diffs), "rows_per_step": sum(len(v) for v in a["steps"][0]["rollouts"].values())}


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_memory_speed", description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(ARCHS), default="7b", help="architecture (default: 7b)")
    p.add_argument("--recipe", default=str(REPO / "recipes" / "qwen2audio_lora.yaml"), help="recipe to load")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra recipe override, applied last (repeatable)")
    p.add_argument("--teacher", choices=("shared", "separate"), default="shared",
                   help="shared: adapters off on the one base (cordlite); separate: a second frozen copy")
    p.add_argument("--compare", action="store_true", help="shared and separate teacher, side by side")
    p.add_argument("--layouts", action="store_true", help="this step and the former arrangement, side by side")
    p.add_argument("--steps", type=int, default=2, help="measured steps (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (default 1)")
    p.add_argument("--prompts-per-step", type=int, default=4, help="train.batch_size (default 4, the recipe's)")
    p.add_argument("--audio-seconds", type=float, default=None, help="spoken prompt length (7b: 30, mid: 10)")
    p.add_argument("--new-tokens", type=int, default=None, help="rollout.max_new_tokens (7b: 200, mid: 64)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--cache", default=str(REPO / "cache" / "bench"), help="where the checkpoint and inputs live")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where results are written")
    p.add_argument("--prepare-only", action="store_true", help="build the checkpoint and inputs, then stop")
    p.add_argument("--weights-only", action="store_true",
                   help="load as the recipe does and report the weights' memory and bytes per decoded token (no steps; "
                        "runs on CPU for the 7B too)")
    p.add_argument("--estimate", action="store_true", help="print the 7B step estimate (benchmarks/step_estimate.py)")
    p.add_argument("--host-ms", type=float, default=45.0, help="--estimate: host ms per decode step (default 45)")
    p.add_argument("--gpu", choices=("rtx4090", "h100"), default="rtx4090", help="--estimate: the GPU (default rtx4090)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.prompts_per_step < 1:
        p.error("--steps must be >= 1, --warmup >= 0, --prompts-per-step >= 1")
    args.audio_seconds = args.audio_seconds or SIZE_DEFAULTS[args.size]["audio_seconds"]
    args.new_tokens = args.new_tokens or SIZE_DEFAULTS[args.size]["new_tokens"]
    if not 0 < args.audio_seconds <= 30:
        p.error("--audio-seconds must be in (0, 30]: Qwen2-Audio's encoder sees at most 30 s")
    if args.compare and args.layouts:
        p.error("--compare and --layouts: one comparison at a time")
    return args


def run(args: argparse.Namespace) -> dict | None:
    from cordlite.recipe import load_recipe

    load_at_start = os.getloadavg()[0]  # other work on the machine skews every timing: say how much there was
    if args.estimate:
        from benchmarks.step_estimate import GPUS, estimate, markdown as estimate_markdown

        text = estimate_markdown(args.host_ms, GPUS[args.gpu])
        report = {"benchmark": "step_memory_speed --estimate", "markdown": text,
                  "former": estimate("former", gpu=GPUS[args.gpu], host_ms=args.host_ms),
                  "now": estimate("now", gpu=GPUS[args.gpu], host_ms=args.host_ms)}
        out = Path(args.out)
        write_text(out / f"step_estimate_{args.gpu}.json", json.dumps(report, indent=2) + "\n")
        write_text(out / f"step_estimate_{args.gpu}.md", text)
        report["paths"] = [str(out / f"step_estimate_{args.gpu}.{ext}") for ext in ("json", "md")]
        return report
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda: torch sees no CUDA device; use --device cpu with --size mid or tiny")
    if device == "cpu" and args.size == "7b" and not (args.prepare_only or args.weights_only):
        raise BenchmarkError("--size 7b needs an NVIDIA GPU (a 7B CORD step on CPU takes hours); run --size mid or "
                             "--size tiny on CPU, --estimate for the arithmetic, or --prepare-only to build "
                             "the checkpoint")
    cache = Path(args.cache)
    ckpt = ensure_checkpoint(ARCHS[args.size], cache, progress=lambda m: print(m, file=sys.stderr, flush=True))
    n_prompts = max(64, (args.warmup + args.steps) * args.prompts_per_step)
    manifest = write_inputs(cache, n_prompts, args.audio_seconds)
    if args.prepare_only:
        print(f"checkpoint: {ckpt}\ninputs: {manifest}")
        return None
    overrides = bench_overrides(ckpt, manifest, device, args.prompts_per_step, cache / "run", args.new_tokens)
    overrides += list(args.overrides)
    if args.weights_only and device == "cpu":
        overrides.insert(0, "model.dtype=bfloat16")  # store what a GPU stores (CPU would default to fp32)
    recipe = load_recipe(args.recipe, overrides)
    if args.weights_only:
        return weights_report(recipe, args, device, overrides)
    if recipe.judge.mode != "rules" or recipe.rollout.share_rollouts:
        raise BenchmarkError("the benchmark runs the paper's layout: keep rollout.share_rollouts false and judge.mode "
                             "rules")
    torch_device = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    bandwidth = copy_bandwidth(torch_device)  # before loading, so its buffers are not in any peak
    configs = ([("now", "shared"), ("former", "shared")] if args.layouts else
               [("now", "shared"), ("now", "separate")] if args.compare else [("now", args.teacher)])
    runs = {}
    for layout, teacher in configs:
        r = run_config(recipe, layout, teacher, args)
        kv_step = r["rollout"]["kv_cache_gb"] * GB / 2  # the call's cache read per step, on average over its fill
        r["roofline"] = decode_roofline(r["weight_bytes_per_token"]["total"], bandwidth,
                                        r["rollout"]["per_sequence_tok_s"], kv_step)
        runs[f"{layout}, {teacher}"] = r
    report = {
        "benchmark": "step_memory_speed", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.step_memory_speed " + shlex.join(args.argv),
        "size": args.size, "device": device_name(torch_device), "versions": versions(),
        "load_average_start": load_at_start,
        "settings": {"recipe": os.path.relpath(args.recipe, REPO), "group_size": recipe.rollout.group_size,
                     "max_new_tokens": recipe.rollout.max_new_tokens, "audio_seconds": args.audio_seconds,
                     "prompts_per_step": recipe.train.batch_size, "micro_batch_size": recipe.train.micro_batch_size,
                     "lora_r": recipe.lora.r, "quantization": recipe.quantization.mode,
                     "gradient_checkpointing": recipe.train.gradient_checkpointing,
                     "kv_budget_gb": recipe.rollout.kv_budget_gb, "steps": args.steps, "warmup": args.warmup,
                     "threads": torch.get_num_threads()},
        "overrides": overrides, "bandwidth_gb_s": bandwidth / GB, "runs": runs,
    }
    if args.layouts:
        report["sameness"] = sameness(runs["now, shared"], runs["former, shared"])
    tag = "_".join([args.size, device, "layouts" if args.layouts else "compare" if args.compare else args.teacher])
    for r in runs.values():  # the token lists and answers are for the sameness check, not the record
        r.pop("references", None)
        for s in r["steps"]:
            s.pop("rollouts", None)
    out = Path(args.out)
    write_text(out / f"step_memory_speed_{tag}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out / f"step_memory_speed_{tag}.md", markdown(report))
    report["paths"] = [str(out / f"step_memory_speed_{tag}.{ext}") for ext in ("json", "md")]
    return report


def weights_report(recipe, args, device: str, overrides: list[str]) -> dict:
    """The weights alone, loaded exactly as for the steps: storage by kind and bytes read per token."""
    from cordlite.models.load import load_base
    from cordlite.models.lora import attach_lora, base_of, trainable_parameters
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
        "weight_bytes_per_token": weight_bytes_per_token(model), "memory_after_load": mem.peaks["load"],
    }
    tag = f"{args.size}_{device}_weights"
    out = Path(args.out)
    write_text(out / f"step_memory_speed_{tag}.json", json.dumps(report, indent=2, default=str) + "\n")
    lines = [f"# Weights as loaded ({args.size}, {report['device']})", "", f"Command: `{report['command']}`", "",
             "| part | GB |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in report["storage_gb"].items()]
    lines += [f"| total | {report['storage_total_gb']:.3f} |", "",
              f"Weight bytes read per decoded token: {report['weight_bytes_per_token']['total'] / GB:.3f} GB; "
              f"LoRA parameters: {report['lora_params']:,}.", ""]
    write_text(out / f"step_memory_speed_{tag}.md", "\n".join(lines))
    report["paths"] = [str(out / f"step_memory_speed_{tag}.{ext}") for ext in ("json", "md")]
    report["markdown"] = "\n".join(lines)
    return report


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from cordlite.models.kv_cache import BudgetError
    from cordlite.schema import ConfigError

    try:
        report = run(args)
    except (BenchmarkError, ConfigError, BudgetError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if report is not None:
        print(report.get("markdown") or markdown(report))
        print("written: " + ", ".join(report["paths"]), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
