"""`cordlite eval` and `cordlite diagnose` end to end on the tiny model, plus their pure parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cordlite.cli import main
from cordlite.eval.diagnose import analyse
from cordlite.judge.verify import same_final_answer

PNG = b"\x89PNG\r\n\x1a\n"


def _run(args: list[str]):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


def _rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def adapter_dir(short_answer_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with non-zero B on the short-answer tiny model, saved as training saves it."""
    from cordlite.config import LoraConfig, ModelConfig, QuantizationConfig, TrainConfig
    from cordlite.models.adapter import save_adapter
    from cordlite.models.load import load_base
    from cordlite.models.lora import attach_lora
    from cordlite.models.runtime import resolve_runtime

    mc, qc = ModelConfig(name_or_path=str(short_answer_model_dir), device="cpu"), QuantizationConfig(mode="none")
    rt = resolve_runtime(mc, qc, TrainConfig())
    model, _ = load_base(mc, qc, rt)
    model = attach_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), rt)
    g = torch.Generator().manual_seed(3)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.5
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "adapter", {"base_model": str(short_answer_model_dir)})


@pytest.fixture
def count_loads(monkeypatch) -> list[str]:
    from transformers import PreTrainedModel

    loads: list[str] = []
    real = PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(cls.__name__)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    return loads


def test_eval_end_to_end(short_answer_model_dir, tiny_manifest, adapter_dir, tmp_path, count_loads):
    common = ["--device", "cpu", "--max-new-tokens", 16, "--batch-size", 4]
    first = tmp_path / "first"
    res = _run(["eval", tiny_manifest, "--model", short_answer_model_dir, "--out", first, *common])
    assert res.exit_code == 0, res.output
    for name in ("responses.jsonl", "summary.json", "summary.md", "accuracy.png", "run.json"):
        assert (first / name).is_file(), name
    assert (first / "accuracy.png").read_bytes()[:8] == PNG
    rows = _rows(first / "responses.jsonl")
    assert len(rows) == 16 and sorted({r["modality"] for r in rows}) == ["audio", "text"]
    s = json.loads((first / "summary.json").read_text())
    assert s["n_items"] == 8 and s["subsets"]["tiny_spoken_arith"]["n"] == 8
    assert s["decoding"] == {"greedy": True, "temperature": None, "top_p": None, "max_new_tokens": 16, "seed": 0,
                             "batch_size": 4, "quantization": "none"}
    assert s["text_acc"] == 100 * sum(r["correct"] for r in rows if r["modality"] == "text") / 8

    # Ground truth = the model's own greedy text-view reply: greedy decoding is deterministic, so the
    # text view must now score 100%, and the audio view scores where it reaches the same answer.
    answers = {r["id"]: r["response"] for r in rows if r["modality"] == "text"}
    manifest = tmp_path / "own_answers.jsonl"
    lines = []
    for line in tiny_manifest.read_text().splitlines():
        row = json.loads(line)
        row.update(answer=answers[row["id"]], audio_path=str(tiny_manifest.parent / row["audio_path"]))
        lines.append(json.dumps(row))
    manifest.write_text("\n".join(lines) + "\n")
    base = tmp_path / "base"
    assert _run(["eval", manifest, "--model", short_answer_model_dir, "--out", base, *common]).exit_code == 0
    sb = json.loads((base / "summary.json").read_text())
    assert sb["text_acc"] == 100.0 and sb["counts"]["truncated_text"] == 0
    audio = [r for r in _rows(base / "responses.jsonl") if r["modality"] == "audio"]
    assert [r["correct"] for r in audio] == [
        same_final_answer(r["response"], answers[r["id"]], r["choices"], truncated=r["truncated"]) for r in audio]
    x = sb["audio_acc"]
    assert x < 100 and sb["gap"] == pytest.approx(100 - x)

    # The adapter (its base read from cordlite_adapter.json), against the base run.
    method = tmp_path / "method"
    res = _run(["eval", manifest, "--adapter", adapter_dir, "--out", method, "--baseline", base / "summary.json", *common])
    assert res.exit_code == 0, res.output
    sm = json.loads((method / "summary.json").read_text())
    y = sm["audio_acc"]
    b = sm["baseline"]
    assert sm["model"] == str(short_answer_model_dir) and sm["adapter"] == str(adapter_dir)
    assert b["avg_gap_base"] == pytest.approx(100 - x) and b["avg_gap_method"] == pytest.approx(100 - y)
    assert b["gap_reduction"] == pytest.approx((y - x) / (100 - x))  # (AVG_base - AVG_method) / AVG_base
    assert b["warnings"] == []
    assert "## Gap reduction against" in (method / "summary.md").read_text()
    assert f"gap reduction {100 * b['gap_reduction']:.1f}%" in res.output

    # Resume: a batch cut short is redone alone; a finished run loads no model at all.
    count_loads.clear()
    lines = (base / "responses.jsonl").read_text().splitlines()
    (base / "responses.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    assert _run(["eval", manifest, "--model", short_answer_model_dir, "--out", base, *common]).exit_code == 0
    assert count_loads == ["Qwen2AudioForConditionalGeneration"]
    again = json.loads((base / "summary.json").read_text())
    assert {k: again[k] for k in ("text_acc", "audio_acc", "subsets")} == {k: sb[k] for k in ("text_acc", "audio_acc", "subsets")}
    count_loads.clear()
    assert _run(["eval", manifest, "--model", short_answer_model_dir, "--out", base, *common]).exit_code == 0
    assert count_loads == []
    res = _run(["eval", manifest, "--model", short_answer_model_dir, "--out", base, "--device", "cpu",
                "--max-new-tokens", 5, "--batch-size", 4])
    assert res.exit_code == 1 and "max_new_tokens: 16 -> 5" in res.output and "--overwrite" in res.output


def test_eval_takes_the_training_prompt_from_the_adapter_or_its_run(short_answer_model_dir, tiny_manifest,
                                                                    adapter_dir, tmp_path):
    """Without --instruction and --max-new-tokens, eval answers as the adapter was trained: from the
    recipe in its metadata, or from its run's config.yaml; the same answers as with both spelled out.
    A baseline made with another prompt is refused before any answer, unless allowed."""
    import shutil

    import yaml

    common = ["--device", "cpu", "--limit", 4, "--batch-size", 4]
    recorded = tmp_path / "recorded" / "adapter"
    shutil.copytree(adapter_dir, recorded)
    meta = json.loads((recorded / "cordlite_adapter.json").read_text())
    meta["recipe"] = {"data": {"instruction": "Answer briefly.", "system_prompt": None}, "rollout": {"max_new_tokens": 6}}
    (recorded / "cordlite_adapter.json").write_text(json.dumps(meta))
    res = _run(["eval", tiny_manifest, "--adapter", recorded, "--out", tmp_path / "a", *common])
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert a["prompt"] == {"instruction": "Answer briefly.", "system_prompt": None}
    assert a["decoding"]["max_new_tokens"] == 6
    assert a["settings_from"]["instruction"] == f"the adapter's training recipe ({recorded.resolve()})"
    assert "prompt: instruction 'Answer briefly.' (the adapter's training recipe" in res.output
    spelled = _run(["eval", tiny_manifest, "--adapter", recorded, "--out", tmp_path / "b", "--instruction",
                    "Answer briefly.", "--max-new-tokens", 6, *common])
    assert spelled.exit_code == 0, spelled.output
    assert [r["response"] for r in _rows(tmp_path / "a" / "responses.jsonl")] == \
        [r["response"] for r in _rows(tmp_path / "b" / "responses.jsonl")]

    # A run directory: its config.yaml says how it trained (the adapter's metadata has no recipe here).
    run = tmp_path / "run"
    shutil.copytree(adapter_dir, run / "adapter")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"instruction": "Say the number."},
                                                     "rollout": {"max_new_tokens": 5}}))
    res = _run(["eval", tiny_manifest, "--adapter", run, "--out", tmp_path / "c", *common])
    assert res.exit_code == 0, res.output
    c = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert c["prompt"]["instruction"] == "Say the number." and c["decoding"]["max_new_tokens"] == 5
    assert c["adapter"] == str((run / "adapter").resolve())

    # The first run against the second as its baseline: another instruction and length, refused
    # before anything is answered or written.
    res = _run(["eval", tiny_manifest, "--adapter", recorded, "--out", tmp_path / "d", "--baseline",
                tmp_path / "c" / "summary.json", *common])
    assert res.exit_code == 1
    assert "prompt.instruction: baseline 'Say the number.', this run 'Answer briefly.'" in res.output
    assert "decoding.max_new_tokens: baseline 5, this run 6" in res.output
    assert "--allow-baseline-mismatch" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "d" / "responses.jsonl").exists()
    res = _run(["eval", tiny_manifest, "--adapter", recorded, "--out", tmp_path / "d", "--baseline",
                tmp_path / "c" / "summary.json", "--allow-baseline-mismatch", *common])
    assert res.exit_code == 0, res.output
    warnings = json.loads((tmp_path / "d" / "summary.json").read_text())["baseline"]["warnings"]
    assert "prompt.instruction differs: baseline 'Say the number.', this run 'Answer briefly.'" in warnings
    assert "warning: prompt.instruction differs" in res.output

    # A base model with nothing recorded: no instruction, the default length, and a note that says so.
    res = _run(["eval", tiny_manifest, "--model", short_answer_model_dir, "--out", tmp_path / "e", *common])
    assert res.exit_code == 0, res.output
    e = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert e["prompt"]["instruction"] == "" and e["decoding"]["max_new_tokens"] == 200
    assert e["settings_from"] == {"instruction": "none recorded", "max_new_tokens": "the default (200)"}
    assert "no training prompt is recorded" in res.output
    # --recipe: the base prompted as that recipe trains (its model, instruction and rollout length).
    recipe = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "tiny_cpu.yaml").read_text())
    recipe["model"]["name_or_path"] = str(short_answer_model_dir)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = _run(["eval", tiny_manifest, "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "f", *common])
    assert res.exit_code == 0, res.output
    f = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert f["model"] == str(short_answer_model_dir) and f["prompt"]["instruction"] == "Answer the question."
    assert f["decoding"]["max_new_tokens"] == 24 and f["settings_from"]["instruction"] == f"--recipe {tmp_path / 'r.yaml'}"


def test_eval_with_the_llm_judge_writes_its_cache(short_answer_model_dir, tiny_manifest, tmp_path):
    out = tmp_path / "llm"
    res = _run(["eval", tiny_manifest, "--model", short_answer_model_dir, "--out", out, "--device", "cpu",
                "--max-new-tokens", 16, "--judge", "llm", "--limit", 4])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    rows = _rows(out / "responses.jsonl")
    assert s["judge"]["mode"] == "llm" and s["judge"]["model"] == "self"
    assert s["judge"]["by_llm"] == sum(r["judged_by"] == "llm" for r in rows) > 0
    assert s["judge"]["unparseable"] == sum(r["judge_unparseable"] for r in rows)
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) >= 1


def test_eval_refuses_items_without_answers(tiny_manifest, tmp_path):
    bad = tmp_path / "m.jsonl"
    row = json.loads(tiny_manifest.read_text().splitlines()[0])
    row.pop("answer")
    row["audio_path"] = str(tiny_manifest.parent / row["audio_path"])
    bad.write_text(json.dumps(row) + "\n")
    res = _run(["eval", bad, "--model", "nowhere", "--out", tmp_path / "o"])
    assert res.exit_code == 1 and "1 row(s) have no `answer`" in res.output and "Traceback" not in res.output


def test_eval_reports_a_late_too_long_clip_before_the_model_loads(tiny_manifest, tmp_path):
    import numpy as np
    import soundfile as sf

    rows = [json.loads(line) for line in tiny_manifest.read_text().splitlines() if line.strip()]
    for r in rows:
        r["audio_path"] = str(tiny_manifest.parent / r["audio_path"])
    sf.write(tmp_path / "long.wav", np.zeros(31 * 16000, dtype=np.float32), 16000)
    rows.append({**rows[0], "id": "late", "audio_path": str(tmp_path / "long.wav")})
    bad = tmp_path / "m.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _run(["eval", bad, "--model", "nowhere", "--out", tmp_path / "o"])  # no model: it never gets that far
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{bad}: 1 clip(s) cannot be used; nothing was run:" in res.output
    assert "row 'late': " in res.output and "is 31.0 s, longer than the audio window (30.0 s)" in res.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- diagnose


def test_analyse_by_hand():
    rows = [{"id": "a", "rollout": 0, "tokens": ["x", "y", "z"], "kl": [0.3, 0.2, 0.1]},
            {"id": "b", "rollout": 0, "tokens": ["x", "w"], "kl": [0.4, 0.0]}]
    r = analyse(rows, top=2, min_count=2)
    assert r["n_tokens"] == 5 and r["mean"] == pytest.approx(0.2)
    assert r["p80"] == pytest.approx(0.32)  # sorted 0, .1, .2, .3, .4: 80% of the way = .3 + .2 * .1
    # relative positions 0, .5, 1, 0, 1 against .3, .2, .1, .4, 0: cov -.3, var 1.0 and .1
    assert r["pearson_relative_position"] == pytest.approx(-0.3 / np.sqrt(0.1))
    assert r["top_positions"][0] == {"id": "b", "rollout": 0, "position": 1, "length": 2, "token": "x", "kl": 0.4,
                                     "context": "[x]w"}
    assert r["top_tokens"] == [{"token": "x", "count": 2, "mean_kl": pytest.approx(0.35), "max_kl": 0.4}]
    assert r["share_of_kl_in_top20pct_tokens"] == pytest.approx(0.4 / 1.0)


def test_diagnose_end_to_end(tiny_model_dir, tiny_manifest, tmp_path):
    from cordlite.data import AudioCache, encode_views, read_manifest
    from cordlite.eval.io import load_eval_model

    out = tmp_path / "diag"
    res = _run(["diagnose", tiny_manifest, "--model", tiny_model_dir, "--out", out, "--device", "cpu", "--limit", 3,
                "--rollouts", 2, "--max-new-tokens", 6, "--batch-size", 2, "--strip", "q0002"])
    assert res.exit_code == 0, res.output
    for name in ("diagnose.json", "diagnose.md", "kl_histogram.png", "heat_strip.png", "rollouts.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "kl_histogram.png").read_bytes()[:8] == PNG and (out / "heat_strip.png").read_bytes()[:8] == PNG
    rows = _rows(out / "rollouts.jsonl")
    report = json.loads((out / "diagnose.json").read_text())
    values = [d for r in rows for d in r["kl"]]
    assert len(rows) == 6 and report["n_rollouts"] == 6 and report["n_tokens"] == len(values)
    assert report["p80"] == pytest.approx(float(np.percentile(values, 80)))
    assert min(values) >= -1e-6 and report["heat_strip"] == {"id": "q0002", "rollout": 0}
    assert "Highest-divergence positions" in (out / "diagnose.md").read_text()

    # D_t of the first rollout, recomputed independently: one plain forward pass per view.
    net, processor, _ = load_eval_model(str(tiny_model_dir), None, "none", "cpu")
    ex = read_manifest(tiny_manifest)[0]
    views = encode_views(processor, [ex], AudioCache())
    ids = torch.tensor([rows[0]["token_ids"]])

    def logp(prompt: dict) -> torch.Tensor:
        full = torch.cat([prompt["input_ids"], ids], dim=1)
        extra = {k: prompt[k] for k in ("input_features", "feature_attention_mask") if k in prompt}
        with torch.no_grad():
            logits = net(input_ids=full, attention_mask=torch.ones_like(full), **extra).logits
        p = prompt["input_ids"].shape[1]
        return logits[0, p - 1 : p - 1 + ids.shape[1]].log_softmax(-1)

    s, t = logp(views.audio), logp(views.text)
    expected = (s.exp() * (s - t)).sum(-1)
    assert rows[0]["id"] == ex.id
    assert torch.allclose(torch.tensor(rows[0]["kl"]), expected, atol=1e-4)


def test_diagnose_with_adapter_scores_the_teacher_with_adapters_off(adapter_dir, tiny_manifest, tmp_path):
    out = tmp_path / "diag"
    res = _run(["diagnose", tiny_manifest, "--adapter", adapter_dir, "--out", out, "--device", "cpu", "--limit", 2,
                "--max-new-tokens", 6])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "diagnose.json").read_text())
    assert report["teacher"] == "base text view (adapters off)" and report["n_rollouts"] == 2
