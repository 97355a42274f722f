"""Checkpoints hold no pickle and are whole or absent.

- the optimizer's and the generators' states survive the JSON + safetensors round trip exactly;
- a checkpoint holding a pickle payload is refused on --resume and the payload never runs;
- what killed processes leave (temporary and half-deleted folders) is removed at the next start;
  a live writer's temporary folder and a step folder cordlite did not write are not.
  (Damaged checkpoints: tests/test_resume_contract.py.)
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_raw

from cordlite.recipe import recipe_from_dict
from cordlite.train.checkpoint import (
    _join_optimizer,
    _split_optimizer,
    clean_checkpoints,
    latest_checkpoint,
    rng_state,
    set_rng_state,
)
from cordlite.train.trainer import TrainError, train


def _adamw_after(steps: int, seed: int = 0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1, betas=(0.8, 0.9), weight_decay=0.01)
    for _ in range(steps):
        opt.zero_grad()
        lin(torch.ones(4, 3)).pow(2).sum().backward()
        opt.step()
    return lin, opt


def test_optimizer_state_round_trips_exactly_through_json_and_tensors():
    lin, opt = _adamw_after(3)
    meta, tensors = _split_optimizer(opt.state_dict())
    # Every tensor goes to safetensors; what is left is plain JSON.
    assert sorted(tensors) == [f"state.{i}.{n}" for i in (0, 1) for n in ("exp_avg", "exp_avg_sq", "step")]
    meta = yaml.safe_load(yaml.safe_dump(meta))  # any JSON-like round trip: tuples come back as lists
    tensors = {k: v.clone() for k, v in tensors.items()}  # as read back from the file: no shared storage

    twin, opt2 = _adamw_after(0, seed=1)
    twin.load_state_dict(lin.state_dict())
    opt2.load_state_dict(_join_optimizer(meta, tensors, opt2.state_dict()))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9)  # a tuple again, as AdamW made it
    for model, o in ((lin, opt), (twin, opt2)):  # one more identical step on both
        o.zero_grad()
        model(torch.ones(4, 3)).pow(2).sum().backward()
        o.step()
    for a, b in zip(lin.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_generator_states_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # numpy now holds a cached gaussian: part of its state
    meta, tensors = rng_state()
    first = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(yaml.safe_load(yaml.safe_dump(meta)), tensors)
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == first


class _Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def two_step_run(tiny_model_dir, tiny_manifest, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp / "run", steps=2, output={"keep_last": 2})
    train(recipe_from_dict(raw))
    return raw, tmp / "run"


def test_checkpoint_files_are_json_and_safetensors_only(two_step_run):
    _, run = two_step_run
    last = latest_checkpoint(run / "checkpoints")
    assert last is not None and last.name == "step_000002"
    names = sorted(str(p.relative_to(last)) for p in last.rglob("*") if p.is_file())
    assert {Path(n).suffix for n in names} <= {".json", ".safetensors", ".md"}, names
    assert {"trainer_state.json", "optimizer.safetensors", "rng.safetensors", "state.json",
            "adapter/adapter_model.safetensors"} <= set(names)


@pytest.mark.parametrize("planted", ["trainer_state.pt", "adapter/adapter_model.bin", "extra.pkl"])
def test_a_planted_pickle_is_refused_on_resume_and_never_runs(two_step_run, tmp_path, planted):
    import shutil

    raw, run = two_step_run
    copy = tmp_path / "copied_run"
    shutil.copytree(run, copy)
    marker = tmp_path / "payload_ran"
    target = copy / "checkpoints" / "step_000002" / planted
    target.write_bytes(pickle.dumps(_Payload(marker)))
    recipe = recipe_from_dict(raw, overrides=[f"output.dir={copy}", "train.max_steps=3"])
    with pytest.raises(TrainError, match=rf"step_000002: holds {planted}; cordlite never loads pickle files"):
        train(recipe, resume=True)
    assert not marker.exists()
    assert not (copy / "checkpoints" / "step_000003").exists()


def test_the_cli_refuses_it_in_one_line(two_step_run, tmp_path):
    import shutil

    raw, run = two_step_run
    copy = tmp_path / "copied_run"
    shutil.copytree(run, copy)
    marker = tmp_path / "payload_ran"
    (copy / "checkpoints" / "step_000002" / "trainer_state.pt").write_bytes(pickle.dumps(_Payload(marker)))
    raw = {**raw, "output": {**raw["output"], "dir": str(copy)}}
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-m", "cordlite", "train", str(recipe_path), "--resume"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("error: ")] == [res.stderr.splitlines()[-1]]
    assert "older cordlite, which kept its training state as a pickle" in res.stderr
    assert not marker.exists()


def test_leftovers_of_killed_processes_are_removed_and_a_live_writers_are_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "checkpoints"
    for name in (f".step_000004.tmp-{dead.pid}", f".step_000001.del-{dead.pid}", f".step_000003.old-{dead.pid}",
                 f".step_000005.tmp-{os.getpid()}"):
        (root / name / "adapter").mkdir(parents=True)
    (root / "step_000002" / "adapter").mkdir(parents=True)  # no marker: not cordlite's, so kept and not used
    (root / "step_000003" / "adapter").mkdir(parents=True)
    (root / "step_000003" / "state.json").write_text("{}")
    removed = {p.name for p in clean_checkpoints(root)}
    assert removed == {f".step_000004.tmp-{dead.pid}", f".step_000001.del-{dead.pid}",
                       f".step_000003.old-{dead.pid}"}
    assert sorted(p.name for p in root.iterdir()) == [f".step_000005.tmp-{os.getpid()}", "step_000002",
                                                      "step_000003"]
    assert latest_checkpoint(root).name == "step_000003"
