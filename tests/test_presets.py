"""The paper's presets on small local files with the real hub schemas, the hub path (load_dataset
monkeypatched, no network), the speaks-well filter, the paper recipe, and the whole reproduction
shortened to the tiny model: prepare, eval the base, train, eval again, gap reduction."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from click.testing import CliRunner

from cordlite.cli import main
from data_tools.text.speaks_well import SpeakFilter, estimate_seconds, reason_kind, reject_reason

ROOT = Path(__file__).resolve().parents[1]
AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

NUMINA = [  # AI-MO/NuminaMath-CoT columns: source, problem, solution, messages
    {"source": "synthetic_math", "problem": "Find $x$ if $2x + 3 = 11$."},
    {"source": "olympiads", "problem": "[asy] draw((0,0)--(1,1)); [/asy] Find the area of the shaded region."},
    {"source": "cn_k12", "problem": "A store sells pencils at 3 for $1.20. How much do 12 pencils cost?"},
    {"source": "amc_aime", "problem": "As shown in the figure, triangle $ABC$ has a right angle at $C$. Find $AB$."},
    {"source": "aops_forum", "problem": "What is the sum of the first 10 positive integers?"},
]
GSM8K = [  # openai/gsm8k (main): question, answer ending in "#### N"
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = <<3+4=7>>7\n#### 7"),
    ("A book costs $12. How much do 3 books cost?", "12 * 3 = <<12*3=36>>36\n#### 36"),
    ("A farm sells 1,200 eggs a day. How many eggs in 2 days?", "1200 * 2 = 2400\n#### 2,400"),
]
MMSU = {"law": [("Which court hears appeals?\nA. Trial court\nB. Appellate court\nC. Small claims\nD. None", "B")],
        "physics": [("What is the unit of force?\nA. Newton\nB. Joule\nC. Watt\nD. Pascal", "A"),
                    ("What is the speed of light about?\nA. 3 km/s\nB. 300 m/s\nC. 300,000 km/s\nD. 30 km/s", "C")]}
OBQA = [("Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Helium\nD. Neon", "B")]
MMAU = [  # lmms-lab/mmau: id, audio, question, choices (a JSON string), answer (option text), task, ...
    ("3fe64f3d", "Based on the given audio, identify the source of the speaking voice.",
     ["Man", "Woman", "Child", "Robot"], "Man", "sound", 2.0),
    ("72fb5481", "Identify the instrument playing.", ["Piano", "Guitar", "Violin", "Drums"], "Violin", "music", 31.0),
]


def _wav_bytes(audio: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV")
    return buf.getvalue()


def _spoken(text: str) -> bytes:
    """The prompt read by espeak-ng, as VoiceBench ships its (Google TTS) prompts."""
    from data_tools.tts.backends import make_backend
    from data_tools.tts.base import TTSConfig, VoiceChoice

    audio = make_backend(TTSConfig()).synthesize(text.replace("\n", ". "), VoiceChoice("en-us", 1.3, 50, 0))
    return _wav_bytes(audio, 16000)


def _tone(seconds: float, freq: float = 440.0, sr: int = 44100) -> bytes:
    """A stereo tone at 44.1 kHz: MMAU's clips are music and sounds at their own rates."""
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return _wav_bytes(np.stack([x, 0.5 * x], axis=1), sr)


def write_sources(root: Path) -> dict[str, Path]:
    """Local copies with the hub's file layout and column names."""
    root.mkdir(parents=True, exist_ok=True)
    numina = root / "numina" / "data" / "train-00000-of-00001.parquet"
    numina.parent.mkdir(parents=True)
    pq.write_table(pa.table({"source": [r["source"] for r in NUMINA], "problem": [r["problem"] for r in NUMINA],
                             "solution": ["..."] * len(NUMINA), "messages": [[]] * len(NUMINA)}), numina)
    gsm8k = root / "gsm8k" / "main" / "test-00000-of-00001.parquet"
    gsm8k.parent.mkdir(parents=True)
    pq.write_table(pa.table({"question": [q for q, _ in GSM8K], "answer": [a for _, a in GSM8K]}), gsm8k)
    mmsu = root / "voicebench" / "mmsu"
    mmsu.mkdir(parents=True)
    for split, items in MMSU.items():
        pq.write_table(pa.table({
            "audio": pa.array([{"bytes": _spoken(q), "path": None} for q, _ in items], AUDIO),
            "prompt": [q for q, _ in items], "reference": [r for _, r in items],
            "question_id": list(range(len(items))), "cot_content": [""] * len(items),
            "category": [split] * len(items), "src": ["ori_mmlu"] * len(items)}),
            mmsu / f"{split}-00000-of-00001.parquet")
    obqa = root / "voicebench" / "openbookqa" / "test-00000-of-00001.parquet"
    obqa.parent.mkdir(parents=True)
    pq.write_table(pa.table({"audio": pa.array([{"bytes": _spoken(q), "path": None} for q, _ in OBQA], AUDIO),
                             "prompt": [q for q, _ in OBQA], "reference": [r for _, r in OBQA]}), obqa)
    mmau = root / "mmau" / "data" / "test_mini-00000-of-00001.parquet"
    mmau.parent.mkdir(parents=True)
    pq.write_table(pa.table({
        "id": [m[0] for m in MMAU], "audio": pa.array([{"bytes": _tone(m[5]), "path": None} for m in MMAU], AUDIO),
        "question": [m[1] for m in MMAU], "choices": [json.dumps(m[2]) for m in MMAU], "answer": [m[3] for m in MMAU],
        "dataset": ["AudioSet", "MusicCaps"], "task": [m[4] for m in MMAU], "split": ["test-mini"] * 2,
        "category": ["Reasoning", "Information Extraction"],
        "sub-category": ["Acoustic Source Inference", "Instrument"],
        "difficulty": ["medium", "easy"]}), mmau)
    return {"numina": numina, "gsm8k": gsm8k.parent.parent, "mmsu": mmsu, "openbookqa": obqa.parent, "mmau": mmau}


def _cli(args: list) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Every preset run once from local files, as `cordlite data preset` does."""
    root = tmp_path_factory.mktemp("presets")
    sources = write_sources(root / "src")
    outs = {}
    for name, src in sources.items():
        out = root / "out" / name
        extra = ["--n", 2] if name == "numina" else []
        code, output = _cli(["data", "preset", name, "--out", out, "--source", src, "--no-progress", *extra])
        assert code == 0, output
        outs[name] = out
    return outs


# --------------------------------------------------------------------------- presets from local files


def test_every_preset_makes_a_manifest_that_passes_check(prepared):
    for name, out in prepared.items():
        code, output = _cli(["data", "check", out / "manifest.jsonl"])
        assert code == 0 and "; ok;" in output, (name, output)
        info = json.loads((out / "preset.json").read_text())
        assert info["status"] == "done" and info["check"]["ok"] and info["preset"] == name
        assert info["licence"] and info["citation"] and info["bibtex"].startswith("@")
        for row in _rows(out / "manifest.jsonl"):
            assert row["source"] == name and row["origin"]["licence"] == info["licence"]
            assert row["origin"]["dataset"] == info["dataset"] and row["origin"]["split"] in info["splits"]


def test_numina_keeps_what_speaks_well_and_fits(prepared):
    out = prepared["numina"]
    rows = _rows(out / "manifest.jsonl")
    info = json.loads((out / "preset.json").read_text())
    # The seeded walk visits all 5 problems: the Asymptote one and the figure reference are left out,
    # 3 candidates remain (2 asked for, at least 10 spares allowed), the first 2 are voiced.
    assert info["left_out_by_kind"] == {"figure_code": 1, "figure_reference": 1} and info["candidates"] == 3
    assert len(rows) == 2 and info["rows"] == 2 and info["voiced_from"] == 2
    assert {r["origin"]["row"] for r in rows} <= {0, 2, 4} and all(r["answer"] is None for r in rows)
    for r in rows:
        assert r["question"] == NUMINA[r["origin"]["row"]]["problem"]  # the text view is the problem as written
        assert r["numina_source"] == NUMINA[r["origin"]["row"]]["source"]
        assert 0 < r["duration"] <= r["estimated_seconds"] < 28.5  # the estimate is an upper bound here
    assert info["estimate"]["clips_longer_than_estimate"] == 0 and info["tts"]["backend"] == "espeak"
    # Same command again: nothing to redo. Another --n in the same folder: refused.
    again = ["data", "preset", "numina", "--out", out, "--source", info["dataset"]]
    code, output = _cli([*again, "--n", 2, "--no-progress"])
    assert code == 0 and "2 rows" in output
    code, output = _cli([*again, "--n", 3])
    assert code == 2 and "n: 2 -> 3" in output and "Traceback" not in output


def test_gsm8k_answers_are_the_final_numbers(prepared):
    rows = _rows(prepared["gsm8k"] / "manifest.jsonl")
    assert [(r["id"], r["answer"], r["extraction"]) for r in rows] == [
        ("gsm8k-0000", "7", "gsm8k"), ("gsm8k-0001", "36", "gsm8k"), ("gsm8k-0002", "2400", "gsm8k")]
    assert rows[1]["question"] == GSM8K[1][0] and "thirty six" not in rows[1]["question"]
    assert rows[1]["spoken"] == "A book costs twelve dollars. How much do three books cost?"


def test_voicebench_audio_and_text_are_imported_as_they_are(prepared):
    rows = _rows(prepared["mmsu"] / "manifest.jsonl")
    assert [(r["id"], r["answer"]) for r in rows] == [
        ("mmsu-law-00000", "B"), ("mmsu-physics-00000", "A"), ("mmsu-physics-00001", "C")]
    assert rows[2]["question"] == MMSU["physics"][1][0] and rows[2]["category"] == "physics"
    assert all(r["extraction"] == "voicebench_mcq" and r["choices"] is None for r in rows)
    # The clip is the dataset's own bytes decoded: same samples (16 kHz in, 16 kHz out).
    source = pq.read_table(Path(rows[0]["origin"]["dataset"]) / "law-00000-of-00001.parquet").to_pylist()[0]
    want, _ = sf.read(io.BytesIO(source["audio"]["bytes"]), dtype="float32")
    got, sr = sf.read(prepared["mmsu"] / rows[0]["audio_path"], dtype="float32")
    assert sr == 16000 and got.shape == want.shape and np.abs(got - want).max() < 1e-4
    obqa = _rows(prepared["openbookqa"] / "manifest.jsonl")
    assert [(r["id"], r["answer"], r["question"]) for r in obqa] == [("openbookqa-00000", "B", OBQA[0][0])]


def test_mmau_rows_are_audio_only_with_letters_and_cut_to_30_seconds(prepared):
    rows = _rows(prepared["mmau"] / "manifest.jsonl")
    assert [(r["id"], r["answer"], r["text_view"], r["task"]) for r in rows] == [
        ("mmau-3fe64f3d", "A", False, "sound"), ("mmau-72fb5481", "C", False, "music")]
    assert rows[0]["question"] == MMAU[0][1] + "\nA. Man\nB. Woman\nC. Child\nD. Robot"
    assert rows[0]["duration"] == 2.0 and "clip_seconds" not in rows[0] and rows[0]["original_sample_rate"] == 44100
    assert rows[1]["duration"] == 30.0 and rows[1]["clip_seconds"] == 31.0  # what Qwen2-Audio's encoder hears
    info = sf.info(str(prepared["mmau"] / rows[1]["audio_path"]))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 30 * 16000)
    assert json.loads((prepared["mmau"] / "preset.json").read_text())["cut_to_max_seconds"] == 1
    # The same command again reuses both clips (no decoding) and writes the same rows.
    info = json.loads((prepared["mmau"] / "preset.json").read_text())
    code, output = _cli(["data", "preset", "mmau", "--out", prepared["mmau"], "--source", info["dataset"], "--no-progress"])
    again = json.loads((prepared["mmau"] / "preset.json").read_text())
    assert code == 0 and again["clips_from_earlier_runs"] == 2 and _rows(prepared["mmau"] / "manifest.jsonl") == rows


def test_combine_rewrites_audio_paths_and_refuses_duplicate_ids(prepared, tmp_path):
    out = tmp_path / "eval" / "manifest.jsonl"
    code, output = _cli(["data", "combine", "--out", out, *(prepared[k] / "manifest.jsonl" for k in
                                                            ("mmsu", "openbookqa", "gsm8k", "mmau"))])
    assert code == 0 and "9 rows from 4" in output, output
    assert _cli(["data", "check", out])[0] == 0
    code, output = _cli(["data", "combine", "--out", tmp_path / "x.jsonl", prepared["gsm8k"] / "manifest.jsonl",
                         prepared["gsm8k"] / "manifest.jsonl"])
    assert code == 2 and "id 'gsm8k-0000' is also in" in output


def test_bad_sources_fail_with_a_fix(tmp_path):
    code, output = _cli(["data", "preset", "mmsu", "--out", tmp_path / "o", "--source", "nowhere/x.parquet"])
    assert code == 2 and "no such file or folder, and not a hub id" in output
    bad = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"query": ["q"], "answer": ["#### 1"]}), bad)
    code, output = _cli(["data", "preset", "gsm8k", "--out", tmp_path / "o2", "--source", bad])
    assert code == 2 and "missing column(s) ['question']" in output and "['answer', 'query']" in output


def test_bad_records_become_rejects_and_the_rest_is_imported(tmp_path):
    src = tmp_path / "test-00000-of-00001.parquet"
    good = _spoken("Which gas do plants absorb? A. Oxygen. B. Carbon dioxide.")
    pq.write_table(pa.table({"audio": pa.array([{"bytes": good, "path": None}, {"bytes": b"not audio", "path": None},
                                                {"bytes": good, "path": None}], AUDIO),
                             "prompt": [OBQA[0][0]] * 3, "reference": ["B", "B", "Z"]}), src)
    code, output = _cli(["data", "preset", "openbookqa", "--out", tmp_path / "o", "--source", src, "--no-progress"])
    assert code == 0 and "1 rows" in output and "2 rejected" in output, output
    rejects = _rows(tmp_path / "o" / "rejects.jsonl")
    assert [(r["row"], r["kind"]) for r in rejects] == [(1, "bad_record"), (2, "bad_record")]
    assert "not decodable by soundfile" in rejects[0]["reason"] and "'Z'" in rejects[1]["reason"]


def test_an_interrupted_import_resumes_where_it_stopped(prepared, tmp_path, monkeypatch):
    import data_tools.presets.clips as preset_audio

    real, calls = preset_audio.import_clip, []

    def stop_at_the_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(preset_audio, "import_clip", stop_at_the_second)
    src = json.loads((prepared["mmsu"] / "preset.json").read_text())["dataset"]
    args = ["data", "preset", "mmsu", "--out", tmp_path / "m", "--source", src, "--no-progress"]
    code, _ = _cli(args)
    assert code == 130 and json.loads((tmp_path / "m" / "preset.json").read_text())["status"] == "interrupted"
    code, output = _cli(args)
    info = json.loads((tmp_path / "m" / "preset.json").read_text())
    assert code == 0 and info["rows"] == 3 and info["clips_from_earlier_runs"] == 1, output
    assert len(calls) == 4  # 2 in the first run (the second interrupted), the 2 missing in the second


def test_text_view_must_be_a_boolean(tmp_path, prepared):
    from cordlite.data import ManifestError, read_manifest

    row = _rows(prepared["mmau"] / "manifest.jsonl")[0]
    bad = tmp_path / "m.jsonl"
    bad.write_text(json.dumps({**row, "text_view": "no", "audio_path": str(prepared["mmau"] / row["audio_path"])}))
    with pytest.raises(ManifestError, match="text_view must be true or false"):
        read_manifest(bad)


# --------------------------------------------------------------------------- the hub path


def test_without_source_each_preset_asks_the_hub(monkeypatch, tmp_path):
    import datasets

    calls: list[tuple] = []
    clip = _spoken("What is two plus two? A. three. B. four.")

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if path == "AI-MO/NuminaMath-CoT":
            return datasets.Dataset.from_dict({"source": ["synthetic_math"], "problem": ["What is 2 + 2?"],
                                               "solution": ["4"], "messages": [[{"role": "user", "content": "x"}]]})
        if path == "openai/gsm8k":
            return datasets.Dataset.from_dict({"question": ["What is 2 + 2?"], "answer": ["2+2=4\n#### 4"]})
        if path == "lmms-lab/mmau":
            return datasets.Dataset.from_dict({"id": ["a1"], "audio": [{"bytes": _tone(1.0), "path": None}],
                                               "question": ["Which sound?"], "choices": ['["Dog", "Cat"]'],
                                               "answer": ["Cat"], "task": ["sound"]})
        return datasets.Dataset.from_dict({"audio": [{"bytes": clip, "path": None}],
                                           "prompt": ["What is 2 + 2?\nA. 3\nB. 4"], "reference": ["B"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    expected = {
        "numina": [("AI-MO/NuminaMath-CoT", None, "train")],
        "gsm8k": [("openai/gsm8k", "main", "test")],
        "openbookqa": [("hlt-lab/voicebench", "openbookqa", "test")],
        "mmsu": [("hlt-lab/voicebench", "mmsu", s) for s in ("law", "engineering", "other", "biology", "business",
                 "economics", "health", "philosophy", "psychology", "history", "chemistry", "physics")],
        "mmau": [("lmms-lab/mmau", None, "test_mini")],
    }
    for name, want in expected.items():
        calls.clear()
        out = tmp_path / name
        n = ["--n", 1] if name == "numina" else []
        code, output = _cli(["data", "preset", name, "--out", out, "--no-progress", *n])
        assert code == 0, output
        assert calls == want, name
        info = json.loads((out / "preset.json").read_text())
        assert info["dataset"] == want[0][0] and info["check"]["rows"] == len(want)
    calls.clear()
    code, _ = _cli(["data", "preset", "openbookqa", "--out", tmp_path / "mirror", "--source", "lmms-lab/voicebench"])
    assert code == 0 and calls == [("lmms-lab/voicebench", "openbookqa", "test")]  # a hub id in --source: a mirror

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    code, output = _cli(["data", "preset", "gsm8k", "--out", tmp_path / "off"])
    assert code == 2 and "load_dataset('openai/gsm8k', 'main', split='test') failed" in output and "--source" in output


# --------------------------------------------------------------------------- speaks well


def test_speaks_well_reasons_by_hand():
    f = SpeakFilter()
    assert reject_reason("Find $x$ if $2x + 3 = 7$.", f) is None
    assert reject_reason("[asy] draw((0,0)--(1,1)); [/asy] Find the area.", f).startswith("figure code")
    assert reject_reason("Given the table:\n| x | y |\n|---|---|\n| 1 | 2 |\nFind y.", f) == "a table"
    cases = r"Solve $\begin{cases} x+y=1 \\ x-y=3 \end{cases}$ for $x$."
    assert reject_reason(cases, f).startswith("a LaTeX environment")
    assert reason_kind(reject_reason("In the diagram below, find the angle.", f)) == "figure_reference"
    assert reject_reason("已知函数 f(x) = x + 1, find f(2).", f) == "non-English text"
    assert reason_kind(reject_reason("Compute $" + "x+" * 60 + "1$ for x = 1.", f)) == "long_latex"
    assert reject_reason("Find x.", f) == "only 7 spoken characters"
    # 13 characters per second at speed 1.0, times the slowest speed 0.9: 117 characters take 10 s.
    assert estimate_seconds("a" * 117, f) == pytest.approx(10.0)
    long = "A farmer has some cows and some hens in a field and counts the legs. " * 5  # 345 characters
    assert reason_kind(reject_reason(long, f)) == "too_long"  # 345 / 11.7 = 29.5 s > 0.95 x 30 = 28.5 s


# --------------------------------------------------------------------------- the paper recipe


def test_paper_recipe_holds_the_papers_settings():
    from cordlite.recipe import load_recipe

    r = load_recipe(ROOT / "recipes" / "paper_qwen2audio.yaml", check_paths=False)
    assert (r.optim.lr, r.train.max_steps, r.rollout.group_size, r.rollout.max_new_tokens) == (3e-5, 3000, 4, 200)
    assert (r.loss.alpha, r.loss.beta, r.loss.top_k, r.loss.lambda_tok, r.loss.lambda_seq) == (2.0, 2.0, 20, 1.0, 1.0)
    assert (r.rollout.distill_temperature, r.rollout.group_temperature) == (1.0, 1.5)
    assert r.loss.teacher == "base" and r.loss.tok_reduction == "sum" and not r.rollout.share_rollouts
    assert r.model.name_or_path == "Qwen/Qwen2-Audio-7B-Instruct"
    assert r.data.train_manifest == "data/numina/manifest.jsonl"


# --------------------------------------------------------------------------- the reproduction, shortened


def test_reproduction_end_to_end_on_the_tiny_model(prepared, short_answer_model_dir, tmp_path):
    """docs/paper_reproduction.md on CPU: the same commands, tiny model and tiny local sets."""
    evalset = tmp_path / "eval" / "manifest.jsonl"
    assert _cli(["data", "combine", "--out", evalset, *(prepared[k] / "manifest.jsonl" for k in
                                                         ("mmsu", "openbookqa", "gsm8k", "mmau"))])[0] == 0
    common = ["--device", "cpu", "--max-new-tokens", 12, "--batch-size", 4]
    code, output = _cli(["eval", evalset, "--model", short_answer_model_dir, "--out", tmp_path / "eval_base", *common])
    assert code == 0, output
    # A random model has no gap worth closing. As in test_evaluate, make the multiple-choice ground truth
    # the letter the base read from its own text view (greedy, and a guess seeded per item and view), so
    # the text view scores 100% there and the audio view only where it reaches the same letter.
    letters = {r["id"]: r["extracted"] for r in _rows(tmp_path / "eval_base" / "responses.jsonl")
               if r["modality"] == "text" and r["judged_by"] == "voicebench_mcq"}
    rows = [{**r, "answer": letters.get(r["id"], r["answer"])} for r in _rows(evalset)]
    evalset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, output = _cli(["eval", evalset, "--model", short_answer_model_dir, "--out", tmp_path / "eval_base",
                         "--overwrite", *common])
    assert code == 0, output
    base = json.loads((tmp_path / "eval_base" / "summary.json").read_text())
    assert base["subsets"]["mmsu"]["text_acc"] == base["subsets"]["openbookqa"]["text_acc"] == 100.0
    assert base["audio_only_subsets"] == ["mmau"] and base["subsets"]["mmau"]["text_acc"] is None
    assert base["subsets"]["mmau"]["gap"] is None and base["subsets"]["mmau"]["n"] == 2
    responses = _rows(tmp_path / "eval_base" / "responses.jsonl")
    assert len(responses) == 2 * 7 + 2  # 7 items with both views, 2 audio-only
    assert sorted(r["judged_by"] for r in responses if r["modality"] == "audio") == ["gsm8k"] * 3 + ["mmau"] * 2 + [
        "voicebench_mcq"] * 4

    run = tmp_path / "run"
    code, output = _cli(["train", ROOT / "recipes" / "paper_qwen2audio.yaml",
                         "--set", f"model.name_or_path={short_answer_model_dir}", "--set", "model.device=cpu",
                         "--set", "model.dtype=auto", "--set", "train.mixed_precision=auto",
                         "--set", "train.gradient_checkpointing=off", "--set", "train.max_steps=2",
                         "--set", "train.batch_size=1", "--set", "train.micro_batch_size=1",
                         "--set", "optim.warmup_steps=1", "--set", "rollout.max_new_tokens=8",
                         "--set", "loss.top_k=4", "--set", "lora.r=4", "--set", "lora.alpha=8",
                         "--set", f"data.train_manifest={prepared['numina'] / 'manifest.jsonl'}",
                         "--set", f"output.dir={run}", "--set", "output.progress=false"])
    assert code == 0, output
    assert len(_rows(run / "metrics.jsonl")) == 2 and (run / "adapter" / "adapter_config.json").is_file()

    code, output = _cli(["eval", evalset, "--adapter", run / "adapter", "--out", tmp_path / "eval_cord",
                         "--baseline", tmp_path / "eval_base" / "summary.json", *common])
    assert code == 0, output
    method = json.loads((tmp_path / "eval_cord" / "summary.json").read_text())
    b = method["baseline"]
    # Table 1's arithmetic over the benchmarks with a text view; MMAU is reported on its own.
    tables = ("gsm8k", "mmsu", "openbookqa")
    assert b["benchmarks"] == list(tables) and set(b["audio_only"]) == {"mmau"}
    avg_base = sum(base["subsets"][k]["text_acc"] - base["subsets"][k]["audio_acc"] for k in tables) / 3
    avg_method = sum(base["subsets"][k]["text_acc"] - method["subsets"][k]["audio_acc"] for k in tables) / 3
    assert b["avg_gap_base"] == pytest.approx(avg_base) and b["avg_gap_method"] == pytest.approx(avg_method)
    assert avg_base > 0 and b["gap_reduction"] == pytest.approx((avg_base - avg_method) / avg_base)
    assert (f"gap reduction {100 * b['gap_reduction']:.1f}% (average gap against the base text view: base "
            f"{avg_base:.2f} -> this run {avg_method:.2f})") in output
    assert "## Gap reduction against" in (tmp_path / "eval_cord" / "summary.md").read_text()
