"""output.report_to: the trackers see what metrics.jsonl holds.

TensorBoard for real: a 3-step run writes its events, they are read back with TensorBoard's own
reader and every scalar equals its metrics.jsonl value at its step; a run stopped and resumed
leaves one value per step. A tracker whose package is missing is refused when the recipe loads.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_raw

from cordlite.recipe import recipe_from_dict
from cordlite.schema import ConfigError
from cordlite.train.trainer import train

pytest.importorskip("tensorboard")


def _scalars(logdir) -> dict[str, dict[int, float]]:
    """Every scalar of the event files under `logdir` (the hparams sub-run aside): tag -> step -> value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def test_tensorboard_events_equal_metrics_jsonl(tiny_model_dir, tiny_manifest, tmp_path):
    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", steps=3, output={"report_to": ["tensorboard"]})
    train(recipe_from_dict(raw))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = _scalars(tmp_path / "run" / "tensorboard")
    expected = {(k, r["step"]): v for r in rows for k, v in _numbers(r).items()}
    assert set(events) == {k for k, _ in expected}  # every numeric field, as a tag of its own
    for (tag, step), value in expected.items():
        assert events[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-30), (tag, step)  # float32 in the event
    assert {"loss", "kl_mean", "reward_mean", "lr", "grad_norm", "step_seconds"} <= set(events)


def test_a_resumed_run_has_one_value_per_step(tiny_model_dir, tiny_manifest, tmp_path):
    """Steps logged past the checkpoint by an interrupted run are dropped from the events too."""
    out = tmp_path / "run"
    raw = tiny_raw(tiny_model_dir, tiny_manifest, out, steps=3, output={"report_to": ["tensorboard"]})
    train(recipe_from_dict(raw))
    shutil.rmtree(out / "checkpoints" / "step_000003")  # as if killed after step 3 was logged, before its save
    (out / "adapter").rename(tmp_path / "adapter_of_the_first_run")
    train(recipe_from_dict(raw), resume=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = _scalars(out / "tensorboard")
    assert sorted(events["loss"]) == [1, 2, 3] == [r["step"] for r in rows]
    assert events["loss"][3] == pytest.approx(rows[2]["loss"], rel=1e-6)


def test_a_missing_tracker_package_is_refused_when_the_recipe_loads(tiny_model_dir, tiny_manifest, tmp_path,
                                                                     monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", output={"report_to": ["tensorboard", "wandb"]})
    with pytest.raises(ConfigError, match=r"output.report_to: 'wandb' needs the wandb package, which is not "
                                          r"installed; pip install 'cordlite\[wandb\]'"):
        recipe_from_dict(raw)
    with pytest.raises(ConfigError, match=r"output.report_to\[0\]: 'neptune' is not one of 'tensorboard'"):
        recipe_from_dict({**raw, "output": {**raw["output"], "report_to": ["neptune"]}})


def test_wandb_offline_gets_the_rows_and_the_recipe(tiny_model_dir, tiny_manifest, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", steps=2, output={"report_to": ["wandb"]})
    train(recipe_from_dict(raw))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (log,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    data = log.read_bytes()  # history records hold each value as JSON text (wandb's reader is not public)
    for row in rows:
        for k in ("loss", "kl_mean", "lr", "grad_norm"):
            assert k.encode() in data and json.dumps(row[k]).encode() in data, (row["step"], k)
    assert b"optim.lr" in data and b"lora.target_modules" in data  # the recipe as the run's config


def test_mlflow_with_a_local_sqlite_store_gets_every_row(tiny_model_dir, tiny_manifest, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", steps=2, output={"report_to": ["mlflow"]})
    train(recipe_from_dict(raw))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("cordlite").experiment_id])
    for k in ("loss", "kl_mean", "lr"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
        assert history == {r["step"]: pytest.approx(r[k], rel=1e-9) for r in rows}, k
    assert run.data.params["optim.lr"] == str(raw["optim"]["lr"])


def test_an_evaluation_of_the_run_joins_its_tensorboard_at_the_adapters_step(tiny_model_dir, tiny_manifest,
                                                                               tmp_path):
    from cordlite.eval.evaluate import EvalSettings, run_eval

    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", steps=2, output={"report_to": ["tensorboard"]})
    train(recipe_from_dict(raw))
    summary = run_eval(EvalSettings(manifest=str(tiny_manifest), out=str(tmp_path / "eval"),
                                    adapter=str(tmp_path / "run"), max_new_tokens=4, progress=False))
    events = _scalars(tmp_path / "run" / "tensorboard")
    assert events["eval/text_acc"] == {2: pytest.approx(summary["text_acc"])}
    assert events["eval/audio_acc"] == {2: pytest.approx(summary["audio_acc"])}
    assert events["eval/gap"] == {2: pytest.approx(summary["gap"])}
    assert sorted(events["loss"]) == [1, 2]  # the training's own events kept
