"""The step benchmark on CPU: the 7B estimate's arithmetic by hand, the random checkpoints' shapes, the
separate-teacher variant against adapters off, the tiny mode end to end: the trainer's own step and
the former arrangement side by side, the same rollouts (benchmarks/)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmarks.random_checkpoint import QWEN2_AUDIO_7B, QWEN2_AUDIO_MID, TINY, parameter_counts
from cordlite.models.load import load_base
from cordlite.models.lora import attach_lora
from cordlite.models.runtime import resolve_runtime
from cordlite.recipe import recipe_from_dict


def _meta_counts(arch, vocab: int) -> dict[str, int]:
    from transformers import Qwen2AudioForConditionalGeneration

    from benchmarks.random_checkpoint import build_config

    class Tok:  # the three ids build_config reads, and the length for vocab_size None
        def __len__(self):
            return vocab

        def convert_tokens_to_ids(self, t):
            return {"<|endoftext|>": vocab - 6, "<|im_end|>": vocab - 4, "<|AUDIO|>": vocab - 3}[t]

    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(build_config(arch, Tok()))
    out: dict[str, int] = {}
    for n, t in model.state_dict().items():
        part = ("audio_tower" if "audio_tower" in n else "projector" if "projector" in n else "embed_tokens"
                if "embed_tokens" in n else "lm_head" if n.startswith("lm_head") else "lm_linear"
                if n.endswith("proj.weight") else "lm_other")
        out[part] = out.get(part, 0) + t.numel()
    return out


def test_7b_architecture_has_qwen2_audio_7b_sizes():
    counts = parameter_counts(QWEN2_AUDIO_7B)
    assert counts == _meta_counts(QWEN2_AUDIO_7B, 1024)  # the formula agrees with transformers' model
    assert sum(counts.values()) == 8_397_094_912  # 8.4 B parameters, the size of the published checkpoint
    assert counts["embed_tokens"] == counts["lm_head"] == 156032 * 4096
    assert counts["lm_linear"] == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert parameter_counts(TINY, 1024) == _meta_counts(TINY, 1024)
    mid = parameter_counts(QWEN2_AUDIO_MID)
    assert mid == _meta_counts(QWEN2_AUDIO_MID, 1024) and mid["embed_tokens"] == 151936 * 1024
    assert 0.3e9 < sum(mid.values()) < 0.5e9  # the 0.3-0.5 B with the real vocabulary


def test_random_checkpoint_shards_load_completely_and_an_interrupted_build_resumes(tmp_path):
    from safetensors.torch import load_file
    from transformers import Qwen2AudioForConditionalGeneration

    from benchmarks.random_checkpoint import MARKER, ensure_checkpoint

    out = ensure_checkpoint(TINY, tmp_path, progress=lambda m: None, shard_bytes=100_000)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    model, info = Qwen2AudioForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # every tensor of the architecture is in the shards, nothing else
    assert model.config.audio_token_index == model.config.text_config.vocab_size - 3  # the tokenizer's <|AUDIO|>
    assert model.config.audio_config.max_source_positions == 1500 and str(model.dtype) == "torch.bfloat16"
    first = load_file(shards[1])
    (out / MARKER).unlink()  # as if killed after the second shard
    shards[1].unlink()
    written = []
    ensure_checkpoint(TINY, tmp_path, progress=written.append, shard_bytes=100_000)
    assert len(written) == 1 and "shard 2/" in written[0]  # only the missing shard is written again
    again = load_file(shards[1])
    assert all(torch.equal(first[k], again[k]) for k in first)  # values depend only on the tensor name


def test_7b_estimate_by_hand():
    """Terms of benchmarks/step_estimate.py a person can check: the 7B's LoRA r 16 is 39,976,960
    parameters; a decode step of 20 rows on an RTX 4090 dequantises q/k/v/o (past bitsandbytes' 8-row
    fused limit) and reads the MLP fused; the shared-prefix KV of the step's 4 prompts is
    4 x (789 + 5 x 200) positions x 0.524 MB; the estimate holds the acceptance bounds (<= 18 s, <= 16 GB)
    and the former layout is the issue's ~45 s with the prefetch as its memory peak."""
    from benchmarks.step_estimate import DEQUANT, NF4, RTX4090, Shape, _sizes, decode_weight_bytes, estimate

    z = _sizes(Shape())
    assert z["lora"] == 32 * 16 * (2 * 8192 + 2 * 8192 + 3 * (4096 + 11008)) == 39_976_960
    assert z["kv_pos"] == 524_288 and z["head"] == 156032 * 4096
    eight, twenty = decode_weight_bytes(Shape(), RTX4090, 8), decode_weight_bytes(Shape(), RTX4090, 20)
    assert twenty - eight == pytest.approx(z["attn"] * (DEQUANT - NF4))  # only q/k/v/o leave the fused kernel
    assert eight == pytest.approx(z["dec"] * NF4 + 2 * z["head"] + 4 * z["lora"])
    now, former = estimate("now"), estimate("former")
    assert now["memory_gb"]["rollouts"] > 4 * 1789 * 524_288 / 1e9  # the shared-prefix cache and the logits
    assert now["seconds"]["step"] <= 18 and now["memory_gb"]["peak"] <= 16
    assert 40 < former["seconds"]["step"] < 60 and former["memory_gb"]["peak"] > 18
    phases = {k: v for k, v in former["memory_gb"].items() if k not in ("peak", "resident")}
    assert max(phases, key=phases.get) == "prefetch"
    assert now["seconds"]["decode"] == pytest.approx(200 * 0.045)  # host-bound: one call of 200 steps


def _check_weight_bytes(b: dict, lora_params: int) -> None:
    """Bytes read per decoded token by the tiny NF4 model on CPU (hidden 64, MLP 128, 2 layers, vocab 1024)."""
    linear = 2 * (4 * 64 * 64 + 3 * 64 * 128)  # 81920 weights in 14 NF4 matrices
    # packed 4-bit + one uint8 absmax per 64 weights + per matrix: 16 fp32 codes, 256 fp32 nested codes,
    # one fp32 offset and one fp32 nested absmax (each matrix has <= 256 blocks)
    assert b["lm_4bit"] == linear // 2 + linear // 64 + 14 * (64 + 1024 + 4 + 4) == 57584
    assert b["lm_head"] == 1024 * 64 * 4  # fp32 on CPU, read whole
    assert b["embed_row"] == 64 * 4  # one row per sequence
    assert b["lm_other"] == 4 * (2 * (64 + 64 + 64) + 2 * 2 * 64 + 64)  # q/k/v biases, RMSNorms
    assert b["lora"] == 4 * lora_params  # fp32 adapters, read with adapters on
    assert b["total"] == sum(v for k, v in b.items() if k != "total")


def test_benchmark_tiny_mode_end_to_end(tmp_path, capsys):
    """--layouts runs the trainer's step and the former arrangement on the tiny model: every phase is
    timed, the rollouts are the same tokens and the losses agree, the former decodes 4 calls of 3 rows
    where the step decodes one of 12, and the prefetch keeps under the KV budget where the former's
    one call does not."""
    from benchmarks.step_memory_speed import main

    budget = 1.5e-3  # GB: the 4 prompts' rollouts fit one call, the 64-row reference block does not
    report = main(["--size", "tiny", "--device", "cpu", "--layouts", "--steps", "1", "--warmup", "1",
                   "--audio-seconds", "2", "--new-tokens", "3", "--set", "rollout.group_size=2",
                   "--set", f"rollout.kv_budget_gb={budget}",
                   "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "step_memory_speed_tiny_cpu_layouts.json").read_text())
    assert list(saved["runs"]) == list(report["runs"]) == ["now, shared", "former, shared"]
    now, former = saved["runs"]["now, shared"], saved["runs"]["former, shared"]
    for r in (now, former):
        assert r["memory"]["peak"]["rss_gb"] > 0 and r["after_load"]["rss_gb"] > 0
        assert all(r["mean"][k] > 0 for k in ("step_seconds", "rollout_s", "teacher_s", "gradient_s"))
        assert r["mean"]["prefetch_block_s"] > 0 and r["rollout"]["tokens_per_step"] == 4 * (1 + 2) * 3
        assert r["lora_params"] == 2 * 16 * (4 * 128 + 3 * 192)  # the recipe's r=16 on the tiny shapes
        _check_weight_bytes(r["weight_bytes_per_token"], r["lora_params"])
    assert now["rollout"]["generate_calls"] == 1 and former["rollout"]["generate_calls"] == 4
    assert now["rollout"]["kv_cache_gb"] <= budget < former["rollout"]["reference_kv_cache_gb"]
    assert now["rollout"]["reference_kv_cache_gb"] <= budget
    same = saved["sameness"]
    assert same["identical_rollouts"] and same["identical_references"] and same["rows_per_step"] == 12
    assert same["max_relative_loss_difference"] < 1e-4
    table = (tmp_path / "out" / "step_memory_speed_tiny_cpu_layouts.md").read_text()
    assert "| rollout generate calls per step | 1 | 4 | - |" in table and "token for token" in table
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes leave no temporaries


def test_a_separate_teacher_copy_scores_what_the_adapters_off_teacher_scores(tiny_model_dir, tiny_manifest):
    """The benchmark's two-model teacher (a second frozen copy) gives the adapters-off teacher's log-probs
    and reference answers: the comparison measures the copy's memory and nothing else."""
    from benchmarks.step_variants import load_teacher_copy, separate_teacher
    from cordlite.data import AudioCache, encode_views, read_manifest
    from cordlite.objective.references import ReferenceStore, Tokens
    from cordlite.objective.step import collect
    from cordlite.train import optimizer_step

    recipe = recipe_from_dict({
        "model": {"name_or_path": str(tiny_model_dir), "device": "cpu"}, "quantization": {"mode": "none"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "data": {"train_manifest": str(tiny_manifest)},
        "rollout": {"max_new_tokens": 5, "group_size": 2}, "loss": {"top_k": 2}})
    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
    model, processor = load_base(recipe.model, recipe.quantization, rt)
    model = attach_lora(model, recipe.lora, rt)
    for n, p in model.named_parameters():  # a trained-looking adapter, so adapters on != off
        if "lora_B" in n:
            p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    tokens = Tokens.of(model, processor.tokenizer)
    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer.")
    c = collect(model, processor.tokenizer, views, recipe, rt, tokens, ReferenceStore(None), keys=torch.tensor([1, 2]),
                score=False)
    shared_store, copy_store = ReferenceStore(None), ReferenceStore(None)
    shared = optimizer_step.score_teacher(model, c.prompts(0, 2), recipe, rt).teacher_lp
    optimizer_step.generate_references(model, processor.tokenizer, views.text, views.examples, recipe, rt, tokens,
                                       shared_store)
    with separate_teacher(load_teacher_copy(recipe, rt)):
        copy = optimizer_step.score_teacher(model, c.prompts(0, 2), recipe, rt).teacher_lp
        optimizer_step.generate_references(model, processor.tokenizer, views.text, views.examples, recipe, rt, tokens,
                                           copy_store)
    assert optimizer_step.score_teacher.__name__ == "score_teacher"  # put back
    assert torch.allclose(copy, shared, atol=1e-5) and copy_store.answers == shared_store.answers


def test_7b_on_cpu_is_refused_with_what_to_run_instead(tmp_path, capsys):
    from benchmarks.step_memory_speed import main

    with pytest.raises(SystemExit) as exc:
        main(["--size", "7b", "--device", "cpu", "--cache", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "needs an NVIDIA GPU" in err and "--size mid" in err and "--estimate" in err
