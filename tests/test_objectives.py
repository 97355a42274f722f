"""The paper's off-policy baselines (loss.objective: sft / forward_kl) on the tiny Qwen2-Audio.

Each is checked against a direct computation: the rollouts come from the teacher's text view
(adapters off), there are group_size + 1 per prompt, and the loss equals the NLL / forward KL
recomputed here from plain log-softmaxes of the two views.
"""

from __future__ import annotations

import pytest
import torch

from cordlite.data import AudioCache, encode_views, read_manifest
from cordlite.models.load import load_base
from cordlite.models.lora import adapters_off, attach_lora
from cordlite.models.runtime import resolve_runtime
from cordlite.models.sampling import repeat_rows
from cordlite.objective import step as step_module
from cordlite.objective.logprobs import completion_hidden, full_logprobs
from cordlite.objective.step import ReferenceStore, Tokens, collect, compute_loss
from cordlite.recipe import recipe_from_dict
from cordlite.schema import ConfigError


def _raw(model_dir, manifest, out, objective: str) -> dict:
    return {
        "model": {"name_or_path": str(model_dir), "device": "cpu"},
        "quantization": {"mode": "none"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train_manifest": str(manifest), "instruction": "Answer the question."},
        "rollout": {"max_new_tokens": 5, "group_size": 2},
        "loss": {"objective": objective, "lambda_seq": 0.0, "alpha": 1.0, "beta": 1.0, "top_k": 0},
        "train": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2, "seed": 0},
        "output": {"dir": str(out), "progress": False},
    }


def _adapters_disabled(model) -> bool:
    flags = [m.disable_adapters for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "disable_adapters")]
    assert flags, "no LoRA layers found"
    return all(flags)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_manifest, tmp_path_factory, lora_student):
    recipe = recipe_from_dict(_raw(tiny_model_dir, tiny_manifest, tmp_path_factory.mktemp("run"), "sft"))
    model, processor, rt = lora_student(recipe, 0.1)  # student (on) and teacher (off) differ
    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer the question.")
    return model, processor, views, rt


def _view_logprobs(model, view, c):
    """Full log-probs [n, L, V] of the collected completions after each row's prompt in `view`."""
    return full_logprobs(model, completion_hidden(model, repeat_rows(view, c.source), c.completion_ids,
                                                  c.completion_mask), 64)


def _collect(setup, objective, tmp_path, monkeypatch):
    model, processor, views, rt = setup
    recipe = recipe_from_dict(_raw("unused", "unused", tmp_path, objective), check_paths=False)
    calls = []
    real = step_module.sample

    def spy(m, prompt, n, **kw):
        calls.append((prompt is views.text, prompt is views.audio, n, kw["temperature"], _adapters_disabled(m)))
        return real(m, prompt, n, **kw)

    monkeypatch.setattr(step_module, "sample", spy)
    torch.manual_seed(0)
    c = collect(model, processor.tokenizer, views, recipe, rt, Tokens.of(model, processor.tokenizer), ReferenceStore(None))
    return recipe, c, calls


@pytest.mark.parametrize("objective", ["sft", "forward_kl"])
def test_off_policy_objectives_sample_the_teacher_text_view(objective, setup, tmp_path, monkeypatch):
    _, c, calls = _collect(setup, objective, tmp_path, monkeypatch)
    # one call: text view, adapters off, group_size + 1 = 3 rollouts per prompt at distill_temperature 1.0
    assert calls == [(True, False, 3, 1.0, True)]
    assert sorted(c.source.tolist()) == [0, 0, 0, 1, 1, 1]
    assert c.advantages is None and c.n_distill == 6 and c.group_start == 6
    assert (c.teacher_lp is None) == (objective == "sft")


def test_sft_loss_is_the_audio_view_nll_of_the_teacher_rollouts(setup, tmp_path, monkeypatch):
    model, _, views, rt = setup
    recipe, c, _ = _collect(setup, "sft", tmp_path, monkeypatch)
    loss, stats = compute_loss(model, c, recipe, rt)
    with torch.no_grad():
        lp = _view_logprobs(model, views.audio, c)
        tok = lp.gather(-1, c.completion_ids.unsqueeze(-1)).squeeze(-1)
        expected = -(tok * c.completion_mask).sum(dim=1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["sft_loss"] == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_forward_kl_loss_is_kl_teacher_text_to_student_audio(setup, tmp_path, monkeypatch):
    model, _, views, rt = setup
    recipe, c, _ = _collect(setup, "forward_kl", tmp_path, monkeypatch)
    loss, stats = compute_loss(model, c, recipe, rt)
    with torch.no_grad():
        student = _view_logprobs(model, views.audio, c)
        with adapters_off(model):
            teacher = _view_logprobs(model, views.text, c)
        fkl = (teacher.exp() * (teacher - student)).sum(-1)  # [n, L]
        expected = (fkl * c.completion_mask).sum(dim=1).mean()  # alpha = beta = 1: uniform weights
    assert torch.allclose(c.teacher_lp, teacher, atol=1e-5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert stats["weight_max"] == 1.0
    model.zero_grad(set_to_none=True)


def test_off_policy_objectives_refuse_grpo(tmp_path):
    raw = _raw("unused", "unused", tmp_path, "sft")
    raw["loss"]["lambda_seq"] = 1.0
    with pytest.raises(ConfigError, match="loss.objective: sft .*lambda_seq: 0"):
        recipe_from_dict(raw, check_paths=False)


@pytest.mark.parametrize("side", [
    {"projector": True},                                             # LM + projector
    {"audio_encoder": True},                                         # LM + audio encoder
    {"audio_encoder": True, "projector": True, "target_modules": []},  # audio side only
])
def test_audio_side_lora_moves_the_audio_view_only(side, tiny_model_dir, tiny_manifest, tmp_path):
    raw = _raw(tiny_model_dir, tiny_manifest, tmp_path, "cord")
    raw["lora"].update(side)
    raw["loss"] = {}
    recipe = recipe_from_dict(raw)
    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
    model, processor = load_base(recipe.model, recipe.quantization, rt)
    model = attach_lora(model, recipe.lora, rt, seed=0)
    n_layers = model.get_base_model().config.audio_config.encoder_layers
    lora_b = [n for n, _ in model.named_parameters() if "lora_B" in n]
    audio_side = [n for n in lora_b if "multi_modal_projector" in n or "audio_tower" in n]
    # 6 linears per encoder layer (q, k, v, out_proj, fc1, fc2), one in the projector
    assert len(audio_side) == 6 * n_layers * side.get("audio_encoder", False) + side.get("projector", False)
    assert (len(lora_b) == len(audio_side)) == (side.get("target_modules") == [])
    assert not any("conv" in n or "embed_positions" in n for n in audio_side)
    for n, p in model.named_parameters():
        if n in audio_side:
            p.data.fill_(0.05)  # only the audio side's adapters are non-zero

    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer the question.")
    ids = torch.randint(0, 900, (2, 4))
    mask = torch.ones(2, 4, dtype=torch.long)

    def lp(view, off):
        with torch.no_grad():
            if off:
                with adapters_off(model):
                    return full_logprobs(model, completion_hidden(model, view, ids, mask), 64)
            return full_logprobs(model, completion_hidden(model, view, ids, mask), 64)

    assert torch.equal(lp(views.text, False), lp(views.text, True))  # the text view never reaches the audio side
    assert not torch.allclose(lp(views.audio, False), lp(views.audio, True), atol=1e-4)


def test_lora_target_regex_names_the_layers_of_each_side():
    import re

    from cordlite.models.targets import lora_target_regex

    names = {
        "model.language_model.layers.0.self_attn.q_proj": "lm",
        "model.language_model.layers.3.mlp.down_proj": "lm-mlp",
        "model.audio_tower.layers.1.self_attn.q_proj": "encoder",
        "model.audio_tower.layers.0.fc2": "encoder",
        "model.audio_tower.conv1": "conv",
        "model.multi_modal_projector.linear": "projector",
        "lm_head": "head",
    }

    def hits(*args):
        rx = re.compile(lora_target_regex(*args))
        return sorted(n for n in names if rx.fullmatch(n))

    lm_attention = ["model.language_model.layers.0.self_attn.q_proj"]
    assert hits(("q_proj",)) == lm_attention  # the encoder's q_proj is not the language model's
    assert hits(("q_proj",), True) == lm_attention + ["model.multi_modal_projector.linear"]
    assert hits((), False, True) == ["model.audio_tower.layers.0.fc2", "model.audio_tower.layers.1.self_attn.q_proj"]
    assert len(hits(("q_proj", "down_proj"), True, True)) == 5
    with pytest.raises(ValueError, match="nothing to adapt"):
        lora_target_regex((), False, False)


def test_a_recipe_naming_the_removed_backend_key_is_told_to_delete_it(tmp_path):
    raw = _raw("unused", "unused", tmp_path, "cord")
    raw["model"] = {"name_or_path": "unused", "backend": "unsloth", "device": "cuda"}
    with pytest.raises(ConfigError, match=r"model.backend: removed: every model loads through transformers"):
        recipe_from_dict(raw, check_paths=False)