"""data_tools.job.build: the TTS job end to end (espeak-ng and a tiny VITS), resume, kills, rejects."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_tools.check import check_manifest
from data_tools.job.build import build
from data_tools.job.config import job_from_dict
from data_tools.text.speakable import speakable
from data_tools.tts.backends import make_backend
from data_tools.tts.base import BackendError, TTSConfig, VoiceChoice, VoicePlan
from data_tools.tts.neural import KokoroBackend

REPO = Path(__file__).resolve().parents[1]
MANIFEST_KEYS = {"id", "audio_path", "question", "answer", "choices", "duration", "voice", "source",
                 "source_line", "spoken"}


def _questions(n: int, short: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        a, b = 3 + i % 17, 5 + (i * 7) % 23
        if short:
            out.append({"id": f"q{i:04d}", "question": f"What is {a} + {b}?", "answer": str(a + b)})
        elif i % 5 == 4:
            out.append({"id": f"q{i:04d}", "question": f"Which is larger, {a} or {b}?",
                        "choices": [str(a), str(b)], "answer": int(b > a)})
        else:
            out.append({"id": f"q{i:04d}", "question": f"Sam has ${a} and earns ${b} more. How much now?",
                        "answer": str(a + b)})
    return out


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _job(src: Path, out: Path, **extra) -> object:
    raw = {"source": {"path": str(src)}, "output": {"dir": str(out)}, "workers": 2}
    for dotted, value in extra.items():
        node = raw
        *parents, last = dotted.split("__")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return job_from_dict(raw)


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _assert_complete(out: Path, ids: list[str]) -> list[dict]:
    """Every id exactly once, each audio file whole, no temp files left."""
    rows = _manifest(out)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    for r in rows:
        info = sf.info(out / r["audio_path"])
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.frames / 16000 == pytest.approx(r["duration"], abs=1e-3)
        audio, _ = sf.read(out / r["audio_path"])
        assert len(audio) == info.frames
    assert not [p.name for p in (out / "audio").iterdir() if p.name.startswith(".")]
    assert len(list((out / "audio").iterdir())) == len(ids)
    return rows


def test_build_espeak_manifest_schema_and_summary(tmp_path: Path) -> None:
    qs = _questions(6)
    src = _write_jsonl(tmp_path / "arith.jsonl", qs)
    out = tmp_path / "spoken"
    cfg = _job(src, out)
    result = build(cfg, progress=False)

    assert (result.rows, result.new_rows, result.rejected, result.interrupted) == (6, 6, 0, False)
    rows = _assert_complete(out, [q["id"] for q in qs])
    plan = VoicePlan.for_backend(make_backend(cfg.tts), cfg.tts, cfg.seed)
    for line, (q, r) in enumerate(zip(qs, rows), start=1):  # sorted by source line
        assert set(r) == MANIFEST_KEYS
        assert (r["id"], r["source"], r["source_line"]) == (q["id"], "arith", line)
        assert r["audio_path"] == f"audio/{q['id']}.wav"
        assert r["voice"] == plan.pick(q["id"]).label  # the seeded rule, not the worker order
        assert 0.5 < r["duration"] < 15
        if "choices" in q:
            assert r["choices"] == q["choices"] and r["answer"] in "AB"
            assert r["question"].splitlines()[1:] == [f"A. {q['choices'][0]}", f"B. {q['choices'][1]}"]
        else:
            assert (r["question"], r["answer"], r["choices"]) == (q["question"], q["answer"], None)
            assert r["spoken"] == speakable(q["question"]) and "$" not in r["spoken"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["complete"]
    assert summary["audio_hours"] == pytest.approx(sum(r["duration"] for r in rows) / 3600, abs=1e-4)
    assert "GPL-3.0-or-later" in summary["licence"]
    assert (out / "durations.png").stat().st_size > 1000
    assert "rows in manifest | 6" in (out / "summary.md").read_text()
    assert check_manifest(out / "manifest.jsonl")["ok"]

    # A rerun voices nothing and leaves the files alone.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "audio").iterdir()}
    again = build(cfg, progress=False)
    assert (again.new_rows, again.skipped, again.rows) == (0, 6, 6)
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "audio").iterdir()}


def test_rejects_carry_line_and_reason(tmp_path: Path) -> None:
    lines = [
        {"id": "ok1", "question": "What is 2 + 2?", "answer": "4"},                 # 1
        "this is not json",                                                          # 2
        "[1, 2, 3]",                                                                 # 3
        {"id": "nq", "prompt": "wrong field"},                                      # 4
        {"id": "empty", "question": "  "},                                           # 5
        {"id": "ok1", "question": "Same id again?"},                                 # 6
        {"id": "badc", "question": "Pick", "choices": "red or blue"},                # 7
        {"id": "sym", "question": "$$ {} $$"},                                       # 8
        {"id": "long", "question": "word " * 80},                                    # 9
        {"id": "slow", "question": "Count: one, two, three, four, five, six, seven."},  # 10
        {"id": "ok2", "question": "Name a color.", "choices": ["red", "blue"], "answer": 0},  # 11
    ]
    src = _write_jsonl(tmp_path / "mixed.jsonl", lines)
    out = tmp_path / "out"
    result = build(_job(src, out, text__max_chars=300, audio__max_seconds=3.0), progress=False)

    rejects = {r["line"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert sorted(rejects) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    expect = {
        2: ("malformed", "not valid JSON"), 3: ("malformed", "expected a JSON object, got list"),
        4: ("malformed", "missing question field 'question'"), 5: ("empty_text", "empty question"),
        6: ("duplicate_id", "duplicate id 'ok1' (first on line 1)"),
        7: ("malformed", "expected a list of options"), 8: ("empty_text", "nothing to speak"),
        9: ("text_too_long", "more than text.max_chars=300"),
        10: ("audio_too_long", "longer than audio.max_seconds=3.0"),
    }
    for line, (kind, reason) in expect.items():
        assert rejects[line]["kind"] == kind and reason in rejects[line]["reason"], rejects[line]
    assert [r["id"] for r in _manifest(out)] == ["ok1", "ok2"]
    assert (result.rows, result.rejected) == (2, 9)
    assert json.loads((out / "summary.json").read_text())["rejects_by_kind"]["malformed"] == 4

    # Rejected lines count as finished: a rerun records none of them twice.
    build(_job(src, out, text__max_chars=300, audio__max_seconds=3.0), progress=False)
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 9


def test_resume_repairs_a_damaged_output_folder(tmp_path: Path) -> None:
    qs = _questions(5)
    src = _write_jsonl(tmp_path / "q.jsonl", qs)
    out = tmp_path / "out"
    cfg = _job(src, out)
    build(cfg, progress=False)
    rows = _manifest(out)
    # What kills can leave: a duplicated row, a row cut mid-line, a row whose audio vanished,
    # an audio file without its row, and a temp file.
    text = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text(text[0] + text[0] + text[1] + text[3] + text[4][:25])
    (out / rows[3]["audio_path"]).unlink()
    (out / "audio" / ".q0000.tmp-123-456.wav").write_bytes(b"RIFF")

    result = build(cfg, progress=False)
    # rows 0 and 1 survive; 2 (no row), 3 (no audio) and 4 (cut line) are voiced again.
    assert (result.skipped, result.new_rows, result.rows) == (2, 3, 5)
    assert [r["id"] for r in _manifest(out)] == [q["id"] for q in qs]
    _assert_complete(out, [q["id"] for q in qs])


def test_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    from data_tools.job.outdir import JobError

    src = _write_jsonl(tmp_path / "q.jsonl", _questions(2))
    out = tmp_path / "out"
    build(_job(src, out), progress=False)
    with pytest.raises(JobError, match=r"seed: 0 -> 1.*new output.dir"):
        build(_job(src, out, seed=1), progress=False)
    # Settings that do not change the data may differ: workers, limit.
    assert build(_job(src, out, workers=1, source__limit=1), progress=False).new_rows == 0


def test_limit_then_continue(tmp_path: Path) -> None:
    qs = _questions(6)
    src = _write_jsonl(tmp_path / "q.jsonl", qs)
    out = tmp_path / "out"
    assert build(_job(src, out, source__limit=2), progress=False).rows == 2
    result = build(_job(src, out), progress=False)
    assert (result.skipped, result.new_rows) == (2, 4)
    _assert_complete(out, [q["id"] for q in qs])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_half_way_then_rerun_gives_every_row_once(tmp_path: Path, sig: signal.Signals) -> None:
    n = 80
    qs = _questions(n, short=True)
    src = _write_jsonl(tmp_path / "q.jsonl", qs)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_tools.cli", "tts", "-i", str(src), "-o", str(out),
           "--workers", "2", "--no-progress"]
    # A new session, so the signal reaches the whole group (espeak-ng children with the binary
    # engine too), as Ctrl-C in a terminal does.
    # SIG_DFL for SIGINT in the child: a shell starting jobs in the background (`cmd &`, as CI
    # runners may) makes them ignore SIGINT, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 20:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    done_before = manifest.read_text().count("\n")
    assert 20 <= done_before < n
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr.decode()
        assert b"rerun the same command" in stderr
        assert not (out / "rejects.jsonl").read_text()  # an interrupt is not a synthesis error
    else:
        assert proc.returncode == -signal.SIGKILL

    result = build(_job(src, out), progress=False)
    assert result.skipped == done_before  # every recorded row kept; nothing recorded is redone
    assert result.rows == n and result.rejected == 0
    _assert_complete(out, [q["id"] for q in qs])
    assert check_manifest(manifest)["ok"]


def test_kokoro_backend_explains_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as info:
        KokoroBackend(str(tmp_path), "cpu")
    msg = str(info.value)
    assert "config.json" in msg and "voices/*.pt" in msg and "hexgrad/Kokoro-82M" in msg
    if importlib.util.find_spec("kokoro") is None:
        assert "pip install kokoro" in msg


def test_voice_plan_is_a_pure_function_of_seed_and_id() -> None:
    plan = VoicePlan(("v1", "v2", "v3"), (0.8, 1.2), (30, 70), seed=7)
    picks = {f"q{i}": plan.pick(f"q{i}") for i in range(300)}
    assert {k: plan.pick(k) for k in reversed(list(picks))} == picks  # order does not matter
    assert VoicePlan(("v1", "v2", "v3"), (0.8, 1.2), (30, 70), seed=8).pick("q1") != picks["q1"]
    assert {p.name for p in picks.values()} == {"v1", "v2", "v3"}
    assert all(0.8 <= p.speed <= 1.2 and 30 <= p.pitch <= 70 for p in picks.values())
    assert picks["q1"].label == f"{picks['q1'].name}+r{round(175 * picks['q1'].speed)}+p{picks['q1'].pitch}"


# --------------------------------------------------------------------------- tiny VITS


@pytest.fixture(scope="module")
def tiny_vits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init two-speaker VitsModel and its character tokenizer, saved like a hub checkpoint."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    folder = tmp_path_factory.mktemp("tts") / "tiny-vits"
    folder.mkdir()
    vocab = {c: i for i, c in enumerate(["<pad>", *"abcdefghijklmnopqrstuvwxyz '.,?!-"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = VitsTokenizer(str(folder / "vocab.json"), pad_token="<pad>", unk_token=None, add_blank=True,
                              normalize=True, phonemize=False, is_uroman=False, language="eng")
    # Upsampling 16 x per spectrogram frame and slow speaking rates give clips of about a second.
    config = VitsConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
        flow_size=16, spectrogram_bins=17, upsample_initial_channel=16, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
        duration_predictor_filter_channels=16, duration_predictor_num_flows=1, prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        depth_separable_num_layers=1, sampling_rate=22050, num_speakers=2, speaker_embedding_size=8,
    )
    torch.manual_seed(0)
    VitsModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-4.0\ntags: [tts]\n---\n# tiny\n")
    return folder


def test_vits_backend_loads_and_synthesises(tiny_vits_dir: Path) -> None:
    backend = make_backend(TTSConfig(backend="transformers", model=str(tiny_vits_dir), device="cpu"))
    assert backend.default_voices() == ("speaker0", "speaker1")
    assert backend.licence == "model card licence: cc-by-nc-4.0"
    plan = VoicePlan.for_backend(backend, TTSConfig(speed=(0.5, 0.5)), seed=0)
    voice = plan.pick("q1")
    a = backend.synthesize("what is three plus four?", voice)
    b = backend.synthesize("what is three plus four?", voice)
    assert a.dtype == np.float32 and a.ndim == 1 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # noise seeded per row
    # 22.05 kHz model output resampled to 16 kHz, loudness-normalised to -20 dBFS (or peak-limited).
    level = 20 * np.log10(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
    assert -30 < level <= -19.9 and np.abs(a).max() <= 0.99 + 1e-6
    faster = backend.synthesize("what is three plus four?", VoiceChoice(voice.name, 1.0, None, voice.seed))
    assert len(faster) < len(a)  # speaking_rate reaches the model


def test_vits_job_end_to_end(tiny_vits_dir: Path, tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "q.jsonl", [
        {"id": "a", "question": "What is 3 + 4?"},
        {"id": "b", "question": "Is 10 > 9?", "choices": ["yes", "no"], "answer": "yes"},
        {"id": "c", "question": "你好吗"},  # no character the tiny vocabulary knows
    ])
    out = tmp_path / "vits"
    cfg = _job(src, out, tts__backend="transformers", tts__model=str(tiny_vits_dir), tts__device="cpu",
               tts__speed=[0.5, 0.5], audio__min_seconds=0.05)
    result = build(cfg, progress=False)
    assert (result.rows, result.rejected) == (2, 1)
    rows = _assert_complete(out, ["a", "b"])
    assert {r["voice"].split("+")[0] for r in rows} <= {"speaker0", "speaker1"}
    (reject,) = map(json.loads, (out / "rejects.jsonl").read_text().splitlines())
    assert (reject["line"], reject["kind"]) == (3, "synthesis_error")
    assert "tokenizer kept no characters" in reject["reason"]
    assert check_manifest(out / "manifest.jsonl", workers=1)["rows"] == 2


def test_transformers_backend_refuses_other_models(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no config.json"):
        make_backend(TTSConfig(backend="transformers", model=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "speecht5"}))
    with pytest.raises(BackendError, match="model_type='speecht5'.*not supported"):
        make_backend(TTSConfig(backend="transformers", model=str(tmp_path)))
