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
from cordlite.objective.step import ReferenceStore, Tokens, collect, compute_loss
from cordlite.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_manifest, tmp_path_factory, lora_student):
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
    model, processor, rt = lora_student(recipe, 0.1)  # trained-looking adapters everywhere, the encoder's included
    views = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer the question.")
    return model, processor, views, recipe, rt


class _RowCounter:
    """Counts the rows the audio tower encodes (at its first convolution, which every encoder
    pass runs: the tower's own forward and families.whisper.window_forward alike)."""

    def __init__(self, model):
        self.rows = 0
        tower = base_of(model).model.audio_tower
        self.handle = tower.conv1.register_forward_hook(lambda m, args, out: self._add(args))

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
    # The encoder runs on the part of the window that holds audio: the same sums in another
    # blocking, so float32 agrees to rounding (float64 exactly, test_window_forward_is_the_encoders_forward).
    assert torch.allclose(own[valid], mine[valid], rtol=1e-5, atol=1e-6)
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
            assert torch.allclose(own[audio["attention_mask"].bool()], mine[audio["attention_mask"].bool()],
                                  rtol=1e-5, atol=1e-6)
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


def test_window_forward_is_the_encoders_forward(setup, tiny_manifest):
    """The encoder on the start of the window that holds audio gives, on every clip's valid frames,
    the tower's own forward over the whole window (float64: to 1e-12), for clips of other lengths
    in one batch; and it runs on fewer frames than the window."""
    import copy

    from transformers.masking_utils import create_bidirectional_mask

    model, processor, _, _, _ = setup
    model = copy.deepcopy(model).double().eval()
    tower = base_of(model).model.audio_tower
    audio = encode_views(processor, read_manifest(tiny_manifest)[:3], AudioCache(), "Answer the question.").audio
    features = audio["input_features"].double()
    mel = audio["feature_attention_mask"].sum(-1)
    assert len(set(mel.tolist())) > 1, "clips of other lengths"
    feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(mel)
    window = features.shape[-1] // 2
    valid = torch.arange(window)[None, :] < feat_lengths[:, None]
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=torch.zeros((3, window, 1), dtype=torch.float64),
                                     attention_mask=valid.long())
    with torch.no_grad():
        own = tower(features, attention_mask=mask).last_hidden_state  # [3, window/2, D]
        mine, lengths = encode_audio(model, features, audio["feature_attention_mask"])
    assert lengths.tolist() == out_lengths.tolist()
    assert mine.shape[1] < own.shape[1] == window // 2  # fewer frames than the window
    for b, n in enumerate(lengths.tolist()):
        assert (mine[b, :n] - own[b, :n]).abs().max().item() < 1e-12


def test_frame_store_round_trip_and_refusals(setup, tiny_manifest, tmp_path):
    """A frame store holds every clip's frames with the encoder's and the clips' digests: loaded
    back it gives the same prompts without running the encoder; another encoder, other clips or a
    cut file are refused with a message naming the file."""
    from cordlite.models.audio_view import FrameCache, FrameStoreError, encoder_digest

    _, processor, _, recipe, rt = setup
    plain, _ = load_base(recipe.model, recipe.quantization, rt)
    audio = encode_views(processor, read_manifest(tiny_manifest)[:2], AudioCache(), "Answer the question.").audio
    digest = encoder_digest(plain)
    assert len(digest) == 64 and digest == encoder_digest(plain)
    cache = FrameCache()
    with torch.no_grad():
        first = cache.prompt(plain, ["a", "b"], audio)
    path = tmp_path / "frames" / "split.safetensors"
    cache.save(path, digest, "clips-1")
    loaded = FrameCache.load(path, digest, "clips-1")
    counter = _RowCounter(plain)
    with torch.no_grad():
        again = loaded.prompt(plain, ["a", "b"], audio)
    counter.handle.remove()
    assert counter.rows == 0 and torch.equal(first["inputs_embeds"], again["inputs_embeds"])
    half = FrameCache.load(path, digest, dtype=torch.float16)  # no clips check; kept in float16
    assert half.frames["a"].dtype == torch.float16
    hidden, lengths = half.frames_of(plain, ["a", "b"], audio)
    assert hidden.dtype == torch.float32 and lengths.tolist() == [len(cache.frames["a"]), len(cache.frames["b"])]
    with pytest.raises(FrameStoreError, match="another audio encoder"):
        FrameCache.load(path, "0" * 64, "clips-1")
    with pytest.raises(FrameStoreError, match="other clips"):
        FrameCache.load(path, digest, "clips-2")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FrameStoreError, match="cut.safetensors: unreadable"):
        FrameCache.load(cut, digest)


def test_collect_with_a_frame_store_skips_the_encoder(setup, tmp_path):
    """data.frames: a step's rollouts and loss are those of a step that runs the encoder, and the
    encoder runs for no row (rollout phase and gradient pass)."""
    from cordlite.models.audio_view import FrameCache

    _, processor, views, recipe, rt = setup
    torch.manual_seed(0)
    plain, _ = load_base(recipe.model, recipe.quantization, rt)
    frozen = attach_lora(plain, replace(recipe.lora, audio_encoder=False), rt, seed=0)
    tokens = Tokens.of(frozen, processor.tokenizer)
    store = FrameCache()
    with torch.no_grad():
        store.frames_of(frozen, [ex.id for ex in views.examples], views.audio)
    results = []
    for frames in (None, store):
        counter = _RowCounter(frozen)
        torch.manual_seed(0)
        c = collect(frozen, processor.tokenizer, views, recipe, rt, tokens, ReferenceStore(None), frames=frames)
        loss, _ = compute_loss(frozen, c, recipe, rt)
        counter.handle.remove()
        results.append((c, loss.item(), counter.rows))
    (c0, loss0, rows0), (c1, loss1, rows1) = results
    assert rows0 == 2 and rows1 == 0
    assert torch.equal(c0.completion_ids, c1.completion_ids)
    assert loss1 == pytest.approx(loss0, rel=1e-5)


class _LayerRows:
    """Counts the (rows, positions) the first decoder layer's MLP runs on (a replay in backward included:
    the checkpointed layer's forward is replayed without its own hooks, its MLP's hooks still run)."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        mlp = base_of(model).model.language_model.layers[0].mlp
        self.handle = mlp.register_forward_pre_hook(lambda m, args: self.calls.append(tuple(args[0].shape[:2])))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prompt_pass_equals_repeated_prompts(setup, checkpointing):
    """shared_prompt_hidden (each prompt once, rows continue from its keys and values) gives
    completion_hidden on the repeated prompts without checkpointing: the same hidden states and the
    same gradients, with gradient checkpointing on as well. The language model reads the 2 prompts
    once and the 5 rows' completions (7 rows of work instead of 5 full rows), and with checkpointing
    backward replays both passes (the cache survives the replay)."""
    from cordlite.objective.logprobs import completion_hidden, shared_prompt_hidden

    model, processor, views, _, _ = setup
    base = base_of(model)
    source = torch.tensor([0, 0, 0, 1, 1])  # 3 rows continue prompt 0, 2 rows prompt 1
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 100, (5, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    model.train()
    grads, rows = [], None
    try:
        for shared in (False, True):
            if shared and checkpointing:
                base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.zero_grad(set_to_none=True)
            counter = _LayerRows(model)
            prompt = prompt_embeds(model, views.audio)
            if shared:
                hidden = shared_prompt_hidden(model, prompt, source, ids, mask)
            else:
                hidden = completion_hidden(model, {k: v.index_select(0, source) for k, v in prompt.items()}, ids, mask)
            (hidden * mask.unsqueeze(-1)).square().sum().backward()
            counter.handle.remove()
            rows = counter.calls
            grads.append((hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    finally:
        base.activation_checkpointing_disable()
        model.eval()
    p_len = views.audio["input_ids"].shape[1]
    replays = [(5, 4), (2, p_len)] if checkpointing else []  # backward replays the completion pass, then the prompt's
    assert rows == [(2, p_len), (5, 4)] + replays
    (h_rep, g_rep), (h_shared, g_shared) = grads
    valid = mask.bool()
    assert torch.allclose(h_rep[valid], h_shared[valid], rtol=1e-5, atol=1e-6)
    assert g_rep.keys() == g_shared.keys() and any("language_model" in k for k in g_rep)
    # float32 sums in another order (Qwen2's RMSNorm computes in float32): equal to 1e-4 of each gradient's scale
    for k in g_rep:
        assert (g_rep[k] - g_shared[k]).abs().max() <= 1e-4 * g_rep[k].abs().max(), k


def test_one_generate_call_samples_rows_at_their_own_temperatures(setup):
    """sample(temperature=[t0, t1, ...]): row j of every prompt's group at temperature t_j in one
    call: a row at temperature 1e-6 is the greedy answer while a row at 1.0 differs from it."""
    from cordlite.models.sampling import sample

    model, processor, views, _, _ = setup
    tokens = Tokens.of(model, processor.tokenizer)
    common = dict(max_new_tokens=6, end_ids=tokens.end_ids, pad_id=tokens.pad_id, blocked_ids=tokens.blocked_ids)
    greedy = sample(model, views.text, 1, temperature=1.0, greedy=True, **common)
    mixed = sample(model, views.text, 3, temperature=[1e-6, 1.0, 1.0], keys=torch.tensor([1, 2]), **common)
    assert mixed.source.tolist() == [0, 0, 0, 1, 1, 1]
    width = greedy.completion_ids.shape[1]
    assert torch.equal(mixed.completion_ids[[0, 3], :width], greedy.completion_ids)
    assert not torch.equal(mixed.completion_ids[[1, 2, 4, 5], :width], greedy.completion_ids.repeat_interleave(2, 0))
    with pytest.raises(ValueError, match="2 temperatures for groups of 3"):
        sample(model, views.text, 3, temperature=[1.0, 1.0], **common)


def test_every_cache_layout_and_call_split_samples_the_same_rows(setup):
    """A prompt's rows are the same tokens whichever way the call is arranged: generate()'s own
    prefill, cordlite's prefill copied to every row (transformers' dynamic cache), one copy of each
    prompt for its rows (the shared-prefix cache), and the prompts split into one call each by a KV
    budget: greedy rows token for token, and sampled rows with the same keys too. The shared-prefix
    cache holds each prompt once: less than half the dynamic cache's bytes for 3 rows a prompt."""
    from cordlite.models.kv_cache import call_bytes
    from cordlite.models.sampling import sample

    model, processor, views, _, _ = setup
    tokens = Tokens.of(model, processor.tokenizer)
    common = dict(max_new_tokens=6, end_ids=tokens.end_ids, pad_id=tokens.pad_id, blocked_ids=tokens.blocked_ids)
    with torch.no_grad():
        audio = prompt_embeds(model, views.audio)
    keys = torch.tensor([7, 8])
    for prompt in (views.text, audio):
        one_prompt = call_bytes(model.config, torch.float32, 1, 3, prompt["input_ids"].shape[1], 6, shared=True)
        layouts = {"own": dict(share_prefill=False), "dynamic": dict(kv_cache="dynamic"), "shared": {},
                   "split": dict(kv_budget=one_prompt)}
        out, calls = {}, {}
        for name, kw in layouts.items():
            calls[name] = []
            greedy = sample(model, prompt, 2, temperature=1.0, greedy=True, **common, **kw)
            sampled = sample(model, prompt, 3, temperature=[1.0, 1.5, 1.5], keys=keys, calls=calls[name], **common, **kw)
            out[name] = (greedy, sampled)
        for name in layouts:
            assert torch.equal(out[name][0].completion_ids, out["own"][0].completion_ids), name
            assert torch.equal(out[name][1].completion_ids, out["own"][1].completion_ids), name
            assert out[name][1].source.tolist() == [0, 0, 0, 1, 1, 1]
        assert [c["prompts"] for c in calls["split"]] == [1, 1] and all(c["kv_bytes"] <= one_prompt for c in calls["split"])
        assert calls["shared"][0]["shared_prefix"] and not calls["dynamic"][0]["shared_prefix"]
        assert calls["shared"][0]["kv_bytes"] < 0.5 * calls["dynamic"][0]["kv_bytes"]


def test_prefilled_prompts_answer_as_generates_own_prefill_for_ids_and_single_rows(setup):
    """The prefilled cache (prompt positions read without the LM head) serves token-id prompts (the
    text view) and one row per prompt too: greedy answers token for token those of generate()'s own
    prefill, which computes a full-vocabulary logit row for every prompt position."""
    from cordlite.models.sampling import sample

    model, processor, views, _, _ = setup
    tokens = Tokens.of(model, processor.tokenizer)
    common = dict(max_new_tokens=6, end_ids=tokens.end_ids, pad_id=tokens.pad_id, blocked_ids=tokens.blocked_ids,
                  temperature=1.0, greedy=True)
    with torch.no_grad():
        audio = prompt_embeds(model, views.audio)
    for prompt in (views.text, audio):
        for g in (1, 2):
            own = sample(model, prompt, g, share_prefill=False, **common)
            prefilled = sample(model, prompt, g, share_prefill=True, **common)
            assert torch.equal(own.completion_ids, prefilled.completion_ids), (sorted(prompt), g)
            assert torch.equal(own.completion_mask, prefilled.completion_mask)


def test_views_from_frame_counts_are_the_processors(setup, tiny_manifest):
    """encode_views(frame_counts=...) builds the audio view's ids without reading audio or computing
    mel features: the same input_ids and attention_mask as the processor's, and no features."""
    from cordlite.models.audio_view import FrameCache

    model, processor, _, _, _ = setup
    examples = read_manifest(tiny_manifest)[:3]
    full = encode_views(processor, examples, AudioCache(), "Answer the question.")
    store = FrameCache()
    with torch.no_grad():
        store.frames_of(model, [ex.id for ex in examples], full.audio)

    class NoAudio(AudioCache):
        def __call__(self, ex):
            raise AssertionError("audio read")

    light = encode_views(processor, examples, NoAudio(), "Answer the question.", frame_counts=store.counts())
    assert set(light.audio) == {"input_ids", "attention_mask"}
    for k in ("input_ids", "attention_mask"):
        assert torch.equal(light.audio[k], full.audio[k]), k
    assert all(torch.equal(light.text[k], full.text[k]) for k in full.text)
