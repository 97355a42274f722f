"""Bad input to `cordlite train`, as a table: each case ends with its exit status and one `error:`
line naming the file or field and the fix, no traceback, and no file that existed before is
changed or removed. The cases that can be seen without the model are seen before it loads."""

from __future__ import annotations

import hashlib
import json
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
