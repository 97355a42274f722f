"""The run folder: who may write it, what a start would do to it, and whether `--resume` resumes the
same run.

    with run_lock(run_dir, dist):                       # one writer; a second is refused with its PID
        existing, identity = start(recipe, dist, run_dir, resume, overwrite)

A folder holding a run's results (metrics rows, an adapter, checkpoints) is never started over
without `--overwrite`, nor resumed from nothing; `--resume` takes the newest intact checkpoint
(cordlite.train.checkpoint.intact_checkpoint) and refuses a recipe that changes what the run is
(cordlite.train.identity).
"""

from __future__ import annotations

import json
import shutil
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cordlite.config import Recipe
from cordlite.lock import LockError, writer_lock
from cordlite.train.checkpoint import CheckpointError, clean_checkpoints, intact_checkpoint, unmarked_steps
from cordlite.train.distributed import Dist
from cordlite.schema import flatten
from cordlite.train.identity import SAFE, differences, run_identity, safe_changes


class TrainError(RuntimeError):
    """A problem with the run directory or state, with what to do about it."""


RESULTS = ("metrics.jsonl", "adapter", "checkpoints", "reference_answers.jsonl", "skipped_rows.jsonl", "config.yaml",
           "runtime.json", "judge_cache.jsonl", "tensorboard", "wandb")  # what `--overwrite` removes: the run's own


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(recipe: Recipe) -> None:
    """output.dir must not be the base model's folder (or inside it) nor the manifest's own folder."""
    out = Path(recipe.output.dir).expanduser().resolve()
    model = Path(recipe.model.name_or_path).expanduser()
    if model.is_dir() and _inside(out, model.resolve()):
        where = "is the base model's own folder" if out == model.resolve() else f"is inside the base model's folder {model}"
        raise TrainError(f"output.dir: {recipe.output.dir} {where}; a run writes config.yaml, adapter/ and "
                         "checkpoints/ there: set output.dir to a folder of its own")
    data = Path(recipe.data.train_manifest).expanduser().resolve().parent
    if out == data:
        raise TrainError(f"output.dir: {recipe.output.dir} is the training data's own folder ({data}); set output.dir "
                         "to a folder of its own")


def _results(run_dir: Path) -> list[str]:
    """What a run folder holds of a run's results (metrics rows, an adapter, checkpoints)."""
    held = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        held.append(f"metrics.jsonl ({len(metrics.read_text(encoding='utf-8').splitlines())} rows)")
    if (run_dir / "adapter").exists():
        held.append("adapter/")
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        held.append("checkpoints/")
    return held


@contextmanager
def run_lock(run_dir: Path, dist: Dist):
    """The run folder's writer lock, held by the main process; every rank stops when it is refused."""
    with ExitStack() as stack:
        refused = None
        if dist.main:
            try:
                stack.enter_context(writer_lock(run_dir, "cordlite train", fix="set output.dir to another directory"))
            except LockError as e:
                refused = e
        if dist.any(refused is not None):
            raise refused if refused is not None else TrainError(f"{run_dir}: the main process was refused its lock")
        yield


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def start(recipe: Recipe, dist: Dist, run_dir: Path, resume: bool, overwrite: bool) -> tuple[Path | None, dict]:
    """Before any work: the checkpoint to resume from (None: step 0) and the run's identity, or
    TrainError saying why this start would lose or mix up a run's results."""
    ckpt_root = run_dir / "checkpoints"
    if dist.main:
        for left in clean_checkpoints(ckpt_root):
            print(f"removed {left}, left by a run that was killed", file=sys.stderr)
        for odd in unmarked_steps(ckpt_root):
            note(f"{odd} has no state.json: not a checkpoint cordlite wrote, so it is not used (nor removed)")
    identity = run_identity(recipe)
    held = _results(run_dir)
    if overwrite:
        if dist.main and held:
            for name in RESULTS:
                target = run_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            note(f"--overwrite: removed the results of the run in {run_dir} ({', '.join(held)})")
        dist.barrier()
        return None, identity
    if not resume:
        if held:
            raise TrainError(f"{run_dir} holds a run's results ({', '.join(held)}); pass --resume to continue it, "
                             "--overwrite to start it again from step 0 (its results are removed), or set output.dir "
                             "to a new directory")
        return None, identity
    try:
        existing = intact_checkpoint(ckpt_root, note=note if dist.main else None)
    except CheckpointError as e:
        raise TrainError(str(e)) from None
    if existing is None:
        if (run_dir / "adapter").exists():  # a finished run: its adapter would be replaced
            raise TrainError(f"--resume: {run_dir} has no checkpoint to resume from, but holds results "
                             f"({', '.join(held)}); pass --overwrite to start the run again from step 0, or set "
                             "output.dir to a new directory")
        if dist.main:  # steps logged before the first checkpoint have no weights left to go on from
            lost = " (the metrics rows logged before it are dropped: no weights were saved for them)" if held else ""
            note(f"--resume: {run_dir} holds no checkpoint yet; starting at step 0{lost}")
        return None, identity
    check_same_run(existing, recipe, identity, dist)
    return existing, identity


def check_same_run(existing: Path, recipe: Recipe, identity: dict, dist: Dist) -> None:
    """--resume continues the run the checkpoint belongs to: any difference but SAFE's is refused."""
    try:
        marker = json.loads((existing / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainError(f"{existing}/state.json: unreadable ({type(e).__name__}); remove {existing} to resume "
                         "from an earlier checkpoint") from None
    recorded = marker.get("identity") if isinstance(marker, dict) else None
    if not isinstance(recorded, dict):  # a checkpoint from before identities: its recipe, without digests
        old = marker.get("recipe") if isinstance(marker, dict) else None
        recorded = {"recipe": {k: v for k, v in flatten(old).items() if k not in SAFE}} if isinstance(old, dict) else {}
    diffs = differences(recorded, identity)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise TrainError(f"--resume: the recipe differs from the run in {existing.parent.parent} ({shown}). A run "
                         "resumes as it began: put those back, or start a new run (another output.dir, or "
                         "--overwrite this one). On resume only train.max_steps, output.save_every, "
                         "output.keep_last, output.progress and memory settings may change (docs/reliability.md)")
    if dist.main:
        for change in safe_changes(marker.get("recipe", {}), recipe):
            note(f"--resume with {change}")


