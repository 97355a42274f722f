"""Live run tracking: every metrics.jsonl row, and the resolved recipe as the run's config, sent to
the trackers practitioners watch, through accelerate's tracker classes.

    output:
      report_to: [tensorboard]     # RUN/tensorboard/: tensorboard --logdir RUN/tensorboard

metrics.jsonl stays the record; a tracker is a view of it, fed the same rows as they are written
(numbers only: the prompt ids stay in the file). `cordlite eval --adapter RUN` of such a run adds
its summary (eval/text_acc, eval/audio_acc, eval/gap, eval/gap_reduction) at the adapter's step. Each tracker's package is an optional extra
(`pip install 'cordlite[tensorboard]'`, `[wandb]`, `[mlflow]`, `[trackio]`); a recipe naming one
whose package is missing is refused at load, before the model. On `--resume` TensorBoard drops
the events of steps past the checkpoint, as metrics.jsonl drops their rows. W&B and MLflow read
their own settings from the environment (WANDB_MODE=offline, MLFLOW_TRACKING_URI, ...).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from cordlite.schema import flatten

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
PROJECT = "cordlite"


def missing_packages(names: tuple[str, ...] | list[str]) -> list[str]:
    """The trackers among `names` whose package is not installed (each tracker's package has its name)."""
    return [n for n in names if importlib.util.find_spec(n) is None]


def _config(recipe_dict: dict) -> dict:
    """The recipe flattened to "section.field": value, lists as JSON text (what every tracker takes)."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in flatten(recipe_dict).items()}


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


class Trackers:
    """The run's trackers (main process only). `done`: steps already done (a resumed run); `recipe_dict`
    is stored as the run's config (None: not again, for an evaluation's summary)."""

    def __init__(self, names: tuple[str, ...], run_dir: Path, recipe_dict: dict | None, done: int = 0):
        from accelerate import tracking

        self.trackers = []
        for name in names:
            if name == "tensorboard":
                # purge_step: events of steps past the checkpoint (an interrupted run's) are dropped
                t = tracking.TensorBoardTracker("tensorboard", run_dir, **({"purge_step": done + 1} if done else {}))
            elif name == "wandb":
                t = tracking.WandBTracker(PROJECT, name=run_dir.name, dir=str(run_dir))
            elif name == "mlflow":
                t = tracking.MLflowTracker(PROJECT, run_name=run_dir.name)
            else:
                t = tracking.TrackioTracker(PROJECT, name=run_dir.name)
            t.start()
            self.trackers.append(t)
        if recipe_dict is not None:
            config = _config(recipe_dict)
            for t in self.trackers:
                t.store_init_configuration(config)

    def log(self, row: dict) -> None:
        values = _numbers(row)
        for t in self.trackers:
            t.log(values, step=int(row["step"]))

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []


def report_eval(run_dir: Path, recipe_dict: dict, step: int, summary: dict) -> list[str]:
    """Send an evaluation's summary of run `run_dir` (trained with `recipe_dict`, its adapter at `step`)
    to the trackers the run reports to; returns their names ([] when it reports to none)."""
    names = tuple((recipe_dict.get("output") or {}).get("report_to") or ())
    names = tuple(n for n in names if n in TRACKERS and not missing_packages([n]))
    if not names:
        return []
    values = {"step": step, **{f"eval/{k}": summary[k] for k in ("text_acc", "audio_acc", "gap")
                               if isinstance(summary.get(k), (int, float))}}
    reduction = (summary.get("baseline") or {}).get("gap_reduction")
    if isinstance(reduction, (int, float)):
        values["eval/gap_reduction"] = reduction
    trackers = Trackers(names, run_dir, None)
    trackers.log(values)
    trackers.finish()
    return list(names)
