"""The step benchmark's report: versions, device, the Markdown table, atomic writes.

Used by benchmarks/step_memory_speed.py; the table layout is the one in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

GB = 1e9


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["cuda"] = torch.version.cuda
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)} ({torch.cuda.get_device_properties(device).total_memory / GB:.1f} GB)"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def fmt(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(report: dict) -> str:
    """The report as a Markdown table: one column per configuration, and the ratio second / first."""
    runs = report["runs"]
    names = list(runs)
    cuda = report["device"].startswith("cuda")
    two = len(names) == 2
    lines = [f"# CORD optimizer step: memory and speed ({report['size']}, {report['device']})", "",
             f"Command: `{report['command']}`  ", f"Created: {report['created']}, load average at the start "
             f"{report.get('load_average_start', 0):.2f}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in report["settings"].items()), "",
             "| | " + " | ".join(names) + (f" | {names[1]} / {names[0]} |" if two else " |"),
             "|---|" + "---|" * (len(names) + (1 if two else 0))]

    def row(label, get, digits=2, ratio=True):
        vals = [get(runs[n]) for n in names]
        cells = [fmt(v, digits) for v in vals]
        if two:
            cells.append(fmt(vals[1] / vals[0], 2) if ratio and vals[0] and vals[1] is not None else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    unit, key = ("allocated, GB", "allocated_gb") if cuda else ("peak RSS, GB", "rss_gb")
    row(f"peak memory of the step ({unit})", lambda r: r["memory"]["peak"].get(key))
    for phase in ("prefetch", "rollouts", "teacher", "gradient", "optimizer"):
        row(f"  {phase}", lambda r, ph=phase: r["memory"]["by_phase"].get(ph, {}).get(key))
    row(f"after load ({unit})", lambda r: r["after_load"].get(key))
    row("weights as loaded, LoRA included (GB)", lambda r: r["model_footprint_gb"], 3)
    row("optimizer step, the prefetch spread over its block (s)", lambda r: r["mean"]["step_with_prefetch_s"], 3)
    row("  reference prefetch (s a step; the block's call in the first step)", lambda r: r["mean"]["references_s"], 3)
    row("  rollouts (s)", lambda r: r["mean"]["rollout_s"], 3)
    row("  judge (s)", lambda r: r["mean"]["judge_s"], 3)
    row("  teacher log-probs (s)", lambda r: r["mean"]["teacher_s"], 3)
    row("  gradient pass, forward + backward (s)", lambda r: r["mean"]["gradient_s"], 3)
    row("  optimizer (s)", lambda r: r["mean"]["optimizer_s"], 3)
    row("rollout generate calls per step", lambda r: r["rollout"]["generate_calls"], 0, ratio=False)
    row("largest rollout KV cache (GB)", lambda r: r["rollout"]["kv_cache_gb"], 3)
    row("largest reference KV cache (GB)", lambda r: r["rollout"]["reference_kv_cache_gb"], 3)
    row("rollout tokens per step", lambda r: r["rollout"]["tokens_per_step"], 0, ratio=False)
    row("rollout tokens/s", lambda r: r["rollout"]["aggregate_tok_s"], 1)
    row("decode steps/s", lambda r: r["rollout"]["per_sequence_tok_s"], 2)
    row("weight-read bound, with the KV cache (steps/s)", lambda r: r["roofline"]["bound_steps_per_s_with_kv"], 1,
        ratio=False)
    row("model TFLOP per step", lambda r: r["tflops_per_step"], 2, ratio=False)
    row("MFU", lambda r: r["mfu"], 3)
    lines += ["", "Reference prefetch: " + ", ".join(f"{n} {runs[n]['mean']['prefetch_block_s']:.2f} s for its block"
                                                   for n in names) + ".",
              f"KV budget per call: {report['settings'].get('kv_budget_gb')} GB. Measured copy bandwidth: "
              f"{report['bandwidth_gb_s']:.1f} GB/s. GB = 1e9 bytes."]
    same = report.get("sameness")
    if same:
        lines.append(f"Same rollouts in both ({same['rows_per_step']} rows a step, {same['steps']} steps): "
                     f"{'yes, token for token' if same['identical_rollouts'] else 'NO'}; the same greedy reference "
                     f"answers ({same['references']}): {'yes' if same['identical_references'] else 'NO'}; losses "
                     f"differ by at most {same['max_relative_loss_difference']:.1e} (relative).")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
