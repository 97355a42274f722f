"""The step benchmark on CPU: its arithmetic by hand, its collect variant against cordlite's collect,
the tiny mode end to end (benchmarks/)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmarks.random_checkpoint import QWEN2_AUDIO_7B, TINY, parameter_counts
from benchmarks.roofline import estimate_step_memory
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


def test_7b_memory_estimate_by_hand():
    e = estimate_step_memory(QWEN2_AUDIO_7B)
    assert e["lora_params"] == 32 * 16 * (2 * 8192 + 2 * 8192 + 3 * (4096 + 11008)) == 39_976_960
    assert e["teacher_logprobs_fp32"] == pytest.approx(200 * 156032 * 4 / 1e9)  # 0.125 GB per distillation row
    assert e["weights_bf16_embed_and_head"] == pytest.approx(2 * 2 * 156032 * 4096 / 1e9)  # 2.56 GB
    assert e["weights_nf4_linear"] == pytest.approx(3.34, abs=0.01)
    assert e["weights_bf16_audio_projector_norms"] == pytest.approx(1.29, abs=0.01)
    assert 7.0 < e["resident"] - e["lora_params_grads_adamw_fp32"] < 7.3
    assert e["peak_estimate"] < 20  # the acceptance target, before it is measured


def test_collect_variant_equals_collect_and_a_teacher_copy_equals_adapters_off(tiny_model_dir, tiny_manifest, tmp_path):
    from benchmarks.step_variants import collect_variant, load_teacher_copy
    from cordlite.data import AudioCache, encode_views, read_manifest
    from cordlite.objective.step import ReferenceStore, Tokens, collect

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
    t = Tokens.of(model, processor.tokenizer)
    tokens = Tokens(t.end_ids, t.pad_id, t.blocked_ids + t.end_ids)  # forced length, as in the benchmark
    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer.")

    def run(fn, **kw):
        torch.manual_seed(7)
        return fn(model, processor.tokenizer, views, recipe, rt, tokens, ReferenceStore(None), **kw)

    ref, same = run(collect), run(collect_variant)
    assert torch.equal(ref.completion_ids, same.completion_ids) and torch.equal(ref.source, same.source)
    assert torch.equal(ref.teacher_lp, same.teacher_lp) and torch.equal(ref.advantages, same.advantages)
    assert (ref.n_distill, ref.group_start) == (same.n_distill, same.group_start) == (2, 2)
    assert set(ref.stats) == set(same.stats)

    copy = run(collect_variant, teacher=load_teacher_copy(recipe, rt))
    assert torch.equal(copy.completion_ids, ref.completion_ids)
    assert torch.allclose(copy.teacher_lp, ref.teacher_lp, atol=1e-5)

    separate = run(collect_variant, separate=True)  # the former layout: two generate calls
    assert separate.completion_ids.shape == (2 + 2 * 2, 5) and bool(separate.completion_mask.all())
    assert separate.source.tolist() == ref.source.tolist() == [0, 1, 0, 0, 1, 1]


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


def test_static_cache_flag_reaches_generate_through_cordlite_sample(tiny_model_dir):
    from transformers import Qwen2AudioForConditionalGeneration

    from benchmarks.step_memory_speed import speedups
    from cordlite.models.sampling import sample

    model = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    seen = []
    lm = model.model.language_model
    forward = lm.forward

    def spy(*args, **kwargs):
        seen.append(type(kwargs.get("cache", kwargs.get("past_key_values"))).__name__)
        return forward(*args, **kwargs)

    lm.forward = spy
    prompt = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    kw = dict(temperature=1.0, max_new_tokens=2, end_ids=[1020], pad_id=1018)
    sample(model, prompt, 1, **kw)
    # the first call is cordlite's prefill of the prompt (no cache passed in: it makes the DynamicCache)
    assert seen[0] == "NoneType" and set(seen[1:]) == {"DynamicCache"}
    seen.clear()
    speedups(model, static_cache=True, compile_layers=False)
    sample(model, prompt, 1, **kw)
    assert set(seen) == {"StaticCache"}
    assert model.generation_config.cache_implementation == "static"  # sample() put the model's config back


def test_benchmark_tiny_mode_end_to_end(tmp_path, capsys):
    from benchmarks.step_memory_speed import main

    report = main(["--size", "tiny", "--device", "cpu", "--compare", "--steps", "1", "--warmup", "0",
                   "--audio-seconds", "2", "--set", "rollout.max_new_tokens=3", "--set", "rollout.group_size=2",
                   "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "step_memory_speed_tiny_cpu_compare.json").read_text())
    assert saved["runs"].keys() == report["runs"].keys() == {"shared", "separate"}
    for r in saved["runs"].values():
        assert r["memory"]["peak"]["rss_gb"] > 0 and r["after_load"]["rss_gb"] > 0
        assert all(r["mean"][k] > 0 for k in ("step_s", "rollout_s", "teacher_s", "judge_s", "student_loss_s",
                                               "optimizer_s"))
        # one generate call for the 1 + 2 rollouts of the prompt: 3 sequential decode steps
        assert r["rollout"]["tokens_per_step"] == (1 + 2) * 3 and r["rollout"]["decode_steps_per_step"] == 3
        assert r["rollout"]["all_full_length"] and r["rollout"]["per_sequence_tok_s"] > 0
        assert r["roofline"]["bound_tok_s_batch1"] > 0 and 0 < r["roofline"]["fraction_of_bound"]
        assert r["lora_params"] == 2 * 16 * (4 * 128 + 3 * 192)  # the recipe's r=16 on the tiny shapes
        _check_weight_bytes(r["weight_bytes_per_token"], r["lora_params"])
    assert set(saved["ratios_separate_over_shared"]) == {"rss_gb", "step_s"}
    assert saved["settings"]["group_size"] == 2 and saved["settings"]["max_new_tokens"] == 3
    assert "model.device=cpu" in saved["overrides"] and saved["bandwidth_gb_s"] > 0
    table = (tmp_path / "out" / "step_memory_speed_tiny_cpu_compare.md").read_text()
    assert "| peak RSS during steps (GB) |" in table and "ratio separate / shared" in table
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes leave no temporaries


def test_7b_on_cpu_is_refused_with_what_to_run_instead(tmp_path, capsys):
    from benchmarks.step_memory_speed import main

    with pytest.raises(SystemExit) as exc:
        main(["--size", "7b", "--device", "cpu", "--cache", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "needs an NVIDIA GPU" in err and "--size tiny" in err and "--estimate" in err
