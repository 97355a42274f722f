"""Deployment on the tiny Qwen2-Audio: merge + export, the merge check, kill safety, adapter hygiene, infer.

The adapter is made without training: LoRA attached to the tiny base with lora_B drawn at random
(a fresh adapter has B = 0, which would make every merge trivially exact), saved as the trainer does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from cordlite.audio import load_audio, resample
from cordlite.cli import main as cli
from cordlite.recipe import recipe_from_dict, recipe_to_dict
from cordlite.data import read_manifest
from cordlite.deploy.infer import (answer_clips, answer_file, answer_manifest, audio_prompt_inputs, load_answerer,
                                   read_clip)
from cordlite.deploy.merge import TMP_TAG, MergeError, merge
from cordlite.deploy.loading import resolve_adapter
from cordlite.deploy.merge_check import Reference, _parting_margin
from cordlite.deploy.model_card import model_card
from cordlite.models.adapter import AdapterBaseMismatch, check_adapter_base, load_adapter, save_adapter
from cordlite.models.runtime import Runtime
from cordlite.models.lora import attach_lora

REPO = Path(__file__).resolve().parents[1]
GREEDY_TOKENS = 8


def _recipe(model_dir: Path, manifest: Path, out: Path) -> dict:
    raw = {
        "model": {"name_or_path": str(model_dir), "device": "cpu"},
        "quantization": {"mode": "none"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train_manifest": str(manifest), "instruction": "Answer the question."},
        "rollout": {"max_new_tokens": 6, "group_size": 2},
        "train": {"max_steps": 5, "batch_size": 1, "micro_batch_size": 1},
        "output": {"dir": str(out), "progress": False},
    }
    return recipe_to_dict(recipe_from_dict(raw))


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tiny_manifest: Path, tmp_path_factory) -> Path:
    """A run directory as `cordlite train` leaves it: config.yaml, adapter/, an eval summary."""
    from transformers import Qwen2AudioForConditionalGeneration

    run = tmp_path_factory.mktemp("deploy") / "run"
    recipe = _recipe(tiny_model_dir, tiny_manifest, run)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(recipe))
    base = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir)
    rt = Runtime(torch.device("cpu"), torch.float32, torch.float32, False, False)
    from cordlite.config import LoraConfig

    model = attach_lora(base, LoraConfig(r=4, alpha=8, dropout=0.0), rt, seed=0)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    save_adapter(model, run / "adapter", {"base_model": str(tiny_model_dir), "recipe": recipe, "steps": 5})
    (run / "eval").mkdir()
    (run / "eval" / "summary.json").write_text(json.dumps({  # as `cordlite eval` writes it, abridged
        "model": str(tiny_model_dir), "n_items": 8, "text_acc": 50.0, "audio_acc": 25.0, "gap": 25.0,
        "average_over_subsets": {"text_acc": 50.0, "audio_acc": 25.0, "gap": 25.0},
        "decoding": {"greedy": True, "max_new_tokens": 6}, "baseline": None}))
    return run


@pytest.fixture(scope="module")
def merged(run_dir: Path):
    """float32 merge in small shards, so the export has several safetensors files."""
    out = run_dir.parent / "merged-fp32"
    return merge(run_dir, out, dtype="float32", max_shard_size="300KB", check_items=3,
                 check_tokens=GREEDY_TOKENS, progress=lambda *a: None)


def _items(manifest: Path, n: int = 3):
    return read_manifest(manifest)[:n]


# --------------------------------------------------------------------------- merge


def test_merge_writes_a_plain_checkpoint_with_card(merged, run_dir):
    out = merged.out
    files = sorted(p.name for p in out.iterdir())
    shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
    assert len(shards) >= 3, files
    for needed in ("model.safetensors.index.json", "config.json", "generation_config.json", "chat_template.jinja",
                   "processor_config.json", "tokenizer.json", "README.md", "merge_check.json", "cordlite_export.json"):
        assert needed in files
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert not [k for k in index["weight_map"] if "lora" in k]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    export = json.loads((out / "cordlite_export.json").read_text())
    assert export["steps"] == 5 and export["prompt"]["instruction"] == "Answer the question."
    assert export["adapter"] == str((run_dir / "adapter").resolve())
    card = (out / "README.md").read_text()
    check = json.loads((out / "merge_check.json").read_text())["merged"]
    assert check == merged.check.to_dict()
    assert f"{check['max_abs_logit_diff']:.3g}" in card and "| training steps | 5 |" in card
    assert "| audio_acc | 25 |" in card and "| average_over_subsets.gap | 25 |" in card  # eval/summary.json
    assert "decoding" not in card and "baseline" not in card  # settings and empty fields left out
    assert not list(out.parent.glob(f".{out.name}{TMP_TAG}*"))


def test_merge_check_figures(merged):
    c = merged.check
    print("\nmerge check:", c.summary())
    assert c.passed and c.items == 3 and c.identical_answers == 3
    assert c.tolerance == pytest.approx(1e-4 * max(1.0, c.logit_scale))
    assert c.max_abs_logit_diff <= 1e-4
    assert c.adapter_effect > 100 * c.max_abs_logit_diff  # the merge moved the model, and moved it right


FRESH = textwrap.dedent("""
    import sys
    sys.modules["peft"] = None; sys.modules["cordlite"] = None  # the export must need neither
    import json, soundfile as sf, torch
    from transformers import AutoProcessor, GenerationConfig, Qwen2AudioForConditionalGeneration
    model_dir, items, tokens, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    msgs = [{"role": "user", "content": [{"type": "audio", "audio": "q"}, {"type": "text", "text": "Answer the question."}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    clips = [sf.read(p, dtype="float32")[0] for p in items]
    inputs = processor(text=[text] * len(clips), audio=clips, sampling_rate=16000, return_tensors="pt", padding=True)
    gen = GenerationConfig(do_sample=False, max_new_tokens=tokens, output_logits=True, return_dict_in_generate=True,
                           eos_token_id=model.generation_config.eos_token_id, pad_token_id=model.generation_config.pad_token_id)
    with torch.no_grad():
        res = model.generate(**inputs, generation_config=gen)
    torch.save({"input_ids": inputs["input_ids"], "sequences": res.sequences,
                "logits": torch.stack(res.logits, 1)}, out)
""")


def test_fresh_process_from_pretrained_matches_base_plus_adapter(merged, run_dir, tiny_model_dir, tiny_manifest,
                                                                 tmp_path):
    from transformers import AutoProcessor, GenerationConfig, Qwen2AudioForConditionalGeneration

    items = [str(ex.audio_path) for ex in _items(tiny_manifest)]
    result = tmp_path / "fresh.pt"
    proc = subprocess.run([sys.executable, "-c", FRESH, str(merged.out), json.dumps(items), str(GREEDY_TOKENS),
                           str(result)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = torch.load(result)

    base = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.tokenizer.padding_side = "left"
    model = load_adapter(base, run_dir / "adapter").eval()
    inputs = audio_prompt_inputs(processor, [load_audio(p) for p in items], "Answer the question.")
    assert torch.equal(inputs["input_ids"], fresh["input_ids"])  # the exported processor + template
    gc = base.generation_config
    gen = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_TOKENS, output_logits=True,
                           return_dict_in_generate=True, eos_token_id=gc.eos_token_id, pad_token_id=gc.pad_token_id)
    with torch.no_grad():
        ref = model.generate(**inputs, generation_config=gen)
        with model.disable_adapter():
            plain = model.generate(**inputs, generation_config=gen)
    ref_logits = torch.stack(ref.logits, 1)
    diff = (fresh["logits"] - ref_logits).abs().max().item()
    effect = (torch.stack(plain.logits, 1)[:, :1] - ref_logits[:, :1]).abs().max().item()
    print(f"\nfresh process vs base + adapter: greedy identical, max |logit diff| {diff:.3g} "
          f"(adapter moves first-token logits by {effect:.3g})")
    assert torch.equal(fresh["sequences"], ref.sequences)
    assert diff <= 1e-4
    assert effect > 0.05


def test_kill_midway_leaves_no_output(run_dir, tmp_path):
    out = tmp_path / "killed"
    flag = tmp_path / "saved.flag"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from cordlite.deploy.merge import merge
        def progress(stage, message):
            if stage == "saved":  # shards are on disk, the check and the rename are still to come
                Path({str(flag)!r}).write_text(message)
                time.sleep(300)
        merge({str(run_dir)!r}, {str(out)!r}, dtype="float32", max_shard_size="300KB", check_items=1,
              check_tokens=2, progress=progress)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "merge did not reach the save stage in time"
            time.sleep(0.2)
        temps = list(tmp_path.glob(f".killed{TMP_TAG}*"))
        assert len(temps) == 1 and len(list(temps[0].rglob("model-*.safetensors"))) >= 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()
    assert not out.exists()  # nothing half-written where the user looks
    # The next merge into the same place removes the dead one's temporary directory and succeeds.
    stages = []
    merge(run_dir, out, dtype="float32", check_items=0, progress=lambda s, m: stages.append((s, m)))
    assert any("killed" in m for s, m in stages)
    assert (out / "config.json").is_file() and not list(tmp_path.glob(f".killed{TMP_TAG}*"))


def test_error_inside_save_keeps_the_previous_export(run_dir, tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    real_save = mu.safe_save_file
    calls = []

    def failing_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(mu, "safe_save_file", failing_save)
    with pytest.raises(OSError, match="No space left"):
        merge(run_dir, out, dtype="float32", overwrite=True, max_shard_size="300KB", check_items=0,
              progress=lambda *a: None)
    assert len(calls) == 3
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert not list(tmp_path.glob(f".export{TMP_TAG}*"))


def test_merge_refuses_non_empty_out_and_out_holding_the_adapter(run_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(MergeError, match="not empty; pass --overwrite"):
        merge(run_dir, out)
    with pytest.raises(MergeError, match="contains"):
        merge(run_dir, run_dir, overwrite=True)
    with pytest.raises(MergeError, match="--eval-summary: cannot read"):
        merge(run_dir, tmp_path / "new", eval_summary=[str(tmp_path / "missing.json")])
    res = CliRunner().invoke(cli, ["merge", str(run_dir), "--out", str(out)])
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output


def test_merge_bfloat16_and_nf4_export(run_dir, merged, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    bf16 = merge(run_dir, tmp_path / "bf16", check_items=2, check_tokens=GREEDY_TOKENS, progress=lambda *a: None)
    print("\nbfloat16:", bf16.check.summary())
    assert bf16.check.passed and bf16.check.tolerance == pytest.approx(5e-2 * max(1.0, bf16.check.logit_scale))
    assert json.loads((bf16.out / "config.json").read_text())["dtype"] == "bfloat16"

    nf4 = merge(run_dir, tmp_path / "nf4", dtype="float32", quantize="nf4", check_items=2,
                check_tokens=GREEDY_TOKENS, progress=lambda *a: None)
    print("NF4:", nf4.nf4_check.summary())
    q = json.loads((nf4.out / "config.json").read_text())["quantization_config"]
    assert q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4"
    assert "model.audio_tower" in q["llm_int8_skip_modules"]
    assert nf4.check.passed and nf4.nf4_check.tolerance is None
    assert 0 < nf4.nf4_check.max_abs_logit_diff < nf4.nf4_check.logit_scale
    from safetensors import safe_open

    with safe_open(str(nf4.out / "model.safetensors"), "pt") as f:  # key prefixes follow the base's layout
        key = {k.split(".")[0]: k for k in f.keys() if k.endswith("layers.0.self_attn.q_proj.weight")}
        q_proj = f.get_tensor(next(v for k, v in key.items() if "language_model" in v))
        tower = f.get_tensor(next(v for k, v in key.items() if "audio_tower" in v))
    assert q_proj.dtype == torch.uint8 and q_proj.numel() == 64 * 64 // 2  # two 4-bit codes per byte
    assert tower.dtype == torch.float32 and tower.shape == (64, 64)  # the encoder stays unquantised
    weights = sum(p.stat().st_size for p in nf4.out.glob("*.safetensors"))
    full = sum(p.stat().st_size for p in merged.out.glob("*.safetensors"))
    assert weights < full
    import bitsandbytes as bnb

    model = Qwen2AudioForConditionalGeneration.from_pretrained(nf4.out)
    assert isinstance(model.model.language_model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert "NF4" in (nf4.out / "README.md").read_text()


def test_parting_margin_by_hand():
    # Vocabulary of 3; two answer positions. Reference greedy: tokens [0, 2]; logits at position 1:
    # token 2 -> 1.00, token 1 -> 0.99, so an answer [0, 1] parts at a near-tie of margin 0.01.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.99, 1.0]]])
    ref = Reference(torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.long), logits, ["a"])
    same = Reference(torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.long), logits, ["a"])
    other = Reference(torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.long), logits, ["b"])
    early = Reference(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long), logits, ["c"])
    assert _parting_margin(ref, same, 0) is None
    assert _parting_margin(ref, other, 0) == pytest.approx(0.01)
    assert _parting_margin(ref, early, 0) == pytest.approx(2.0)


def test_model_card_is_pure_markdown():
    export = {"base_model": "Qwen/Qwen2-Audio-7B-Instruct", "adapter": "runs/x/adapter", "steps": 3000,
              "dtype": "bfloat16", "quantization": "none", "recipe": {"lora": {"r": 16}, "loss": {"alpha": 2.0}},
              "prompt": {"instruction": "Answer."}}
    check = {"items": 4, "source": "m.jsonl", "identical_answers": 4, "near_tie_flips": 0, "answer_tokens": 64,
             "max_abs_logit_diff": 0.0123, "logit_scale": 31.0, "adapter_effect": 2.5, "dtype": "bfloat16",
             "tolerance": 1.55, "passed": True}
    card = model_card("cord-7b", export, check, None, {"eval/summary.json": {"gap": 8.9}})
    assert card.startswith('---\nbase_model: "Qwen/Qwen2-Audio-7B-Instruct"\n')
    assert "| training steps | 3000 |" in card and "| lora.r | 16 |" in card and "| gap | 8.9 |" in card
    assert "0.0123 (largest |logit| 31" in card and "-> passed" in card


# --------------------------------------------------------------------------- adapter hygiene


def test_adapter_on_a_different_base_is_refused(run_dir, tiny_model_dir, tiny_manifest, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(other)
    with pytest.raises(AdapterBaseMismatch) as e:
        load_adapter(model, run_dir / "adapter")
    assert str(tiny_model_dir) in str(e.value) and str(other) in str(e.value)
    assert "--allow-base-mismatch" in str(e.value)
    wrapped = load_adapter(model, run_dir / "adapter", allow_base_mismatch=True)  # the explicit override
    assert any("lora_B" in n for n, _ in wrapped.named_parameters())
    with pytest.raises(AdapterBaseMismatch, match="Qwen/Qwen2-Audio-7B-Instruct"):
        check_adapter_base(run_dir / "adapter", "Qwen/Qwen2-Audio-7B-Instruct")
    res = CliRunner().invoke(cli, ["merge", str(run_dir), "--out", str(tmp_path / "m"), "--base", str(other)])
    assert res.exit_code == 1 and "was trained on base model" in res.output and "Traceback" not in res.output
    clip = read_manifest(tiny_manifest)[0].audio_path
    res = CliRunner().invoke(cli, ["infer", "--model", str(other), "--adapter", str(run_dir), "--audio", str(clip)])
    assert res.exit_code == 1 and str(other) in res.output


def test_same_base_by_another_path_spelling_is_accepted(run_dir, tiny_model_dir, tmp_path, monkeypatch):
    # Recorded as a relative path from the training cwd; loaded through a symlink by absolute path.
    monkeypatch.chdir(tiny_model_dir.parent.parent)
    rel = os.path.relpath(tiny_model_dir)
    adapter = tmp_path / "adapter"
    shutil.copytree(run_dir / "adapter", adapter)
    meta = json.loads((adapter / "cordlite_adapter.json").read_text())
    (adapter / "cordlite_adapter.json").write_text(json.dumps({**meta, "base_model": rel}))
    link = tmp_path / "link"
    link.symlink_to(tiny_model_dir)
    check_adapter_base(adapter, str(link))
    check_adapter_base(adapter, str(tiny_model_dir) + "/")


def test_resolve_checkpoint_adapter_reads_state_json(run_dir, tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_000004"
    shutil.copytree(run_dir / "adapter", ckpt / "adapter")
    (ckpt / "adapter" / "cordlite_adapter.json").unlink()  # checkpoints keep the metadata in state.json
    meta = json.loads((run_dir / "adapter" / "cordlite_adapter.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({"step": 4, "base_model": meta["base_model"], "recipe": meta["recipe"]}))
    shutil.copy(run_dir / "config.yaml", run / "config.yaml")
    src = resolve_adapter(ckpt / "adapter")
    assert (src.steps, src.base_model, src.run_dir) == (4, meta["base_model"], run.resolve())
    with pytest.raises(MergeError, match="no final adapter yet.*step_000004"):
        resolve_adapter(run)


# --------------------------------------------------------------------------- infer

RATES = (8000, 16000, 22050, 44100)


@pytest.fixture(scope="module")
def audio_variants(tiny_manifest, tmp_path_factory) -> tuple[np.ndarray, dict]:
    """One espeak clip (16 kHz mono) written as WAV and FLAC at 4 rates, mono and stereo.

    The clip is halved first so that stereo channels x + n and x - n (mean exactly x) never clip."""
    x = 0.5 * load_audio(read_manifest(tiny_manifest)[0].audio_path)
    root = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(0)
    files = {}
    for sr in RATES:
        y = resample(x, 16000, sr)
        n = (0.02 * rng.standard_normal(y.size)).astype(np.float32)
        for channels, data in ((1, y), (2, np.stack([y + n, y - n], axis=1))):
            for fmt in ("wav", "flac"):
                path = root / f"q_{sr}_{channels}ch.{fmt}"
                sf.write(path, data, sr, subtype="PCM_16")
                files[(sr, channels, fmt)] = path
    return x, files


def test_infer_reads_any_rate_and_channel_count(merged, audio_variants):
    x, files = audio_variants
    lowpassed = resample(resample(x, 16000, 8000), 8000, 16000)  # what an 8 kHz recording can hold
    ans = load_answerer(str(merged.out), device="cpu", max_new_tokens=GREEDY_TOKENS)
    assert ans.instruction == "Answer the question."  # recorded at training, carried by the export
    answers = {}
    for (sr, ch, fmt), path in files.items():
        clip = read_clip(path)
        ref = lowpassed if sr == 8000 else x
        m = min(clip.size, ref.size)
        assert abs(clip.size - x.size) <= 1, (path.name, clip.size, x.size)
        rel = np.sqrt(np.mean((clip[:m] - ref[:m]) ** 2)) / np.sqrt(np.mean(ref**2))
        assert rel < (2e-3 if sr <= 16000 else 3e-2), (path.name, rel)  # PCM16 rounding; resampling filters
        answers[(sr, ch, fmt)] = answer_file(ans, path)
    original = answer_clips(ans, [x])[0]
    for ch in (1, 2):
        for fmt in ("wav", "flac"):
            assert answers[(16000, ch, fmt)] == original
    assert all(isinstance(a, str) for a in answers.values()) and len(answers) == 16


def test_infer_batch_manifest_resumes(merged, audio_variants, tmp_path):
    _, files = audio_variants
    chosen = [files[k] for k in ((8000, 1, "wav"), (16000, 2, "flac"), (22050, 1, "flac"), (44100, 2, "wav"))]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": p.name, "audio_path": str(p), "question": "q?", "answer": "1"})
                                + "\n" for p in chosen))
    ans = load_answerer(str(merged.out), device="cpu", max_new_tokens=GREEDY_TOKENS)
    out = tmp_path / "answers.jsonl"
    assert answer_manifest(ans, manifest, out, progress=False) == (4, 0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.name for p in chosen] and rows[0]["answer"] == "1"
    assert rows[3]["prediction"] == answer_file(ans, chosen[3])  # batch mode answers like single mode
    # Interrupted: the last row lost and a torn line left behind.
    out.write_text("".join(line + "\n" for line in out.read_text().splitlines()[:3]) + '{"id": "q_44')
    assert answer_manifest(ans, manifest, out, progress=False) == (1, 3)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_infer_cli(merged, run_dir, tiny_model_dir, audio_variants, tmp_path):
    _, files = audio_variants
    runner = CliRunner()
    flac = files[(44100, 2, "flac")]
    res = runner.invoke(cli, ["infer", "--model", str(merged.out), "--audio", str(flac),
                              "--max-new-tokens", str(GREEDY_TOKENS), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ans = load_answerer(str(merged.out), device="cpu", max_new_tokens=GREEDY_TOKENS)
    assert res.stdout.strip() == answer_file(ans, flac)
    # base + adapter answers like the merged checkpoint (float32, greedy)
    res2 = runner.invoke(cli, ["infer", "--model", str(tiny_model_dir), "--adapter", str(run_dir), "--audio",
                               str(flac), "--max-new-tokens", str(GREEDY_TOKENS), "--device", "cpu"])
    assert res2.exit_code == 0 and res2.stdout.strip() == res.stdout.strip()

    missing = tmp_path / "nope.wav"
    res = runner.invoke(cli, ["infer", "--model", str(merged.out), "--audio", str(missing)])
    assert res.exit_code == 1 and str(missing) in res.output and "Traceback" not in res.output
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"not audio at all")
    res = runner.invoke(cli, ["infer", "--model", str(merged.out), "--audio", str(broken)])
    assert res.exit_code == 1 and str(broken) in res.output and "could not decode" in res.output
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    res = runner.invoke(cli, ["infer", "--model", str(merged.out), "--audio", str(empty)])
    assert res.exit_code == 1 and str(empty) in res.output and "no samples" in res.output
    bad_manifest = tmp_path / "m.jsonl"
    bad_manifest.write_text(json.dumps({"id": "a", "audio_path": "gone.wav", "question": "q"}) + "\n")
    res = runner.invoke(cli, ["infer", "--model", str(merged.out), "--manifest", str(bad_manifest),
                              "--out", str(tmp_path / "a.jsonl")])
    assert res.exit_code == 1 and "gone.wav" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["infer", "--model", str(merged.out)])
    assert res.exit_code == 2 and "exactly one of --audio" in res.output


# --------------------------------------------------------------------------- end to end


def test_train_on_nf4_then_merge_run_and_checkpoint(tiny_model_dir, tiny_manifest, tmp_path):
    """The real workflow: `cordlite train` on an NF4 base, then merge the run and one of its checkpoints."""
    raw = _recipe(tiny_model_dir, tiny_manifest, tmp_path / "run")
    raw.update(quantization={**raw["quantization"], "mode": "nf4"}, optim={**raw["optim"], "lr": 1e-2},
               train={**raw["train"], "max_steps": 1}, output={**raw["output"], "save_every": 1})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    res = runner.invoke(cli, ["train", str(recipe)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    meta = json.loads((run / "adapter" / "cordlite_adapter.json").read_text())
    assert meta["base_model_resolved"] == str(tiny_model_dir.resolve()) and meta["steps"] == 1

    res = runner.invoke(cli, ["merge", str(run), "--out", str(tmp_path / "m"), "--dtype", "float32",
                              "--check-items", "2", "--check-tokens", "4"])
    assert res.exit_code == 0, res.output
    assert "merge check: 2 items" in res.stdout and "-> PASS" in res.stdout
    check = json.loads((tmp_path / "m" / "merge_check.json").read_text())["merged"]
    assert check["max_abs_logit_diff"] <= 1e-4 and check["adapter_effect"] > 0
    export = json.loads((tmp_path / "m" / "cordlite_export.json").read_text())
    assert export["steps"] == 1 and export["recipe"]["quantization"]["mode"] == "nf4"

    step1 = run / "checkpoints" / "step_000001" / "adapter"  # metadata in the checkpoint's state.json
    res = runner.invoke(cli, ["merge", str(step1), "--out", str(tmp_path / "m1"), "--dtype", "float32",
                              "--check-items", "0"])
    assert res.exit_code == 0, res.output
    export1 = json.loads((tmp_path / "m1" / "cordlite_export.json").read_text())
    assert export1["steps"] == 1 and export1["run_dir"] == str(run.resolve())
