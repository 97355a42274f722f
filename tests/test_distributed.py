"""Data-parallel CORD: 2 CPU processes (gloo, launched by accelerate) make bit for bit the update of
one process with the same global batch (which samples all 4 prompts' rollouts in one call), write
every output once, and their checkpoint resumes in one process; every collective runs on the
process's own device (NCCL refuses any other)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_raw

from cordlite.recipe import recipe_from_dict
from cordlite.train.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _raw(model_dir: Path, manifest: Path, out: Path, steps: int) -> dict:
    # global batch 4 = 2 ranks x 2 prompts = 1 rank x 2 micro-batches of 2
    return tiny_raw(model_dir, manifest, out, steps=steps, rollout={"max_new_tokens": 6},
                    train={"batch_size": 4, "micro_batch_size": 2, "seed": 3}, output={"keep_last": 5})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tiny_manifest, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(_raw(tiny_model_dir, tiny_manifest, tmp / "two", steps=2)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    proc = subprocess.run([sys.executable, "-m", "cordlite", "train", str(recipe), "--num-processes", "2"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


@pytest.fixture()
def one_thread():
    # The two ranks run with one thread each; match it so float sums round the same way.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_ranks_make_the_same_updates_as_one(two_process_run, tiny_model_dir, tiny_manifest, one_thread):
    two = two_process_run / "two"
    one = two_process_run / "one"
    train(recipe_from_dict(_raw(tiny_model_dir, tiny_manifest, one, steps=2)))
    a, b = _metrics(two), _metrics(one)
    assert [r["step"] for r in a] == [1, 2]  # one line per step: a single writer
    for ra, rb in zip(a, b):
        assert ra["world_size"] == 2 and rb["world_size"] == 1
        assert ra["global_batch"] == rb["global_batch"] == 4 and len(ra["prompt_ids"]) == 4
        assert ra["prompt_ids"] == rb["prompt_ids"]
        assert ra["tokens_generated"] == rb["tokens_generated"]  # the same rollouts, sharded
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-6)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)  # summed gradients equal
    wa, wb = _adapter(two / "adapter"), _adapter(one / "adapter")
    assert wa.keys() == wb.keys()
    for k in wa:  # each clip encoded alone, each row drawn from its own key: the same numbers, bit for bit
        assert torch.equal(wa[k], wb[k]), (k, (wa[k] - wb[k]).abs().max())


def test_only_rank_zero_writes(two_process_run):
    two = two_process_run / "two"
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    refs = [json.loads(l)["id"] for l in (two / "reference_answers.jsonl").read_text().splitlines()]
    assert len(refs) == len(set(refs))  # each cached answer written once
    assert not [p for p in two.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def test_two_process_checkpoint_resumes_in_one_process(two_process_run, tiny_model_dir, tiny_manifest, one_thread):
    import shutil

    resumed = two_process_run / "resumed"
    shutil.copytree(two_process_run / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000002")  # continue from step 1 of the 2-rank run
    raw = _raw(tiny_model_dir, tiny_manifest, resumed, steps=3)
    train(recipe_from_dict(raw), resume=True)
    unbroken = two_process_run / "unbroken"
    train(recipe_from_dict(_raw(tiny_model_dir, tiny_manifest, unbroken, steps=3)))
    a, b = _metrics(resumed), _metrics(unbroken)
    assert [r["step"] for r in a] == [1, 2, 3]
    assert [r["world_size"] for r in a] == [2, 1, 1]
    for ra, rb in zip(a, b):
        assert ra["prompt_ids"] == rb["prompt_ids"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-6)
    wa, wb = _adapter(resumed / "adapter"), _adapter(unbroken / "adapter")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), k


class _Handed(Exception):
    """Raised by the fake all_reduce once it has seen the tensor (the meta device holds no values to reduce)."""


def test_every_collective_is_handed_a_tensor_on_the_process_device(monkeypatch):
    """NCCL takes tensors of the process's own GPU only ("No backend type associated with device type
    cpu"): the stop agreement (any) and the gradient sum hand all_reduce tensors on Dist.device. Checked
    with the meta device standing for a GPU this machine lacks; a tensor elsewhere is refused by name."""
    from cordlite.train.distributed import CollectiveDeviceError, Dist

    dist = Dist(rank=0, world=2, local_rank=0, device=torch.device("meta"))
    seen = []

    def all_reduce(t, op=None):
        seen.append(t.device)
        raise _Handed

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    with pytest.raises(_Handed):
        dist.any(True)
    param = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(_Handed):
        dist.sum_gradients([param])
    assert seen == [torch.device("meta")] * 2
    with pytest.raises(CollectiveDeviceError, match="a cpu tensor handed to all_reduce; this process's collectives "
                                                    "run on meta"):
        dist._all_reduce(torch.zeros(1), torch.distributed.ReduceOp.SUM)
