"""GPU tests: NF4 on CUDA trains, the adapters-off teacher equals a plain base, merge works, the
shared-prefix decode and the shared-prompt gradient pass give the per-row numbers on CUDA, a frame
store serves CUDA features, fp16 with loss scaling trains, and the step benchmark's tiny mode runs on
CUDA. Marked `gpu`: tests/conftest.py skips them without CUDA. benchmarks/gpu_check.sh runs them.

    python -m pytest -m gpu tests/test_gpu.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytestmark = pytest.mark.gpu


def _raw(model_dir, manifest, out) -> dict:
    return {
        "model": {"name_or_path": str(model_dir), "device": "cuda"},
        "quantization": {"mode": "nf4", "compute_dtype": "bfloat16"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train_manifest": str(manifest), "instruction": "Answer the question."},
        "rollout": {"max_new_tokens": 6, "group_size": 2},
        "loss": {"top_k": 3},
        "optim": {"lr": 1e-2},
        "train": {"max_steps": 2, "batch_size": 2, "micro_batch_size": 1, "seed": 0, "mixed_precision": "bf16",
                  "gradient_checkpointing": "on"},
        "output": {"dir": str(out), "progress": False, "save_every": 100},
    }


def _load(recipe):
    from cordlite.models.load import load_base
    from cordlite.models.lora import attach_lora
    from cordlite.models.runtime import resolve_runtime

    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
    model, processor = load_base(recipe.model, recipe.quantization, rt)
    return attach_lora(model, recipe.lora, rt, seed=0), processor, rt


def _plain_nf4(model_dir):
    """The base loaded on its own with the same NF4 settings and no peft: what the teacher must equal."""
    from transformers import BitsAndBytesConfig, Qwen2AudioForConditionalGeneration

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16,
                             llm_int8_skip_modules=["model.audio_tower", "model.multi_modal_projector", "lm_head"])
    return Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.bfloat16, quantization_config=bnb,
                                                              device_map={"": 0}).eval()


def _text_logprobs(model, views, ids, mask, off: bool):
    from cordlite.models.lora import adapters_off
    from cordlite.models.sampling import repeat_rows
    from cordlite.objective.logprobs import completion_hidden, full_logprobs

    prompt = repeat_rows(views.text, torch.arange(ids.shape[0], device=ids.device) % views.text["input_ids"].shape[0])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        if off:
            with adapters_off(model):
                return full_logprobs(model, completion_hidden(model, prompt, ids, mask), 4)
        return full_logprobs(model, completion_hidden(model, prompt, ids, mask), 4)


def test_nf4_on_cuda_trains_lora_only_and_the_teacher_stays_the_plain_base(tiny_model_dir, tiny_manifest, tmp_path):
    import bitsandbytes as bnb

    from cordlite.data import AudioCache, encode_views, read_manifest
    from cordlite.objective.step import ReferenceStore, Tokens, collect, compute_loss
    from cordlite.recipe import recipe_from_dict

    recipe = recipe_from_dict(_raw(tiny_model_dir, tiny_manifest, tmp_path / "run"))
    model, processor, rt = _load(recipe)
    assert rt.device.type == "cuda" and sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14
    g = torch.Generator().manual_seed(1)
    for n, p in model.named_parameters():  # non-zero B so every LoRA tensor gets a gradient
        if "lora_B" in n:
            p.data = (torch.randn(p.shape, generator=g) * 0.05).to(p.device)
    views = encode_views(processor, read_manifest(tiny_manifest)[:1], AudioCache(), "Answer the question.").to(rt.device)
    probe = torch.randint(0, 900, (2, 5), device=rt.device)
    probe_mask = torch.ones_like(probe)
    plain = _plain_nf4(tiny_model_dir)
    base_lp = _text_logprobs(plain, views, probe, probe_mask, off=False)
    torch.testing.assert_close(_text_logprobs(model, views, probe, probe_mask, off=True), base_lp, atol=1e-3, rtol=0)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    c = collect(model, processor.tokenizer, views, recipe, rt, Tokens.of(model, processor.tokenizer), ReferenceStore(None))
    loss, stats = compute_loss(model, c, recipe, rt)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and stats["tok_loss"] > 0
    changed = {n: not torch.equal(before[n], p.detach()) for n, p in model.named_parameters()}
    assert all(changed[n] for n in changed if "lora_" in n)
    assert not any(changed[n] for n in changed if "lora_" not in n)  # packed 4-bit weights included
    torch.testing.assert_close(_text_logprobs(model, views, probe, probe_mask, off=True), base_lp, atol=1e-3, rtol=0)
    assert not torch.allclose(_text_logprobs(model, views, probe, probe_mask, off=False), base_lp, atol=1e-3)


def test_train_on_cuda_then_cordlite_merge(tiny_model_dir, tiny_manifest, tmp_path):
    from click.testing import CliRunner

    from cordlite.cli import main

    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(_raw(tiny_model_dir, tiny_manifest, tmp_path / "run")))
    trained = CliRunner().invoke(main, ["train", str(recipe_path)])
    assert trained.exit_code == 0, trained.output
    merged = CliRunner().invoke(main, ["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged"),
                                       "--dtype", "float32", "--device", "cuda", "--check-items", "2"])
    assert merged.exit_code == 0, merged.output
    assert "PASS" in merged.output
    check = json.loads((tmp_path / "merged" / "merge_check.json").read_text())["merged"]
    assert check["passed"] and check["adapter_effect"] > 0


def test_step_benchmark_tiny_mode_on_cuda(tmp_path):
    from benchmarks.step_memory_speed import main

    report = main(["--size", "tiny", "--device", "cuda", "--compare", "--steps", "1", "--warmup", "1",
                   "--new-tokens", "8", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    shared, separate = report["runs"]["now, shared"], report["runs"]["now, separate"]
    for r in (shared, separate):
        peak = r["memory"]["peak"]
        assert 0 < peak["allocated_gb"] <= peak["reserved_gb"]
        assert r["rollout"]["tokens_per_step"] == 4 * 5 * 8 and r["rollout"]["generate_calls"] == 1
        assert r["roofline"]["bandwidth_gb_s"] > 10 and r["roofline"]["fraction_of_bound"] > 0
    assert separate["memory"]["peak"]["allocated_gb"] >= shared["memory"]["peak"]["allocated_gb"]
    assert (tmp_path / "out" / "step_memory_speed_tiny_cuda_compare.md").is_file()


def test_shared_prefix_decode_and_shared_prompt_pass_on_cuda(tiny_model_dir, tiny_manifest, tmp_path):
    """bf16 on CUDA: greedy rollouts from one copy of each prompt's keys and values are those of the
    copy per row; the gradient pass that reads each prompt once under gradient checkpointing gives the
    repeated prompts' hidden states; a frame store serves CUDA features (its index on their device)."""
    from cordlite.data import AudioCache, encode_views, read_manifest
    from cordlite.models.audio_view import FrameCache, prompt_embeds
    from cordlite.models.sampling import sample
    from cordlite.objective.logprobs import completion_hidden, shared_prompt_hidden
    from cordlite.objective.step import Tokens
    from cordlite.recipe import recipe_from_dict

    recipe = recipe_from_dict(_raw(tiny_model_dir, tiny_manifest, tmp_path / "run"))
    model, processor, rt = _load(recipe)
    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer the question.").to(rt.device)
    tokens = Tokens.of(model, processor.tokenizer)
    common = dict(temperature=1.0, max_new_tokens=8, end_ids=tokens.end_ids, pad_id=tokens.pad_id,
                  blocked_ids=tokens.blocked_ids, greedy=True)
    frames = FrameCache()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        stored = frames.frames_of(model, [ex.id for ex in views.examples], views.audio)
        audio = prompt_embeds(model, views.audio, stored)
        shared = sample(model, audio, 5, **common)
        copied = sample(model, audio, 5, kv_cache="dynamic", **common)
    assert stored[0].device.type == "cuda" and torch.equal(shared.completion_ids, copied.completion_ids)
    source = torch.tensor([0, 0, 1], device=rt.device)
    ids = shared.completion_ids[[0, 1, 5]]
    mask = shared.completion_mask[[0, 1, 5]]
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        one = shared_prompt_hidden(model, audio, source, ids, mask)
        rep = completion_hidden(model, {k: v.index_select(0, source) for k, v in audio.items()}, ids, mask)
    one.float().square().mean().backward()
    model.eval()
    torch.testing.assert_close(one[mask.bool()].float(), rep[mask.bool()].float(), atol=5e-2, rtol=5e-2)


def test_fp16_with_loss_scaling_trains_on_cuda(tiny_model_dir, tiny_manifest, tmp_path):
    """train.mixed_precision fp16 (what auto picks on a GPU without bf16): the loss is scaled, the
    metrics show the scale, the losses are finite, and runtime.json records the choice."""
    from cordlite.recipe import recipe_from_dict
    from cordlite.train.trainer import train

    raw = _raw(tiny_model_dir, tiny_manifest, tmp_path / "run")
    raw["train"]["mixed_precision"] = "fp16"
    raw["quantization"]["compute_dtype"] = "float16"
    train(recipe_from_dict(raw))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_scale"] > 0 and torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    runtime = json.loads((tmp_path / "run" / "runtime.json").read_text())
    assert runtime["autocast"] == "float16" and runtime["loss_scaling"] is True
    assert all(r["peak_memory_gb"] > 0 for r in rows) and (rows[-1]["mfu"] is None or 0 < rows[-1]["mfu"] < 1)
