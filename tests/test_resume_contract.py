"""`--resume` continues the run it finds and no other, from a checkpoint that proves its integrity.

- the resume contract, as a table: each unsafe change is refused before any work with the
  differences listed, each safe change resumes; a cached reference answer is never used for
  another question or another base;
- the corruption table: bytes flipped, a file cut short or emptied, in each file of a checkpoint,
  is found by its digest, the file named, and the previous intact checkpoint used; with none left,
  one line naming the file;
- non-finite weights are never saved, and a start never destroys a run's results.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import one_error_line, snapshot, tiny_raw

from cordlite.recipe import recipe_from_dict
from cordlite.train.checkpoint import CheckpointError, NonFiniteError, intact_checkpoint, save_checkpoint
from cordlite.train.trainer import TrainError, train


def _copy(tiny_run, tmp_path: Path) -> tuple[dict, Path]:
    raw, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    raw = json.loads(json.dumps(raw))
    raw["output"]["dir"] = str(copy)
    return raw, copy


def _other_weights(model_dir: Path, out: Path) -> Path:
    """The same architecture and files with other weights (one tensor moved by 1e-3)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    tensors = load_file(str(out / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _other_questions(manifest: Path, out: Path) -> Path:
    """The same ids and clips, other questions."""
    shutil.copytree(manifest.parent, out)
    rows = [json.loads(line) for line in (out / manifest.name).read_text().splitlines()]
    for r in rows:
        r["question"] = "Say it again: " + r["question"]
    (out / manifest.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / manifest.name


UNSAFE = {  # change -> what the refusal must list
    "lr": (lambda raw, tmp: raw["optim"].update(lr=1e-3), ["optim.lr: 0.01 -> 0.001"]),
    "objective": (lambda raw, tmp: (raw["loss"].update(objective="sft", lambda_seq=0.0)),
                  ["loss.objective: 'cord' -> 'sft'", "loss.lambda_seq: 1.0 -> 0.0"]),
    "lora_r": (lambda raw, tmp: raw["lora"].update(r=8), ["lora.r: 4 -> 8"]),
    "targets": (lambda raw, tmp: raw["lora"].update(target_modules=["q_proj", "v_proj"]), ["lora.target_modules: "]),
    "seed": (lambda raw, tmp: raw["train"].update(seed=1), ["train.seed: 0 -> 1"]),
    "instruction": (lambda raw, tmp: raw["data"].update(instruction="Reply."), ["data.instruction: "]),
    "other_base_weights": (lambda raw, tmp: raw["model"].update(
        name_or_path=str(_other_weights(Path(raw["model"]["name_or_path"]), tmp / "other_base"))),
        ["the base model's weights: sha256:"]),
    "other_questions": (lambda raw, tmp: raw["data"].update(
        train_manifest=str(_other_questions(Path(raw["data"]["train_manifest"]), tmp / "other_data"))),
        ["the training manifest's contents: sha256:"]),
}


@pytest.mark.parametrize("change", sorted(UNSAFE))
def test_an_unsafe_change_on_resume_is_refused_with_the_differences(change, tiny_run, tmp_path):
    from click.testing import CliRunner

    from cordlite.cli import main

    raw, run = _copy(tiny_run, tmp_path)
    edit, expected = UNSAFE[change]
    edit(raw, tmp_path)
    raw["train"]["max_steps"] = 3
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    before = snapshot(run)
    result = CliRunner().invoke(main, ["train", str(recipe), "--resume"])
    assert result.exit_code == 1, result.output
    line = one_error_line(result.output)
    assert f"--resume: the recipe differs from the run in {run} (" in line
    for piece in expected:
        assert piece in line, (piece, line)
    assert "A run resumes as it began: put those back, or start a new run" in line
    assert snapshot(run) == before


SAFE = {
    "max_steps only": {},
    "checkpointing and progress": {"output": {"save_every": 2, "keep_last": 1, "progress": True}},
    "memory settings": {"rollout": {"kv_budget_gb": 0.5}, "data": {"audio_cache_mb": 1.0},
                        "loss": {"kl_chunk_size": 2}},
}


@pytest.mark.parametrize("case", sorted(SAFE))
def test_a_safe_change_resumes(case, tiny_run, tmp_path, capsys):
    raw, run = _copy(tiny_run, tmp_path)
    for section, fields in SAFE[case].items():
        raw[section].update(fields)
    raw["train"]["max_steps"] = 3
    train(recipe_from_dict(raw), resume=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "--resume with train.max_steps: 2 -> 3" in capsys.readouterr().err


def test_a_moved_base_and_manifest_resume_by_their_digests(tiny_run, tiny_model_dir, tiny_manifest, tmp_path):
    raw, run = _copy(tiny_run, tmp_path)
    raw["model"]["name_or_path"] = str(shutil.copytree(tiny_model_dir, tmp_path / "moved_model"))
    raw["data"]["train_manifest"] = str(shutil.copytree(tiny_manifest.parent, tmp_path / "moved_data")
                                        / tiny_manifest.name)
    raw["train"]["max_steps"] = 3
    train(recipe_from_dict(raw), resume=True)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_no_reference_answer_is_used_for_another_question_or_base(tmp_path):
    from cordlite.data import Example
    from cordlite.objective.references import ReferenceStore

    ex = Example("q1", Path("a.wav"), "What is 2 + 2?")
    path = tmp_path / "reference_answers.jsonl"
    path.write_text(json.dumps({"id": "q1", "reference": "a line without a key"}) + "\n")  # older cordlite
    first = ReferenceStore(path, context='["sha256:aaa", "Answer."]')
    assert first.get(ex) is None  # keyless lines are never used
    first.add([(ex, "4")])
    assert ReferenceStore(path, context='["sha256:aaa", "Answer."]').get(ex) == "4"  # read back after resume
    assert ReferenceStore(path, context='["sha256:bbb", "Answer."]').get(ex) is None  # another base
    assert ReferenceStore(path, context='["sha256:aaa", "Reply."]').get(ex) is None  # another instruction
    other = Example("q1", Path("a.wav"), "What is 3 + 3?")
    assert ReferenceStore(path, context='["sha256:aaa", "Answer."]').get(other) is None  # same id, other question


def test_the_reference_context_names_the_base_by_its_weights(tiny_run, tiny_model_dir, tmp_path):
    from cordlite.train.identity import base_digest
    from cordlite.train.trainer import reference_context

    raw, _ = tiny_run
    recipe = recipe_from_dict(raw)
    same = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    other = _other_weights(tiny_model_dir, tmp_path / "other")
    assert base_digest(str(same)) == base_digest(str(tiny_model_dir)) != base_digest(str(other))
    assert reference_context(recipe, base_digest(str(same))) != reference_context(recipe, base_digest(str(other)))


# --- corruption ------------------------------------------------------------------------------------

FILES = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "optimizer.safetensors",
         "rng.safetensors", "trainer_state.json"]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 4]) + data[middle + 4:])
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["flipped", "truncated", "empty"])
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_checkpoint_file_is_found_by_its_digest(name, how, tiny_run, tmp_path):
    _, run = _copy(tiny_run, tmp_path)
    root = run / "checkpoints"
    _damage(root / "step_000002" / name, how)
    notes: list[str] = []
    assert intact_checkpoint(root, note=notes.append) == root / "step_000001"
    assert notes == [f"{root}/step_000002/{name} does not match the digest recorded when it was written "
                     f"({(root / 'step_000002' / name).stat().st_size} bytes); resuming from step_000001, the "
                     "previous intact checkpoint"]
    shutil.rmtree(root / "step_000001")  # no earlier one: the run cannot resume, and says which file
    with pytest.raises(CheckpointError, match=rf"step_000002/{name} does not match the digest .* no earlier intact "
                                              "checkpoint is kept"):
        intact_checkpoint(root)


def test_resume_passes_over_a_damaged_checkpoint_and_trains_as_an_unbroken_run(tiny_run, tmp_path, capsys):
    from safetensors.torch import load_file

    raw, run = _copy(tiny_run, tmp_path)
    _damage(run / "checkpoints" / "step_000002" / "adapter" / "adapter_model.safetensors", "flipped")
    train(recipe_from_dict({**raw, "train": {**raw["train"], "max_steps": 3}}), resume=True)
    assert "resuming from step_000001, the previous intact checkpoint" in capsys.readouterr().err
    unbroken = tmp_path / "unbroken"
    train(recipe_from_dict({**raw, "train": {**raw["train"], "max_steps": 3}, "output": {**raw["output"],
                                                                                       "dir": str(unbroken)}}))
    resumed, fresh = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (run, unbroken))
    assert resumed.keys() == fresh.keys() and all(torch.equal(resumed[k], fresh[k]) for k in fresh)
    rows = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]  # step 2's row was trimmed and made again


def test_a_damaged_last_checkpoint_without_an_earlier_one_is_one_line(tiny_run, tmp_path):
    from click.testing import CliRunner

    from cordlite.cli import main

    raw, run = _copy(tiny_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step_000001")
    _damage(run / "checkpoints" / "step_000002" / "optimizer.safetensors", "flipped")
    raw["train"]["max_steps"] = 3
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    before = snapshot(run)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "r.yaml"), "--resume"])
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert "step_000002/optimizer.safetensors does not match the digest recorded when it was written" in line
    assert "start it again (--overwrite) or in a new output.dir" in line
    assert snapshot(run) == before


def test_non_finite_weights_are_never_saved(tmp_path):
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    opt.state[lin.weight]["exp_avg"][0, 0] = float("nan")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(NonFiniteError, match=r"step 3 left 1 tensor\(s\) .* non-finite \(e.g. state.0.exp_avg\)"):
        save_checkpoint(tmp_path, 3, lin, opt, sched, {}, keep_last=2)
    assert list(tmp_path.iterdir()) == []


def test_a_step_that_makes_weights_nan_stops_the_run_before_it_is_logged_or_saved(tiny_model_dir, tiny_manifest,
                                                                                  tmp_path, monkeypatch):
    import cordlite.train.trainer as trainer

    real = trainer.run_step

    def poisoned(parts, step):
        row = real(parts, step)
        if step == 1:  # the second step's update goes wrong
            with torch.no_grad():
                parts.params[0][0, 0] = float("nan")
        return row

    monkeypatch.setattr(trainer, "run_step", poisoned)
    raw = tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", steps=3)
    with pytest.raises(TrainError, match=r"step 2 made 1 adapter weight\(s\) NaN or infinite .* nothing of it is "
                                         r"logged or saved, and the last good checkpoint is .*step_000001"):
        train(recipe_from_dict(raw))
    rows = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_000001"]


# --- a start never destroys a run's results ---------------------------------------------------------


def test_a_finished_run_without_its_checkpoints_is_not_started_over(tiny_run, tmp_path):
    raw, run = _copy(tiny_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    with pytest.raises(TrainError, match=r"holds a run's results \(metrics.jsonl \(2 rows\), adapter/\); pass "
                                         r"--resume to continue it, --overwrite to start it again"):
        train(recipe_from_dict(raw))
    with pytest.raises(TrainError, match=r"--resume: .* has no checkpoint to resume from, but holds results"):
        train(recipe_from_dict(raw), resume=True)
    assert snapshot(run) == before
    train(recipe_from_dict(raw), overwrite=True)  # asked for: started again from step 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_refused_start_touches_no_checkpoint(tiny_run, tmp_path):
    raw, run = _copy(tiny_run, tmp_path)
    (run / "checkpoints" / "step_000002" / "state.json").unlink()  # whole, but without its marker
    before = snapshot(run)
    with pytest.raises(TrainError, match="holds a run's results"):
        train(recipe_from_dict(raw))
    assert snapshot(run) == before


def test_resume_in_a_folder_with_nothing_yet_says_it_starts_at_step_0(tiny_model_dir, tiny_manifest, tmp_path, capsys):
    train(recipe_from_dict(tiny_raw(tiny_model_dir, tiny_manifest, tmp_path / "run", steps=1)), resume=True)
    assert "holds no checkpoint yet; starting at step 0" in capsys.readouterr().err
