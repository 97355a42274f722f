"""Steps per second of a CORD run with the audio encoder once per prompt, against once per row.

    python -m benchmarks.encode_once --testbed cache/testbed --steps 12 --out benchmarks/results/encode_once

Runs recipes/testbed_cord.yaml on a built testbed twice, one after the other in this process, with
`rollout.encode_audio_once` false (the model's own forward: the encoder runs for every rollout row
and again in the gradient pass) and true (once per prompt and phase; cordlite.models.audio_view),
and reads each run's metrics.jsonl (the runs go to a temporary folder). The first step of each run
is left out (warm-up). Writes OUT/results.json and OUT/results.md; the losses of the two runs are printed side by side, since the
two paths compute the same numbers (tests/test_audio_view.py checks it exactly on one step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def run(testbed: str, once: bool, steps: int, out: Path, threads: int) -> dict:
    import torch
    import yaml

    from cordlite.recipe import recipe_from_dict
    from cordlite.train.trainer import train

    torch.set_num_threads(threads)
    raw = yaml.safe_load(Path("recipes/testbed_cord.yaml").read_text(encoding="utf-8"))
    run_dir = out / ("once" if once else "per_row")
    recipe = recipe_from_dict(raw, source="recipes/testbed_cord.yaml", overrides=[
        f"model.name_or_path={Path(testbed) / 'model'}", f"data.train_manifest={Path(testbed) / 'data' / 'cord.jsonl'}",
        f"train.max_steps={steps}", f"output.dir={run_dir}", f"output.save_every={steps}", "output.progress=false",
        f"rollout.encode_audio_once={str(once).lower()}"])
    t0 = time.perf_counter()
    train(recipe, overwrite=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = rows[1:]
    per_step = [r["step_seconds"] for r in timed]
    return {"encode_audio_once": once, "steps": len(rows), "wall_seconds": round(wall, 1),
            "step_seconds_mean": round(statistics.mean(per_step), 3),
            "steps_per_second": round(1.0 / statistics.mean(per_step), 3),
            "rollout_s_mean": round(statistics.mean(r["rollout_s"] for r in timed), 3),
            "forward_s_mean": round(statistics.mean(r["forward_s"] for r in timed), 3),
            "losses": [round(r["loss"], 6) for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", default="cache/testbed")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/encode_once")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cordlite-encode-once-") as tmp:  # the runs themselves are not kept
        results = [run(args.testbed, once, args.steps, Path(tmp), args.threads) for once in (False, True)]
    before, after = results
    record = {"runs": results, "speedup": round(after["steps_per_second"] / before["steps_per_second"], 2),
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform(),
                          "load_average_start": load}}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["| encoder | steps/s | s/step | rollout s | gradient pass s |", "|---|---|---|---|---|"]
    for r in results:
        name = "once per prompt (encode_audio_once: true)" if r["encode_audio_once"] else "every row (false)"
        lines.append(f"| {name} | {r['steps_per_second']:.3f} | {r['step_seconds_mean']:.2f} | "
                     f"{r['rollout_s_mean']:.2f} | {r['forward_s_mean']:.2f} |")
    lines.append(f"\nSpeed-up {record['speedup']}x; {args.steps} steps each (first left out), {args.threads} threads, "
                 f"load {load:.2f} at the start.")
    lines.append(f"Losses per step, every row: {before['losses']}\nLosses per step, once: {after['losses']}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
