"""Bad input to every command, as tables: each case ends with exit status 1 or 2 and one `error:`
line naming the file or field and the fix, no traceback, and no file that existed before is
changed or removed. The cases that can be seen without the model are seen before it loads.

`CASES`: bad manifests and clips given to `cordlite train`. `COMMAND_CASES`: the other ways in, for
every command: recipes, damaged checkpoints and adapters, full disks, folders in the way."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml


def _rows(manifest: Path) -> list[dict]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for r in rows:
        r["audio_path"] = str((manifest.parent / r["audio_path"]).resolve())
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _with_clip(tmp: Path, rows: list[dict], name: str, samples: np.ndarray | None, raw: bytes | None = None,
               first: bool = False) -> Path:
    clip = tmp / name
    if raw is not None:
        clip.write_bytes(raw)
    else:
        sf.write(clip, samples, 16000, subtype="FLOAT")
    bad = [{**rows[0], "id": f"bad-{i}", "audio_path": str(clip)} for i in range(2)]
    return _write(tmp / "m.jsonl", bad + rows if first else rows + bad)


def case_non_utf8(tmp, rows):
    good = json.dumps(rows[0]).encode()
    bad = json.dumps({**rows[1], "question": "caf\u00e9"}, ensure_ascii=False).encode().replace(
        "\u00e9".encode(), b"\xe9")
    (tmp / "m.jsonl").write_bytes(good + b"\n" + bad + b"\n")
    return tmp / "m.jsonl", {}, ["m.jsonl", "line 2: not UTF-8 text (byte 0xe9", "save the manifest as UTF-8"]


def case_output_dir_is_a_file(tmp, rows):
    (tmp / "out").write_text("not a directory\n")
    return _write(tmp / "m.jsonl", rows), {"output": str(tmp / "out")}, ["out: ", "a file is in the way"]


def case_truncated_wav_header(tmp, rows):
    return (_with_clip(tmp, rows, "cut.wav", None, raw=b"RIFF\x24\x00\x00\x00WAVEfmt "), {},
            ["cut.wav cannot be read", "convert it to 16 kHz mono WAV or drop the row", "nothing was run"])


def case_zero_length_clip(tmp, rows):
    return (_with_clip(tmp, rows, "empty.wav", np.zeros(0, dtype=np.float32)), {},
            ["empty.wav holds no samples", "re-synthesise the clip or drop the row"])


def case_too_long_on_the_last_rows(tmp, rows):
    return (_with_clip(tmp, rows, "long.wav", np.zeros(31 * 16000, dtype=np.float32)), {},
            ["long.wav is 31.0 s, longer than data.max_audio_seconds (30.0 s)", "trim the clip or drop the row"])


def case_nan_samples(tmp, rows):
    samples = np.full(16000, 0.1, dtype=np.float32)
    samples[100] = np.nan
    return (_with_clip(tmp, rows, "nan.wav", samples, first=True), {},
            ["nan.wav: the clip holds NaN or infinite samples", "cordlite data check"])


def case_question_over_the_context(tmp, rows):
    # 10,000 characters of question and room for 8,000 new tokens: over the tiny model's 8,192 positions
    long_q = {**rows[1], "id": "essay", "question": ("How many apples are left if Sam eats two? " * 250)[:10_000]}
    return (_write(tmp / "m.jsonl", rows + [long_q]), {"max_new_tokens": 8000},
            ["1 row(s) cannot be used", "row 'essay': its text-view prompt is", "over the model's 8192 positions",
             "shorten the question"])


CASES = [case_question_over_the_context, case_non_utf8, case_output_dir_is_a_file, case_truncated_wav_header,
         case_zero_length_clip,
         case_too_long_on_the_last_rows, case_nan_samples]


def _raw(model_dir: Path, manifest: Path, out: Path, batch: int = 2, new_tokens: int = 4, **data) -> dict:
    """One step of the tiny recipe on `manifest`, writing to `out`; `data` adds data.* fields."""
    return {"model": {"name_or_path": str(model_dir), "device": "cpu"}, "quantization": {"mode": "none"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"train_manifest": str(manifest), "instruction": "Answer the question.", **data},
            "rollout": {"max_new_tokens": new_tokens, "group_size": 2}, "loss": {"top_k": 3},
            "train": {"max_steps": 1, "batch_size": batch, "micro_batch_size": batch, "seed": 0},
            "output": {"dir": str(out), "progress": False}}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_is_one_line_with_the_fix(case, tiny_model_dir, tiny_manifest, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cordlite.cli import main

    monkeypatch.delenv("CORDLITE_DEBUG", raising=False)
    manifest, extra, expected = case(tmp_path, _rows(tiny_manifest))
    raw = _raw(tiny_model_dir, manifest, Path(extra.get("output", tmp_path / "run")),
               new_tokens=extra.get("max_new_tokens", 4), shuffle=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    message = result.output[result.output.index("error: "):]
    for piece in expected:
        assert piece in message, (piece, message)
    after = _snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing that existed was changed or removed
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""  # no step ran (NaN is seen as the clip is read)


def test_skip_bad_rows_trains_on_the_rest_and_lists_what_it_left_out(tiny_model_dir, tiny_manifest, tmp_path,
                                                                      capsys):
    from cordlite.recipe import recipe_from_dict
    from cordlite.train.trainer import train

    rows = _rows(tiny_manifest)
    sf.write(tmp_path / "long.wav", np.zeros(31 * 16000, dtype=np.float32), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n"
                        + json.dumps({**rows[0], "id": "gone", "audio_path": str(tmp_path / "gone.wav")}) + "\n"
                        + json.dumps({**rows[0], "id": "long", "audio_path": str(tmp_path / "long.wav")}) + "\n")
    raw = _raw(tiny_model_dir, manifest, tmp_path / "run", skip_bad_rows=True)
    train(recipe_from_dict(raw))
    listed = [json.loads(line)["reason"] for line in (tmp_path / "run" / "skipped_rows.jsonl").read_text().splitlines()]
    n = len(rows)
    assert listed[0].startswith(f"line {n + 1}: not valid JSON")
    assert listed[1].startswith(f"line {n + 2}: audio_path") and "not found" in listed[1]
    assert listed[2].startswith("row 'long': ") and "longer than data.max_audio_seconds" in listed[2]
    assert len(listed) == 3
    assert "skipped 3 bad row(s) (data.skip_bad_rows)" in capsys.readouterr().err
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["rows_skipped"] == 3 and not {"gone", "long"} & set(row["prompt_ids"])


def test_odd_but_valid_rows_train_with_a_note(tiny_model_dir, tiny_manifest, tmp_path, capsys):
    """A 96 kHz 6-channel clip (resampled and averaged, noted once), a 2 MB JSONL line (an extra
    field) and a 10,000-character question that fits the context: all used, no error."""
    from cordlite.recipe import recipe_from_dict
    from cordlite.train.trainer import train

    rows = _rows(tiny_manifest)
    t = np.arange(96000) / 96000
    sf.write(tmp_path / "hd.wav", np.stack([0.2 * np.sin(2 * np.pi * 220 * t)] * 6, axis=1).astype(np.float32), 96000)
    odd = [{**rows[0], "id": "hd", "audio_path": str(tmp_path / "hd.wav")},
           {**rows[1], "id": "huge", "notes": "x" * 2_000_000},
           {**rows[2], "id": "essay", "question": ("How many apples are left if Sam eats two? " * 250)[:10_000]}]
    manifest = _write(tmp_path / "m.jsonl", odd)
    raw = _raw(tiny_model_dir, manifest, tmp_path / "run", batch=3, shuffle=False)
    train(recipe_from_dict(raw))
    err = capsys.readouterr().err
    assert "1 clip(s) not at 16 kHz: resampled as read (e.g. 'hd')" in err
    assert "1 clip(s) not mono: channels averaged as read (e.g. 'hd')" in err
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert sorted(row["prompt_ids"]) == ["essay", "hd", "huge"]


def test_prompt_length_check_is_exact_at_the_limit(tiny_model_dir):
    """The cheap first pass (template + question tokens) must not hide a row: at the limit the
    exact prompt length decides, one token either way."""
    from transformers import AutoProcessor

    from cordlite.data import Example, prompt_length_problems
    from cordlite.prompts import text_view_messages

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    ex = Example("q1", Path("unused.wav"), "Mia has 7 shells. She finds 5 more. How many shells does she have now?")
    exact = len(processor.tokenizer(processor.apply_chat_template(
        text_view_messages(ex.question, "Answer the question.", None), add_generation_prompt=True,
        tokenize=False))["input_ids"])
    assert prompt_length_problems(processor, [ex], "Answer the question.", None, 10, exact + 10) == []
    over = prompt_length_problems(processor, [ex], "Answer the question.", None, 10, exact + 9)
    assert over == [f"row 'q1': its text-view prompt is {exact} tokens; with rollout.max_new_tokens=10 that is "
                    f"over the model's {exact + 9} positions; shorten the question (or drop the row)"]
    assert prompt_length_problems(processor, [ex], "Answer the question.", None, 10, exact + 500) == []


# --- every command ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_merged(tiny_run, tmp_path_factory) -> Path:
    from cordlite.deploy.merge import merge

    out = tmp_path_factory.mktemp("merged") / "model"
    merge(tiny_run[1], out, dtype="float32", check_items=0, progress=lambda *a: None)
    return out


class Ctx:
    """What a case may use: its own folder, a copy of the finished tiny run, the tiny model and set."""

    def __init__(self, tmp: Path, run: Path, raw: dict, model: Path, manifest: Path, merged: Path):
        self.tmp, self.run, self.raw, self.model, self.manifest, self.merged = tmp, run, raw, model, manifest, merged

    def recipe(self, **sections) -> str:
        raw = json.loads(json.dumps(self.raw))
        for section, fields in sections.items():
            raw[section] = {**raw.get(section, {}), **fields}
        path = self.tmp / "r.yaml"
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    @property
    def adapter(self) -> Path:
        return self.run / "adapter"

    def foreign_adapter(self) -> Path:
        """The run's adapter as a plain peft adapter: no cordlite metadata, no digests."""
        (self.adapter / "cordlite_adapter.json").unlink()
        return self.adapter

    def old_checkpoint(self) -> Path:
        """The last checkpoint with its digests dropped (as written before they were): what is checked
        then is the files' own form."""
        last = self.run / "checkpoints" / "step_000002"
        marker = json.loads((last / "state.json").read_text())
        marker.pop("files")
        (last / "state.json").write_text(json.dumps(marker))
        shutil.rmtree(self.run / "checkpoints" / "step_000001")
        return last

    def trainer_state(self, **change) -> None:
        path = self.old_checkpoint() / "trainer_state.json"
        state = json.loads(path.read_text())
        for k, v in change.items():
            if v is None:
                state.pop(k)
            else:
                state[k] = v
        path.write_text(json.dumps(state))


def _disk_full(monkeypatch, module: str, name: str = "save_file") -> None:
    """The next safetensors write fails as it does on a full disk (its own error class, errno 28 inside)."""
    import importlib

    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(importlib.import_module(module), name, full)


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8
    path.write_bytes(bytes(data))


RESUME = ["--resume"]


def c_lr_infinite(c):
    return ["train", c.recipe(optim={"lr": float("inf")})], 2, ["optim.lr: expected a finite number, got inf"]


def c_lr_absurd(c):
    return ["validate", c.recipe(optim={"lr": 1e9})], 2, ["optim.lr: 1e+09 must be in (0, 1]", "LoRA runs use 1e-5"]


def c_yaml_alias_bomb(c):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcde", "bcdef"))
    path = c.tmp / "bomb.yaml"
    path.write_text(bomb + "data:\n  instruction: *f\n")
    return ["validate", str(path)], 2, ["data.instruction: expected a string, got [[[", "...]"]


def c_csv_manifest(c):
    csv = c.tmp / "questions.csv"
    csv.write_text("id,audio_path,question\nq1,a.wav,What is two plus two?\n")
    return (["train", c.recipe(data={"train_manifest": str(csv)}, output={"dir": str(c.tmp / "new")})], 1,
            ["a manifest is JSONL, one JSON object per line, and this looks like CSV",
             f"`cordlite data tts -i {csv}`"])


def c_output_is_the_model(c):
    return ["train", c.recipe(output={"dir": str(c.model)})], 1, ["is the base model's own folder", "a folder of its own"]


def c_output_is_the_data(c):
    return (["train", c.recipe(output={"dir": str(c.manifest.parent)})], 1,
            ["is the training data's own folder", "a folder of its own"])


def c_resume_and_overwrite(c):
    return ["train", c.recipe(), "--resume", "--overwrite"], 2, ["--resume and --overwrite: pass one"]


def c_resume_adapter_truncated(c):
    f = c.old_checkpoint() / "adapter" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return ["train", c.recipe(train={"max_steps": 3}), *RESUME], 1, ["adapter_model.safetensors: not a readable "
                                                                      "safetensors file", "remove"]


def c_resume_adapter_empty(c):
    (c.old_checkpoint() / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    return ["train", c.recipe(train={"max_steps": 3}), *RESUME], 1, ["adapter_model.safetensors: not a readable"]


def c_resume_adapter_bad_header(c):
    _flip_header(c.old_checkpoint() / "adapter" / "adapter_model.safetensors")
    return ["train", c.recipe(train={"max_steps": 3}), *RESUME], 1, ["adapter_model.safetensors: not a readable"]


def c_resume_step_missing(c):
    c.trainer_state(step=None)
    return ["train", c.recipe(train={"max_steps": 3}), *RESUME], 1, ["trainer_state.json: step None is not the "
                                                                      "folder's step 2"]


def c_resume_step_not_an_integer(c):
    c.trainer_state(step="two")
    return ["train", c.recipe(train={"max_steps": 3}), *RESUME], 1, ["step 'two' is not the folder's step 2"]


def c_resume_step_negative(c):
    c.trainer_state(step=-2)
    return ["train", c.recipe(train={"max_steps": 3}), *RESUME], 1, ["step -2 is not the folder's step 2"]


def c_resume_step_fractional(c):
    c.trainer_state(step=1.5)
    return ["train", c.recipe(train={"max_steps": 3}), *RESUME], 1, ["step 1.5 is not the folder's step 2"]


def c_disk_full_in_a_checkpoint(c, monkeypatch):
    _disk_full(monkeypatch, "safetensors.torch")
    return (["train", c.recipe(output={"dir": str(c.tmp / "new")}, train={"max_steps": 1})], 1,
            ["No space left on device; the disk is full: free some space", "--resume"], "new/")


def c_merge_damaged_adapter(c):
    _flip_header(c.adapter / "adapter_model.safetensors")
    return (["merge", str(c.run), "--out", str(c.tmp / "m"), "--check-items", "0"], 1,
            ["adapter_model.safetensors: does not match the digest recorded when it was saved", "re-save it"])


def c_merge_foreign_adapter_bad_header(c):
    _flip_header(c.foreign_adapter() / "adapter_model.safetensors")
    return (["merge", str(c.adapter), "--out", str(c.tmp / "m"), "--base", str(c.model), "--check-items", "0"], 1,
            ["adapter_model.safetensors: not a readable safetensors file"])


def c_merge_garbage_config(c):
    (c.foreign_adapter() / "adapter_config.json").write_text("{not json")
    return (["merge", str(c.adapter), "--out", str(c.tmp / "m"), "--base", str(c.model), "--check-items", "0"], 1,
            ["adapter_config.json: not a readable JSON file"])


def c_merge_missing_weights(c):
    (c.adapter / "adapter_model.safetensors").unlink()
    return (["merge", str(c.run), "--out", str(c.tmp / "m"), "--check-items", "0"], 1,
            ["adapter_model.safetensors: adapter weights not found"])


def c_merge_unknown_target_modules(c):
    config = c.foreign_adapter() / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "target_modules": ["no_such_proj"]}))
    return (["merge", str(c.adapter), "--out", str(c.tmp / "m"), "--base", str(c.model), "--check-items", "0"], 1,
            ["does not fit the base", "apply it to the base it was trained on"])


def c_merge_another_base(c):
    return (["merge", str(c.run), "--out", str(c.tmp / "m"), "--base", str(c.merged), "--check-items", "0"], 1,
            ["was trained on base model", "--allow-base-mismatch"])


def c_merge_disk_full(c, monkeypatch):
    _disk_full(monkeypatch, "transformers.modeling_utils", "safe_save_file")
    return (["merge", str(c.run), "--out", str(c.tmp / "m"), "--check-items", "0"], 1,
            ["No space left on device; the disk is full"])


def c_infer_damaged_adapter(c):
    _flip_header(c.adapter / "adapter_model.safetensors")
    return (["infer", "--model", str(c.model), "--adapter", str(c.run), "--manifest", str(c.manifest), "--out",
             str(c.tmp / "a.jsonl")], 1, ["does not match the digest recorded when it was saved"])


def c_infer_unknown_target_modules(c):
    config = c.foreign_adapter() / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "target_modules": ["no_such_proj"]}))
    return (["infer", "--model", str(c.model), "--adapter", str(c.adapter), "--manifest", str(c.manifest), "--out",
             str(c.tmp / "a.jsonl")], 1, ["does not fit the base"])


def c_infer_merged_without_tokenizer(c):
    model = shutil.copytree(c.merged, c.tmp / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink(missing_ok=True)
    return (["infer", "--model", str(model), "--manifest", str(c.manifest), "--out", str(c.tmp / "a.jsonl")], 1,
            ["has no tokenizer", "copy the tokenizer files of its base model into it"])


def c_eval_damaged_adapter(c):
    _flip_header(c.adapter / "adapter_model.safetensors")
    return (["eval", str(c.manifest), "--adapter", str(c.run), "--out", str(c.tmp / "e")], 1,
            ["--adapter", "does not match the digest recorded when it was saved"])


def c_eval_garbage_config(c):
    (c.foreign_adapter() / "adapter_config.json").write_text("[1, 2")
    return (["eval", str(c.manifest), "--adapter", str(c.adapter), "--model", str(c.model), "--out",
             str(c.tmp / "e")], 1, ["adapter_config.json: not a readable JSON file"])


def c_diagnose_another_base(c):
    return (["diagnose", str(c.manifest), "--adapter", str(c.run), "--model", str(c.merged), "--out",
             str(c.tmp / "d")], 1, ["was trained on base model"])


def c_data_tts_missing_input(c):
    return ["data", "tts", "-i", str(c.tmp / "nope.jsonl"), "-o", str(c.tmp / "o")], 2, ["nope.jsonl"]


def c_testbed_build_out_is_a_file(c):
    (c.tmp / "tb").write_text("a file\n")
    return ["testbed", "build", str(c.tmp / "tb"), "--toy", "--quiet"], 2, ["Invalid value for 'OUT_DIR'", "is a file",
                                                                           "testbed build --help`"]


def c_testbed_ablate_missing_suite(c):
    return ["testbed", "ablate", str(c.tmp / "nope.yaml")], 2, ["nope.yaml"]


def c_judge_check_missing_pairs(c):
    return ["judge-check", str(c.tmp / "nope.jsonl"), "--mode", "rules"], 1, ["nope.jsonl"]


COMMAND_CASES = [v for k, v in list(globals().items()) if k.startswith("c_")]


@pytest.mark.parametrize("case", COMMAND_CASES, ids=[c.__name__[2:] for c in COMMAND_CASES])
def test_every_command_answers_bad_input_in_one_line(case, tiny_run, tiny_model_dir, tiny_manifest, tiny_merged,
                                                      tmp_path, monkeypatch):
    import inspect

    from click.testing import CliRunner
    from conftest import one_error_line, snapshot

    from cordlite.cli import main

    monkeypatch.delenv("CORDLITE_DEBUG", raising=False)
    run = shutil.copytree(tiny_run[1], tmp_path / "run")
    raw = json.loads(json.dumps(tiny_run[0]))
    raw["output"]["dir"] = str(run)
    c = Ctx(tmp_path, run, raw, tiny_model_dir, tiny_manifest, tiny_merged)
    args, code, expected, *started = case(c, monkeypatch) if len(inspect.signature(case).parameters) == 2 else case(c)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    line = one_error_line(result.output)
    for piece in expected:
        assert piece in line, (piece, line)
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing that existed was changed or removed
    new = [k for k in after if k not in before and not k.startswith(tuple([".", *started]))]
    assert not new, new  # nor anything written (a run that started and then failed: its own new folder only)
