"""data_tools.check and the `cordlite data` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from cordlite.cli import main
from data_tools.check import CheckLimits, check_manifest


def _tone(seconds: float, sr: int = 16000, amp: float = 0.3, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    mono = (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def _bad_manifest(root: Path) -> Path:
    audio = root / "audio"
    audio.mkdir(parents=True)
    sf.write(audio / "good.wav", _tone(1.0), 16000, subtype="PCM_16")
    sf.write(audio / "rate.wav", _tone(1.0, sr=8000), 8000)
    sf.write(audio / "stereo.wav", _tone(1.0, channels=2), 16000)
    sf.write(audio / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(audio / "long.wav", _tone(31.0), 16000)
    sf.write(audio / "short.wav", _tone(0.1), 16000)
    (audio / "garbage.wav").write_bytes(b"RIFF but not really audio" * 4)
    nan = _tone(1.0)
    nan[[10, 20]] = np.nan
    sf.write(audio / "nan.wav", nan, 16000, subtype="FLOAT")
    rows = [
        {"id": "good", "audio_path": "audio/good.wav", "question": "q", "duration": 1.0},      # 1
        {"id": "rate", "audio_path": "audio/rate.wav", "question": "q"},                       # 2
        {"id": "stereo", "audio_path": "audio/stereo.wav", "question": "q"},                   # 3
        {"id": "silent", "audio_path": "audio/silent.wav", "question": "q"},                   # 4
        {"id": "long", "audio_path": "audio/long.wav", "question": "q"},                       # 5
        {"id": "short", "audio_path": "audio/short.wav", "question": "q"},                     # 6
        {"id": "garbage", "audio_path": "audio/garbage.wav", "question": "q"},                 # 7
        {"id": "gone", "audio_path": "audio/gone.wav", "question": "q"},                       # 8
        {"id": "good", "audio_path": "audio/good.wav", "question": "q"},                       # 9
        "{not json",                                                                           # 10
        {"id": "noq", "audio_path": "audio/good.wav"},                                         # 11
        {"id": "badc", "audio_path": "audio/good.wav", "question": "q", "choices": "a, b"},    # 12
        {"id": "drift", "audio_path": "audio/good.wav", "question": "q", "duration": 2.5},     # 13
        {"id": "nan", "audio_path": "audio/nan.wav", "question": "q"},                         # 14
    ]
    path = root / "manifest.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_check_finds_every_kind_of_problem(tmp_path: Path) -> None:
    report = check_manifest(_bad_manifest(tmp_path), CheckLimits(), workers=2)
    found = {(p["line"], p["kind"]) for p in report["problems"]}
    assert found == {
        (2, "sample_rate"), (3, "channels"), (4, "silence"), (5, "too_long"), (6, "too_short"),
        (7, "unreadable"), (8, "missing_file"), (9, "duplicate_id"), (10, "json"), (11, "schema"),
        (12, "schema"), (14, "not_finite"),
    }
    assert not report["ok"]
    assert [(w["line"], w["kind"]) for w in report["warnings"]] == [(13, "duration_mismatch")]
    assert report["counts"]["schema"] == 2
    assert next(p["detail"] for p in report["problems"] if p["kind"] == "not_finite") == "2 NaN or infinite samples"
    assert "8000 Hz, expected 16000 Hz" in next(p["detail"] for p in report["problems"] if p["kind"] == "sample_rate")


def test_check_ok_manifest_goes_through_the_trainers_reader(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(3):
        sf.write(audio / f"q{i}.wav", _tone(1.0 + i), 16000, subtype="PCM_16")
    rows = [{"id": f"q{i}", "audio_path": f"audio/q{i}.wav", "question": "What?", "answer": "1",
             "duration": 1.0 + i} for i in range(3)]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = check_manifest(tmp_path / "manifest.jsonl")
    assert report["ok"] and report["rows"] == 3 and report["warnings"] == []
    assert report["duration_seconds"]["total_hours"] == round(6.0 / 3600, 4)
    assert report["duration_seconds"]["median"] == 2.0


def test_a_byte_order_mark_is_one_rule_for_every_reader(tmp_path: Path) -> None:
    """A manifest saved with a UTF-8 BOM (as some Windows tools write it) passes `data check` and
    reads in the trainer's reader alike."""
    from cordlite.data import read_manifest

    sf.write(tmp_path / "q0.wav", _tone(1.0), 16000, subtype="PCM_16")
    row = {"id": "q0", "audio_path": "q0.wav", "question": "What?", "answer": "1"}
    (tmp_path / "manifest.jsonl").write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n").encode())
    report = check_manifest(tmp_path / "manifest.jsonl")
    assert report["ok"] and report["rows"] == 1, report["problems"]
    assert [ex.id for ex in read_manifest(tmp_path / "manifest.jsonl")] == ["q0"]


def test_cli_check_exit_codes_and_report(tmp_path: Path) -> None:
    bad = _bad_manifest(tmp_path / "bad")
    runner = CliRunner()
    res = runner.invoke(main, ["data", "check", str(bad), "--show", "3"])
    assert res.exit_code == 1
    assert "12 problem(s)" in res.output and "line 2 id=rate: sample_rate" in res.output
    assert "... and 9 more in the report" in res.output
    assert not json.loads((tmp_path / "bad" / "check.json").read_text())["ok"]

    good_dir = tmp_path / "good"
    (good_dir / "audio").mkdir(parents=True)
    sf.write(good_dir / "audio" / "a.wav", _tone(1.0), 16000)
    (good_dir / "m.jsonl").write_text(json.dumps({"id": "a", "audio_path": "audio/a.wav", "question": "q"}) + "\n")
    res = runner.invoke(main, ["data", "check", str(good_dir / "m.jsonl"), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0 and "; ok;" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["ok"]


def test_cli_tts_flags_config_and_errors(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("question,A,B,gold\nWhich is bigger?,7,9,B\nWhat is 2 + 2?,,,\n")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"source:\n  path: {src}\n  fields: {{choices: [A, B], answer: gold}}\n"
                   f"output:\n  dir: {tmp_path / 'out'}\n")
    runner = CliRunner()
    res = runner.invoke(main, ["data", "tts", str(cfg), "--workers", "1", "--no-progress", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "2 rows (2 new, 0 already done), 0 rejected" in res.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["source_line"], r["answer"], r["choices"]) for r in rows] == [(2, "B", ["7", "9"]), (3, None, None)]
    assert rows[0]["spoken"] == "Which is bigger? A. seven. B. nine."

    res = runner.invoke(main, ["data", "tts", "--input", str(tmp_path / "nope.jsonl"), "--set", "tts.sped=1",
                               "--set", "workers=-1"])
    assert res.exit_code == 2
    for part in ("source.path: ", "does not exist", "tts.sped: unknown key; did you mean 'speed'?",
                 "workers: -1 must be >= 0", "output.dir: required"):
        assert part in res.output, res.output
    assert "Traceback" not in res.output

    res = runner.invoke(main, ["data", "tts", "-i", str(src), "-o", str(tmp_path / "k"), "--backend", "kokoro",
                               "--model", str(tmp_path)])
    assert res.exit_code == 2 and "error: kokoro backend unavailable" in res.output


def test_cli_speak() -> None:
    res = CliRunner().invoke(main, ["data", "speak", "What is $\\frac{3}{4}$ of $20?"])
    assert res.exit_code == 0 and res.output == "What is three quarters of twenty dollars?\n"
