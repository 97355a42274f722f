"""Seconds per CORD step on the testbed, by phase: one commit's code against another's.

    python -m benchmarks.cord_step_speed --testbed cache/testbed --steps 12 --threads 1 --batch-size 4 \
        --label "this commit" --out benchmarks/results/cord_step_speed/new.json
    # the same in a checkout of an older commit (git worktree add /tmp/old COMMIT), then:
    python -m benchmarks.cord_step_speed --table benchmarks/results/cord_step_speed/*.json

Runs recipes/testbed_cord.yaml on a built testbed for --steps steps (the first two left out:
warm-up) with the frame store of the cord split when the code has one (data.frames; the
older code runs its encoder), and reads the run's metrics.jsonl: step seconds and the phases the
trainer times (rollout, teacher, judge, gradient pass, optimizer, reference prefetch). The run
itself goes to a temporary folder. Only the public training API is used, so an older checkout runs
the same file (copy it there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

PHASES = ("rollout_s", "teacher_s", "judge_s", "forward_s", "optimizer_s", "references_s")


def run(testbed: str, steps: int, threads: int, batch_size: int) -> dict:
    import torch
    import yaml

    from cordlite.recipe import recipe_from_dict
    from cordlite.train.trainer import train

    torch.set_num_threads(threads)
    raw = yaml.safe_load(Path("recipes/testbed_cord.yaml").read_text(encoding="utf-8"))
    frames = Path(testbed) / "frames" / "cord.safetensors"
    with tempfile.TemporaryDirectory(prefix="cordlite-step-speed-") as tmp:
        overrides = [f"model.name_or_path={Path(testbed) / 'model'}",
                     f"data.train_manifest={Path(testbed) / 'data' / 'cord.jsonl'}",
                     f"train.max_steps={steps}", f"train.batch_size={batch_size}",
                     f"train.micro_batch_size={batch_size}", "optim.warmup_steps=1",
                     f"output.dir={tmp}/run", f"output.save_every={steps}", "output.progress=false"]
        from cordlite.config import DataConfig

        if "frames" in DataConfig.__dataclass_fields__ and frames.is_file():
            overrides.append(f"data.frames={frames}")
        recipe = recipe_from_dict(raw, source="recipes/testbed_cord.yaml", overrides=overrides)
        t0 = time.perf_counter()
        train(recipe, overwrite=True)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    timed = rows[2:]
    out = {"steps": len(rows), "timed_steps": len(timed), "wall_seconds": round(wall, 1),
           "step_seconds": round(statistics.mean(r["step_seconds"] for r in timed), 3),
           "frames_store": any(o.startswith("data.frames=") for o in overrides)}
    for k in PHASES:
        if all(k in r for r in timed):
            out[k] = round(statistics.mean(r[k] for r in timed), 3)
    return out


def table(paths: list[str]) -> str:
    records = [json.loads(Path(p).read_text()) for p in paths]
    lines = ["| code | batch | s/step | steps/s | rollout s | teacher s | judge s | gradient pass s | references s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        m = r["result"]
        cells = [f"{m.get(k):.3f}" if k in m else "-" for k in ("rollout_s", "teacher_s", "judge_s", "forward_s",
                                                               "references_s")]
        lines.append(f"| {r['label']} | {r['batch_size']} | {m['step_seconds']:.2f} | {1 / m['step_seconds']:.2f} | "
                     + " | ".join(cells) + " |")
    m0 = records[0]["machine"]
    lines.append(f"\n{records[0]['threads']} torch thread(s), {records[0]['steps']} steps each (the first two left out), "
                 f"{m0['processor']}, {m0['cpu_count']} cores; load at the start: "
                 + ", ".join(f"{r['label']} {r['machine']['load_average_start']:.2f}" for r in records) + ".")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", default="cache/testbed")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--label", default=None, help="Name of the code measured (default: its git commit).")
    ap.add_argument("--out", default=None, help="JSON file for this measurement.")
    ap.add_argument("--table", nargs="+", default=None, help="Print the table of these measurements instead.")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()[0]
    result = run(args.testbed, args.steps, args.threads, args.batch_size)
    record = {"label": args.label or commit, "commit": commit, "batch_size": args.batch_size, "steps": args.steps,
              "threads": args.threads, "result": result,
              "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "platform": platform.platform(), "load_average_start": load}}
    text = json.dumps(record, indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
