"""One CORD step: a no-grad collection phase for the step's prompts, then the grad loss per micro-batch.

loss.objective: sft / forward_kl (the paper's off-policy baselines) replace the student's rollouts
by group_size + 1 teacher rollouts on the text view and the token term by the NLL / forward KL
along them; everything else below is loss.objective: cord.

collect (eval mode, no grad; the trainer calls it once for all the prompts of its optimizer step)
  references   text-view answers of the teacher (greedy by default), cached per example id
  rollouts     student (adapters ON, audio view): N at group_temperature for GRPO, plus one at
               distill_temperature for the token-level KL (or the N shared, by option); every
               prompt's rows in one decode loop where the KV budget allows (models.sampling)
  rewards      judge(rollout, reference) in {0, 1};  advantages A = r - mean(r) per group
score_teacher (no grad; per micro-batch in training: its [n, L, V] log-probs are the large part)
  teacher      with adapters_off(model): full-vocab log-probs of the text view + the same tokens
loss (train mode, grad; per micro-batch: Collected.prompts)
  student hidden states on audio view + completions (one forward for all rows)
  L_tok = mean_seq sum_t w_t D_t,  w = cord_token_weights(D.detach())    (method doc, token level)
  L_seq = -(1/N) sum_i A_i log p(y_i | x_a)                              (method doc, sequence level)
  L = lambda_tok L_tok + lambda_seq L_seq
This is the only module that unpacks the recipe for the math; the functions it calls are pure.
"""

from __future__ import annotations

import contextlib
import time

import torch

from cordlite.config import Recipe
from cordlite.data import Example, ViewBatch
from cordlite.judge.rewards import Judge, JudgeItem, rule_rewards
from cordlite.models.audio_view import FrameCache, encode_each, encoder_is_frozen, prompt_embeds
from cordlite.models.families import family_of
from cordlite.models.lora import adapters_off, base_of
from cordlite.models.runtime import Runtime
from cordlite.models.sampling import Rollouts, pad_right, random_keys, repeat_rows, sample
from cordlite.objective.advantages import group_advantages
from cordlite.objective.collected import Collected
from cordlite.objective.logprobs import completion_hidden, full_logprobs, shared_prompt_hidden, student_token_terms
from cordlite.objective.losses import policy_gradient_loss, sft_loss, weighted_token_loss
from cordlite.objective.references import ReferenceStore, Tokens, sampling_key
from cordlite.objective.weights import cord_token_weights


def _autocast(rt: Runtime):
    if rt.autocast and rt.device.type == "cuda":
        return torch.autocast("cuda", dtype=rt.amp_dtype)
    return contextlib.nullcontext()


def _teacher(model, recipe: Recipe):
    return adapters_off(model) if recipe.loss.teacher == "base" else contextlib.nullcontext()


def clock(rt: Runtime) -> float:
    """Seconds, after the GPU has finished the queued work: CUDA runs asynchronously, so without the
    sync a phase's kernels would be charged to whichever later phase first waits for a result."""
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    return time.perf_counter()


def _decode(tokenizer, r: Rollouts) -> list[str]:
    # Positions past the end token already hold pad_id (special, skipped). Multiplying by the mask
    # would make them token id 0, a printable token ("!") in Qwen vocabularies.
    return tokenizer.batch_decode(r.completion_ids, skip_special_tokens=True)


def _rows(r: Rollouts, index: torch.Tensor) -> Rollouts:
    return Rollouts(r.completion_ids[index], r.completion_mask[index], r.finished[index], r.source[index])


def kv_budget(recipe: Recipe) -> int | None:
    """rollout.kv_budget_gb in bytes; None (unset) lets each call take half the free memory."""
    gb = recipe.rollout.kv_budget_gb
    return None if gb is None else int(gb * 1e9)


def rollout_rows(recipe: Recipe) -> tuple[int, str]:
    """Rows collect samples per prompt in one call, and from which view ("audio", or "text" for the
    off-policy baselines, which sample the teacher)."""
    ro, lo = recipe.rollout, recipe.loss
    if lo.objective != "cord":
        return ro.group_size + 1, "text"
    use_tok, use_seq = lo.lambda_tok > 0, lo.lambda_seq > 0
    if use_tok and not ro.share_rollouts:
        return (1 + ro.group_size if use_seq else 1), "audio"
    return ro.group_size, "audio"


@torch.no_grad()
def reference_answers(model, tokenizer, views: ViewBatch, recipe: Recipe, rt: Runtime, tokens: Tokens,
                      store: ReferenceStore) -> tuple[list[str], int]:
    """Text-view answers for the batch, generated only where the store has none."""
    missing = [i for i, ex in enumerate(views.examples) if store.get(ex) is None]
    generated = 0
    if missing:
        idx = torch.tensor(missing, device=rt.device)
        generated = generate_references(model, tokenizer, repeat_rows(views.text, idx),
                                        [views.examples[i] for i in missing], recipe, rt, tokens, store)
    return [store.get(ex) for ex in views.examples], generated


@torch.no_grad()
def generate_references(model, tokenizer, text: dict[str, torch.Tensor], examples: list[Example], recipe: Recipe,
                        rt: Runtime, tokens: Tokens, store: ReferenceStore, calls: list | None = None) -> int:
    """The teacher's text-view answers to `examples` (their text views `text`) into the store; the
    number of tokens generated. The trainer calls it ahead for the examples of the coming steps:
    one decode loop for many rows costs about what one for a step's few rows does. Sampled
    references (reference_decoding: sample) draw from a key of (seed, example id)."""
    keys = torch.tensor([sampling_key("reference", recipe.train.seed, ex.id) for ex in examples], device=rt.device)
    with _teacher(model, recipe), _autocast(rt):
        r = sample(model, text, 1, temperature=1.0, max_new_tokens=recipe.rollout.max_new_tokens,
                   end_ids=tokens.end_ids, pad_id=tokens.pad_id, blocked_ids=tokens.blocked_ids,
                   greedy=recipe.rollout.reference_decoding == "greedy", keys=keys, kv_budget=kv_budget(recipe),
                   calls=calls)
    store.add(list(zip(examples, _decode(tokenizer, r))))
    return int(r.completion_mask.sum())


@torch.no_grad()
def collect(model, tokenizer, views: ViewBatch, recipe: Recipe, rt: Runtime, tokens: Tokens,
            store: ReferenceStore, judge: Judge | None = None, frames: FrameCache | None = None,
            keys: torch.Tensor | None = None, score: bool = True, kv_cache: str = "auto") -> Collected:
    """Rollouts, rewards and advantages of the B prompts of `views`. `judge`
    (cordlite.judge.rewards.judge_for_recipe, built once per run) decides rewards; without one, only
    judge.mode: rules is possible. `frames` (data.frames: a frozen encoder's frames per clip id)
    replaces the encoder for the clips it holds. `keys` [B]: the prompts' sampling keys (the trainer's
    are pure functions of seed, step and place; unset, drawn from torch's generator). `score`: also
    the teacher's log-probs (score_teacher) for all B prompts; the trainer scores per micro-batch.
    `kv_cache`: models.sampling.sample's ("dynamic": each row a copy of its prompt, for comparisons)."""
    model.eval()
    ro, lo = recipe.rollout, recipe.loss
    timings: dict[str, float] = {}
    t0 = clock(rt)
    use_tok, use_seq = lo.lambda_tok > 0, lo.lambda_seq > 0
    if keys is None:
        keys = random_keys(len(views.examples), rt.device)
    parts: list[Rollouts] = []
    calls: list[dict] = []
    common = dict(max_new_tokens=ro.max_new_tokens, end_ids=tokens.end_ids, pad_id=tokens.pad_id,
                  blocked_ids=tokens.blocked_ids, top_p=ro.top_p, keys=keys, kv_budget=kv_budget(recipe), calls=calls,
                  kv_cache=kv_cache)
    encoded = None
    if ro.encode_audio_once and encoder_is_frozen(model):
        # Nothing trains in the encoder: its output now is its output in the gradient pass too.
        with _autocast(rt):
            encoded = (frames.frames_of(model, [ex.id for ex in views.examples], views.audio) if frames is not None
                       else encode_each(model, views.audio["input_features"], views.audio["feature_attention_mask"]))
    if lo.objective != "cord":
        # The paper's baselines: the teacher's own text-view answers, as many as cord samples.
        with _teacher(model, recipe), _autocast(rt):
            parts.append(sample(model, views.text, ro.group_size + 1, temperature=ro.distill_temperature, **common))
    else:
        with _autocast(rt):
            audio = prompt_embeds(model, views.audio, encoded) if ro.encode_audio_once else views.audio
            if use_tok and not ro.share_rollouts and use_seq:
                # The distillation rollout and the group in one decode loop (one temperature per
                # row), then ordered as two calls would give them: B distillation rows first.
                both = sample(model, audio, 1 + ro.group_size, **common,
                              temperature=[ro.distill_temperature] + [ro.group_temperature] * ro.group_size)
                first = torch.arange(0, both.source.shape[0], 1 + ro.group_size, device=both.source.device)  # [B]
                rest = torch.ones_like(both.source, dtype=torch.bool).index_fill(0, first, False)  # [B*(1+G)]
                parts += [_rows(both, first), _rows(both, rest.nonzero().squeeze(1))]
            elif use_tok and not ro.share_rollouts:
                parts.append(sample(model, audio, 1, temperature=ro.distill_temperature, **common))
            elif use_seq:
                parts.append(sample(model, audio, ro.group_size, temperature=ro.group_temperature, **common))
    timings["rollout_s"] = clock(rt) - t0

    ids = pad_right([p.completion_ids for p in parts], tokens.pad_id)  # [n, L]
    mask = pad_right([p.completion_mask for p in parts], 0)  # [n, L]
    source = torch.cat([p.source for p in parts])  # [n]
    finished = torch.cat([p.finished for p in parts])  # [n]
    n = ids.shape[0]
    if ro.share_rollouts:
        n_distill, group_start = n, 0
    else:
        n_distill = parts[0].completion_ids.shape[0] if use_tok else 0
        group_start = n_distill

    advantages = None
    stats: dict[str, float] = {}
    t0 = clock(rt)
    if use_seq:
        refs, ref_tokens = reference_answers(model, tokenizer, views, recipe, rt, tokens, store)
        group = Rollouts(ids[group_start:], mask[group_start:], finished[group_start:], source[group_start:])
        texts = _decode(tokenizer, group)
        exs = [views.examples[int(s)] for s in group.source]
        group_refs = [refs[int(s)] for s in group.source]
        truncated = [not bool(f) for f in group.finished]
        if judge is not None:
            verdicts, judge_stats = judge.decide([JudgeItem(ex.question, t, r, ex.choices, tr)
                                                  for ex, t, r, tr in zip(exs, texts, group_refs, truncated)])
            reward_list = [float(v.same) for v in verdicts]
            stats.update(judge_stats)
        elif recipe.judge.mode == "rules":
            reward_list = rule_rewards(texts, group_refs, [ex.choices for ex in exs], truncated,
                                       recipe.judge.number_tolerance)
        else:
            raise ValueError(f"judge.mode: {recipe.judge.mode!r} needs a judge; build it once with "
                             "cordlite.judge.rewards.judge_for_recipe and pass it to collect(judge=...)")
        rewards = torch.tensor(reward_list, device=ids.device)  # [n_group]
        advantages = group_advantages(rewards, ro.group_size)
        stats.update(reward_mean=rewards.mean().item(), reward_std=rewards.std(unbiased=False).item(),
                     reference_tokens=float(ref_tokens))
    timings["judge_s"] = clock(rt) - t0

    lengths = mask.sum(dim=1).float()
    stats.update(tokens_generated=float(mask.sum()), completion_len=lengths.mean().item(),
                 truncated_frac=1.0 - finished.float().mean().item(), generate_calls=float(len(calls)),
                 kv_cache_gb=max((c["kv_bytes"] for c in calls), default=0) / 1e9,
                 decode_positions=float(sum(c["rows"] * c["steps"] for c in calls)),
                 prefill_positions=float(sum(c["prompts"] * c["prompt_len"] for c in calls)), **timings)
    c = Collected(views, source, ids, mask, n_distill, group_start, None, advantages, stats, encoded)
    return score_teacher(model, c, recipe, rt) if score else c


@torch.no_grad()
def score_teacher(model, c: Collected, recipe: Recipe, rt: Runtime) -> Collected:
    """`c` with the teacher's full-vocabulary log-probs of its distillation rows (text view + the same
    tokens, adapters off), where the objective has a token-level divergence; stats gain teacher_s."""
    lo = recipe.loss
    t0 = clock(rt)
    if lo.lambda_tok > 0 and lo.objective != "sft" and c.n_distill:
        model.eval()
        d = slice(0, c.n_distill)
        text_prompt = repeat_rows(c.views.text, c.source[d])
        with _teacher(model, recipe), _autocast(rt):
            hidden = completion_hidden(model, text_prompt, c.completion_ids[d], c.completion_mask[d])
            c.teacher_lp = full_logprobs(model, hidden, lo.kl_chunk_size)  # [n_distill, L, V]
        width = c.completion_ids.shape[1]
        c.stats["teacher_positions"] = c.stats.get("teacher_positions", 0.0) + c.n_distill * (
            text_prompt["input_ids"].shape[1] + width)
        c.stats["teacher_head_positions"] = c.stats.get("teacher_head_positions", 0.0) + c.n_distill * width
    c.stats["teacher_s"] = c.stats.get("teacher_s", 0.0) + clock(rt) - t0
    return c


def compute_loss(model, c: Collected, recipe: Recipe, rt: Runtime,
                 share_prompt: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The grad part of the step: L = lambda_tok L_tok + lambda_seq L_seq on one micro-batch.
    `share_prompt` False runs every row's prompt again (the layout before the shared prompt pass; for
    comparisons): the same loss and gradients."""
    model.train()
    # The frozen audio encoder stays in eval mode: its dropout/layerdrop must not perturb the student.
    family_of(model).audio_tower(base_of(model)).eval()
    lo = recipe.loss
    t0 = clock(rt)
    with _autocast(rt):
        # With encode_audio_once the encoder runs (with grad) once per prompt, not once per row; the
        # rows' gradients add up on the shared frames, as they would on repeated encoder passes.
        # A frozen encoder's frames come from the rollout phase (c.audio_frames): not run again.
        audio = c.views.audio
        if recipe.rollout.encode_audio_once:
            audio = prompt_embeds(model, audio, c.audio_frames)
        n, width = c.completion_ids.shape
        prompt_len = audio["attention_mask"].shape[1]
        if recipe.rollout.encode_audio_once and share_prompt:
            # Each prompt runs once; its rows continue from its keys and values (checkpointing or not).
            hidden = shared_prompt_hidden(model, audio, c.source, c.completion_ids, c.completion_mask)  # [n, L, H]
            positions = len(c.views.examples) * prompt_len + n * width
        else:
            hidden = completion_hidden(model, repeat_rows(audio, c.source), c.completion_ids,
                                       c.completion_mask)  # [n, L, H]
            positions = n * (prompt_len + width)
    loss = hidden.new_zeros((), dtype=torch.float32)
    stats: dict[str, float] = {"grad_positions": float(positions), "grad_head_positions": float(n * width)}
    token_lp_d = None
    if lo.objective == "sft":
        with _autocast(rt):
            token_lp, _ = student_token_terms(model, hidden, c.completion_ids, None, lo.kl_chunk_size)
        tok_loss, st = sft_loss(token_lp, c.completion_mask, lo.tok_reduction)
        loss = loss + lo.lambda_tok * tok_loss
        stats.update(st, tok_loss=tok_loss.item())
    elif c.teacher_lp is not None:
        d = slice(0, c.n_distill)
        divergence = "forward" if lo.objective == "forward_kl" else lo.kl_direction
        with _autocast(rt):
            token_lp_d, kl = student_token_terms(model, hidden[d], c.completion_ids[d], c.teacher_lp,
                                                 lo.kl_chunk_size, divergence)
        weights = cord_token_weights(kl.detach(), c.completion_mask[d], lo.alpha, lo.beta, lo.top_k)  # [n_d, L]
        tok_loss, st = weighted_token_loss(kl, weights, c.completion_mask[d], lo.tok_reduction)
        loss = loss + lo.lambda_tok * tok_loss
        stats.update(st)
    if c.advantages is not None:
        g = slice(c.group_start, None)
        if c.group_start == 0 and token_lp_d is not None:  # shared rollouts: reuse the same log-probs
            token_lp_g = token_lp_d
        else:
            with _autocast(rt):
                token_lp_g, _ = student_token_terms(model, hidden[g], c.completion_ids[g], None, lo.kl_chunk_size)
        seq_loss, st = policy_gradient_loss(token_lp_g, c.completion_mask[g], c.advantages)
        loss = loss + lo.lambda_seq * seq_loss
        stats.update(st)
    stats["loss"] = loss.item()
    stats["forward_s"] = clock(rt) - t0
    return loss, stats


def batch_examples(examples: list[Example], indices: list[int]) -> list[Example]:
    return [examples[i] for i in indices]
