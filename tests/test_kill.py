"""SIGKILL at the worst moments, then resume: every step is logged exactly once, nothing
half-written stays, and the final adapter is the one an unbroken run makes.

Each run is a real `cordlite train` process that SIGKILLs itself at a chosen point (the point is
patched in by a small launcher, not by a hook in cordlite): in a rollout, after an optimizer step
before its metrics row, in the middle of writing a checkpoint, just before a finished checkpoint
is renamed into place, and while an old checkpoint is being deleted. The unbroken run is the
same launcher without a kill, with the same thread count, so the two must agree to the bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import tiny_raw

REPO = Path(__file__).resolve().parents[1]

LAUNCHER = r'''
import os, signal, sys

point, nth, recipe, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "resume"
calls = [0]


def killing(fn, counts=lambda args: True):
    """fn, except that its nth counted call SIGKILLs the process first."""
    def wrapped(*args, **kwargs):
        if counts(args):
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped


import safetensors.torch
import cordlite.train.checkpoint as checkpoint
import cordlite.train.optimizer_step as optimizer_step

if point == "rollout":          # inside a step, before its loss
    optimizer_step.collect = killing(optimizer_step.collect)
elif point == "optimizer":      # after optimizer.step(), before the step's metrics row
    optimizer_step.merge_stats = killing(optimizer_step.merge_stats)
elif point == "mid_write":      # a checkpoint's temporary folder holds the adapter, not the rest
    safetensors.torch.save_file = killing(safetensors.torch.save_file,
                                          lambda args: str(args[1]).endswith("optimizer.safetensors"))
elif point == "before_rename":  # the temporary folder is complete, not yet in place
    checkpoint.replace_dir = killing(checkpoint.replace_dir)
elif point == "deleting":       # an old checkpoint renamed away, its removal under way
    checkpoint.shutil.rmtree = killing(checkpoint.shutil.rmtree, lambda args: ".del-" in str(args[0]))

from cordlite.cli import main

sys.argv = ["cordlite", "train", recipe] + (["--resume"] if resume else [])
main()
'''

STEPS = 5


def _run(tmp: Path, recipe: Path, point: str, nth: int, resume: bool) -> subprocess.CompletedProcess:
    launcher = tmp / "launch.py"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(launcher), point, str(nth), str(recipe), "resume" if resume else "new"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_at_five_points_then_resume_equals_an_unbroken_run(tiny_model_dir, tiny_manifest, tmp_path):
    from safetensors.torch import load_file

    def recipe(out: Path) -> Path:
        raw = tiny_raw(tiny_model_dir, tiny_manifest, out, steps=STEPS, output={"keep_last": 2})
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    killed, unbroken = recipe(tmp_path / "killed"), recipe(tmp_path / "unbroken")
    # (point, which call of it kills, what the run directory holds afterwards)
    plan = [("rollout", 3, "steps 1-2 done and saved; killed in step 3's rollout"),
            ("optimizer", 1, "step 3's optimizer step taken, its row not written"),
            ("mid_write", 3, "step 4 logged, its checkpoint half-written in a temporary folder"),
            ("before_rename", 1, "step 4 again: its checkpoint complete but not in place"),
            ("deleting", 1, "step 4 in place, the old step 2 renamed away and half-deleted")]
    for i, (point, nth, what) in enumerate(plan):
        res = _run(tmp_path, killed, point, nth, resume=i > 0)
        assert res.returncode == -signal.SIGKILL, f"{point}: {what}\n{res.stderr[-3000:]}"
    ckpts = tmp_path / "killed" / "checkpoints"
    assert any(p.name.startswith(".") for p in ckpts.iterdir())  # the kills did leave temporary folders
    done = _run(tmp_path, killed, "none", 0, resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left by a run that was killed" in done.stderr
    assert _run(tmp_path, unbroken, "none", 0, resume=False).returncode == 0

    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    ref = [json.loads(line) for line in (tmp_path / "unbroken" / "metrics.jsonl").read_text().splitlines()]
    assert [r["prompt_ids"] for r in rows] == [r["prompt_ids"] for r in ref]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
    a = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "unbroken" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # Nothing half-written is left, and every checkpoint kept is whole.
    assert sorted(p.name for p in ckpts.iterdir()) == [f"step_{STEPS - 1:06d}", f"step_{STEPS:06d}"]
    for step_dir in ckpts.iterdir():
        for name in ("optimizer.safetensors", "rng.safetensors", "adapter/adapter_model.safetensors"):
            load_file(str(step_dir / name))
        json.loads((step_dir / "trainer_state.json").read_text())
