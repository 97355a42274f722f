"""The audio encoder once per prompt (rollout.encode_audio_once): the same numbers, fewer passes.

cordlite.models.audio_view splits Qwen2-Audio's forward into encoder, projector and merge, so a
step runs the encoder once per prompt and phase instead of once per rollout row. Checked on the
tiny Qwen2-Audio with LoRA on the LM, the projector and the encoder (all non-zero): the merged
embeddings give the model's own logits, and a CORD step's rollouts, loss and every gradient are
those of the per-row path, while the encoder sees B rows per phase instead of n.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cordlite.data import AudioCache, encode_views, read_manifest
from cordlite.models.audio_view import encode_audio, merge_audio, project, prompt_embeds
from cordlite.models.load import load_base
from cordlite.models.lora import attach_lora, base_of
from cordlite.models.runtime import resolve_runtime
from cordlite.objective.step import ReferenceStore, Tokens, collect, compute_loss
from cordlite.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_manifest, tmp_path_factory):
    raw = {
        "model": {"name_or_path": str(tiny_model_dir), "device": "cpu"},
        "quantization": {"mode": "none"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "audio_encoder": True, "projector": True},
        "data": {"train_manifest": str(tiny_manifest), "instruction": "Answer the question."},
        "rollout": {"max_new_tokens": 6, "group_size": 3},
        "loss": {"alpha": 1.0, "beta": 1.0, "top_k": 0},
        "judge": {"mode": "rules"},
        "train": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2, "seed": 0},
        "output": {"dir": str(tmp_path_factory.mktemp("run")), "progress": False},
    }
    recipe = recipe_from_dict(raw)
    rt = resolve_runtime(recipe.model, recipe.quantization, recipe.train)
    torch.manual_seed(0)
    model, processor = load_base(recipe.model, recipe.quantization, rt)
    model = attach_lora(model, recipe.lora, rt, seed=0)
    g = torch.Generator().manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # trained-looking adapters everywhere, the encoder's included
            p.data = torch.randn(p.shape, generator=g) * 0.1
    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer the question.")
    return model, processor, views, recipe, rt


class _RowCounter:
    """Counts the rows the audio tower encodes."""

    def __init__(self, model):
        self.rows = 0
        tower = base_of(model).model.audio_tower
        self.handle = tower.register_forward_hook(lambda m, args, out: self._add(args))

    def _add(self, args):
        self.rows += args[0].shape[0]


def test_merged_embeddings_give_the_models_own_logits(setup):
    model, _, views, _, _ = setup
    audio = views.audio
    with torch.no_grad():
        own = model(**audio).logits
        merged = prompt_embeds(model, audio)
        mine = model(inputs_embeds=merged["inputs_embeds"], attention_mask=merged["attention_mask"]).logits
    valid = audio["attention_mask"].bool()
    assert torch.equal(own[valid], mine[valid])
    # the parts: every clip's frames land on its own placeholder tokens, in order
    hidden, lengths = encode_audio(model, audio["input_features"], audio["feature_attention_mask"])
    n_audio = (audio["input_ids"] == model.get_base_model().config.audio_token_id).sum(dim=1)
    assert lengths.tolist() == n_audio.tolist()
    with pytest.raises(ValueError, match="audio placeholder tokens"):
        merge_audio(model, audio["input_ids"], project(model, hidden), lengths - 1)


def _step(setup, once: bool):
    model, processor, views, recipe, rt = setup
    recipe = replace(recipe, rollout=replace(recipe.rollout, encode_audio_once=once))
    counter = _RowCounter(model)
    try:
        torch.manual_seed(0)
        c = collect(model, processor.tokenizer, views, recipe, rt, Tokens.of(model, processor.tokenizer),
                    ReferenceStore(None))
        rows_rollout = counter.rows
        model.zero_grad(set_to_none=True)
        loss, _ = compute_loss(model, c, recipe, rt)
        loss.backward()
        rows_total = counter.rows
    finally:
        counter.handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return c, loss.item(), grads, rows_rollout, rows_total - rows_rollout


def test_a_cord_step_is_unchanged_and_encodes_each_clip_once_per_phase(setup):
    c_rows, loss_rows, grads_rows, enc_roll_rows, enc_grad_rows = _step(setup, once=False)
    c_once, loss_once, grads_once, enc_roll_once, enc_grad_once = _step(setup, once=True)
    n = c_rows.completion_ids.shape[0]
    assert n == 2 * (1 + 3)  # 2 prompts x (1 distillation + 3 group) rollouts
    assert torch.equal(c_rows.completion_ids, c_once.completion_ids)  # the same samples
    assert torch.allclose(c_rows.teacher_lp, c_once.teacher_lp)
    assert loss_once == pytest.approx(loss_rows, rel=1e-5, abs=1e-7)
    assert grads_rows.keys() == grads_once.keys()
    lora_audio = [k for k in grads_rows if "audio_tower" in k and "lora_" in k]
    assert lora_audio, "the encoder's adapters must receive gradients"
    for k in grads_rows:
        assert torch.allclose(grads_rows[k], grads_once[k], rtol=1e-4, atol=1e-6), k
    # per row: the two rollout calls run the encoder for 1 + 3 rows of each prompt; once: 2 clips
    assert (enc_roll_rows, enc_grad_rows) == (n, n)
    assert (enc_roll_once, enc_grad_once) == (2, 2)


def test_frame_cache_reuses_a_frozen_encoders_frames(setup, tiny_model_dir, tiny_manifest):
    from cordlite.models.audio_view import FrameCache, encoder_is_frozen

    model, _, views, _, _ = setup
    assert not encoder_is_frozen(model)  # adapters on the encoder: its frames must never be reused
    plain, processor = load_base(setup[3].model, setup[3].quantization, setup[4])
    assert encoder_is_frozen(plain)
    audio = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer the question.").audio
    cache, counter = FrameCache(), _RowCounter(plain)
    ids = ["a", "b"]
    with torch.no_grad():
        own = plain(**audio).logits
        counter.rows = 0
        for _ in range(3):  # three evaluations: the encoder runs for the first only
            merged = cache.prompt(plain, ids, audio)
            mine = plain(inputs_embeds=merged["inputs_embeds"], attention_mask=merged["attention_mask"]).logits
            assert torch.equal(own[audio["attention_mask"].bool()], mine[audio["attention_mask"].bool()])
        reversed_rows = cache.prompt(plain, ids[::-1], {k: v.flip(0) for k, v in audio.items()})
    counter.handle.remove()
    assert counter.rows == 2 and set(cache.frames) == {"a", "b"}
    assert torch.equal(reversed_rows["inputs_embeds"].flip(0), merged["inputs_embeds"])


def test_a_frozen_encoder_runs_once_per_step(setup, tiny_model_dir, tiny_manifest):
    """No adapter on the encoder: the gradient pass reuses the rollout phase's frames (0 encoder
    rows there), with the loss and gradients of the per-row path."""
    _, processor, views, recipe, rt = setup
    torch.manual_seed(0)
    plain, _ = load_base(recipe.model, recipe.quantization, rt)
    frozen = attach_lora(plain, replace(recipe.lora, audio_encoder=False), rt, seed=0)
    g = torch.Generator().manual_seed(2)
    for n, p in frozen.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.1
    local = (frozen, processor, views, recipe, rt)
    c_rows, loss_rows, grads_rows, roll_rows, grad_rows = _step(local, once=False)
    c_once, loss_once, grads_once, roll_once, grad_once = _step(local, once=True)
    assert torch.equal(c_rows.completion_ids, c_once.completion_ids)
    assert loss_once == pytest.approx(loss_rows, rel=1e-5, abs=1e-7)
    assert any("multi_modal_projector" in k for k in grads_once)  # the projector still trains
    for k in grads_rows:
        assert torch.allclose(grads_rows[k], grads_once[k], rtol=1e-4, atol=1e-6), k
    n = c_rows.completion_ids.shape[0]
    assert (roll_rows, grad_rows) == (n, n) and (roll_once, grad_once) == (2, 0)
