"""The optimizer step as the GPU runs it, checked on the tiny model: every prompt's rollouts sampled
together and split only by the KV budget (the same update however the calls are split), the
reference prefetch inside the budget, the step's cost in metrics.jsonl (peak memory, tokens/s, model
FLOPs by the stated formula), and fp16 with loss scaling where a GPU has no bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_raw

from cordlite.recipe import recipe_from_dict
from cordlite.train import trainer as trainer_module
from cordlite.train.trainer import train


def _raw(model_dir: Path, manifest: Path, out: Path, **train_fields) -> dict:
    return tiny_raw(model_dir, manifest, out, steps=2, rollout={"max_new_tokens": 6},
                    train={"batch_size": 4, "seed": 1, **train_fields}, output={"keep_last": 5})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _per_prompt_kv_bytes(model_dir: Path, manifest: Path) -> int:
    """The KV cache of one prompt's 3 rows at the tiny model's longest audio prompt (float32)."""
    from transformers import AutoConfig

    from cordlite.data import AudioCache, encode_views, read_manifest
    from cordlite.models.families import detect_family
    from cordlite.models.kv_cache import call_bytes

    processor = detect_family(str(model_dir)).load_processor(str(model_dir))
    processor.tokenizer.padding_side = "left"
    width = encode_views(processor, read_manifest(manifest), AudioCache(), "Answer the question.").audio[
        "input_ids"].shape[1]
    return call_bytes(AutoConfig.from_pretrained(model_dir), torch.float32, 1, 3, width, 6, shared=True)


@pytest.fixture(scope="module")
def budget_runs(tiny_model_dir, tiny_manifest, tmp_path_factory):
    """Two runs of 2 steps x 4 prompts, micro-batches of 1: one whose KV budget holds the step's 4
    prompts in one generate call, one whose budget holds 2 (two calls), also for the references."""
    root = tmp_path_factory.mktemp("budget")
    one_prompt = _per_prompt_kv_bytes(tiny_model_dir, tiny_manifest)
    runs = {}
    for name, prompts in (("wide", 8), ("narrow", 2)):
        raw = _raw(tiny_model_dir, tiny_manifest, root / name)
        raw["rollout"]["kv_budget_gb"] = prompts * one_prompt / 1e9
        train(recipe_from_dict(raw))
        runs[name] = root / name
    return runs, one_prompt


def test_a_step_samples_its_prompts_together_and_a_budget_only_splits_the_calls(budget_runs):
    """With room for the step's 4 prompts the rollouts are one generate call (the decode loop runs once
    per step, not once per micro-batch); a budget of 2 prompts makes two calls, each within it. The
    rows are drawn from keys of (seed, step, place), so both runs train bit for bit the same adapter."""
    runs, one_prompt = budget_runs
    wide, narrow = _metrics(runs["wide"]), _metrics(runs["narrow"])
    assert [r["generate_calls"] for r in wide] == [1, 1] and [r["generate_calls"] for r in narrow] == [2, 2]
    assert all(r["kv_cache_gb"] <= 2 * one_prompt / 1e9 + 1e-12 for r in narrow)
    assert all(r["kv_cache_gb"] > 2 * one_prompt / 1e9 for r in wide)
    for a, b in zip(wide, narrow):
        assert a["tokens_generated"] == b["tokens_generated"] and a["loss"] == b["loss"]
    wa, wb = _adapter(runs["wide"]), _adapter(runs["narrow"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_reference_prefetch_keeps_within_the_budget(budget_runs):
    """The first step generates the references of its block (the 8 prompts of the tiny set) in as many
    calls as the budget needs: 8 rows of one text prompt each fit the wide budget in one call; the
    narrow one (2 audio prompts of 3 rows) holds fewer text rows, so more calls, none above it."""
    runs, one_prompt = budget_runs
    wide, narrow = _metrics(runs["wide"])[0], _metrics(runs["narrow"])[0]
    assert wide["reference_calls"] == 1 and narrow["reference_calls"] >= 2
    assert narrow["reference_kv_cache_gb"] <= 2 * one_prompt / 1e9 + 1e-12
    refs = [json.loads(line)["id"] for line in (runs["narrow"] / "reference_answers.jsonl").read_text().splitlines()]
    assert len(refs) == len(set(refs)) == 8


def test_metrics_give_peak_memory_throughput_and_model_flops(budget_runs, tiny_model_dir):
    """Every row has the step's peak memory (peak RSS on CPU), rollout tokens per second and model
    FLOPs by the formula of cordlite.train.meter from the row's own position counts; MFU is left
    empty where the device's peak is unknown (a CPU). runtime.json records the precision chosen."""
    from cordlite.models.families import detect_family
    from cordlite.train.meter import step_flops

    runs, _ = budget_runs
    model = detect_family(str(tiny_model_dir)).transformers_class().from_pretrained(tiny_model_dir)
    text = model.config.text_config
    layer = 4 * text.hidden_size * text.hidden_size + 3 * text.hidden_size * text.intermediate_size  # q k v o + mlp
    n_dec, n_head = text.num_hidden_layers * layer, text.vocab_size * text.hidden_size
    for r in _metrics(runs["wide"]):
        assert r["peak_memory_gb"] > 0.1 and r["mfu"] is None
        assert r["tokens_per_s"] == pytest.approx(r["tokens_generated"] / r["rollout_s"])
        assert r["decode_positions"] == 4 * 3 * 6 and r["grad_head_positions"] > 0  # 4 prompts x 3 rows x 6 steps
        assert r["tflops"] * 1e12 == pytest.approx(step_flops(n_dec, n_head, r))
        by_hand = (2 * n_dec * (r["prefill_positions"] + r["decode_positions"] + r["teacher_positions"]
                                + r.get("reference_positions", 0.0))
                   + 2 * n_head * (r["decode_positions"] + r["teacher_head_positions"]
                                   + r.get("reference_decode_positions", 0.0))
                   + 4 * (n_dec * r["grad_positions"] + n_head * r["grad_head_positions"]))
        assert r["tflops"] * 1e12 == pytest.approx(by_hand)
    runtime = json.loads((runs["wide"] / "runtime.json").read_text())
    assert runtime["dtype"] == "float32" and runtime["autocast"] is None and runtime["loss_scaling"] is False


def test_fp16_with_loss_scaling_is_chosen_where_the_gpu_has_no_bf16(monkeypatch):
    """A T4 or V100 (no native bf16): auto gives fp16 weights, fp16 autocast and loss scaling; an explicit
    bf16 is refused with the fix. A GPU with bf16 keeps bf16 and no scaling."""
    from cordlite.config import ModelConfig, QuantizationConfig, TrainConfig
    from cordlite.models import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(runtime, "cuda_has_bf16", lambda device: False)
    rt = runtime.resolve_runtime(ModelConfig(device="cuda"), QuantizationConfig(), TrainConfig())
    assert (rt.dtype, rt.compute_dtype, rt.amp_dtype, rt.autocast, rt.loss_scaling) == (
        torch.float16, torch.float16, torch.float16, True, True)
    assert rt.describe()["autocast"] == "float16" and rt.describe()["device_name"] == "Tesla T4"
    with pytest.raises(RuntimeError, match="'bf16' but Tesla T4 has no native bf16; use auto"):
        runtime.resolve_runtime(ModelConfig(device="cuda"), QuantizationConfig(), TrainConfig(mixed_precision="bf16"))
    monkeypatch.setattr(runtime, "cuda_has_bf16", lambda device: True)
    rt = runtime.resolve_runtime(ModelConfig(device="cuda"), QuantizationConfig(), TrainConfig())
    assert (rt.dtype, rt.amp_dtype, rt.loss_scaling) == (torch.bfloat16, torch.bfloat16, False)


def test_loss_scaling_trains_the_same_adapter_and_resumes_with_its_scale(tiny_model_dir, tiny_manifest, tmp_path,
                                                                         monkeypatch):
    """The fp16 path's loss scaling, run on the CPU in fp32: scaling the loss by 2^16 and unscaling the
    gradients before clipping are exact, so the adapter is bit for bit the unscaled run's; the
    scaler's state is in every checkpoint, and a run resumed from step 1 ends where an unbroken one does."""
    from dataclasses import replace

    plain = tmp_path / "plain"
    train(recipe_from_dict(_raw(tiny_model_dir, tiny_manifest, plain, batch_size=2)))
    real = trainer_module.resolve_runtime
    monkeypatch.setattr(trainer_module, "resolve_runtime", lambda *a, **k: replace(real(*a, **k), loss_scaling=True))
    scaled = tmp_path / "scaled"
    train(recipe_from_dict(_raw(tiny_model_dir, tiny_manifest, scaled, batch_size=2)))
    assert [r["loss_scale"] for r in _metrics(scaled)] == [65536.0, 65536.0]
    state = json.loads((scaled / "checkpoints" / "step_000001" / "trainer_state.json").read_text())
    assert state["scaler"]["scale"] == 65536.0
    wa, wb = _adapter(plain), _adapter(scaled)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    import shutil

    shutil.rmtree(scaled / "checkpoints" / "step_000002")
    shutil.rmtree(scaled / "adapter")
    train(recipe_from_dict(_raw(tiny_model_dir, tiny_manifest, scaled, batch_size=2)), resume=True)
    wc = _adapter(scaled)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_a_kv_budget_below_one_prompt_is_refused_before_step_1(tiny_model_dir, tiny_manifest, tmp_path):
    """rollout.kv_budget_gb too small for the manifest's longest prompt and its rows: one error line
    with the size it needs, from the command, before any step (no metrics written)."""
    import yaml
    from click.testing import CliRunner

    from cordlite.cli import main

    raw = _raw(tiny_model_dir, tiny_manifest, tmp_path / "run")
    raw["rollout"]["kv_budget_gb"] = 1e-6
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "rollout.kv_budget_gb: 1e-06 GB is below the" in lines[0]
    assert "raise it to at least" in lines[0] and "the longest prompt of" in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
