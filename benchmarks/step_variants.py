"""Benchmark-only variants of the collection phase of a CORD step (cordlite.objective.step.collect).

collect_variant mirrors cordlite.objective.step.collect and departs from it only where a flag says so; with
no flag it returns exactly what collect returns (tests/test_benchmark.py checks this), so the
comparison measures the flag and nothing else.

  teacher=COPY    text-view scoring and the reference answers use a second, frozen copy of the base,
                  the way two-model distillation trainers hold their teacher, instead of the
                  student's own weights inside adapters_off(model). cordlite never loads such a copy;
                  it exists here only to measure what sharing one base saves.
  separate=True   the distillation rollout (T = 1.0) and the N group rollouts (T = 1.5) of a prompt in
                  TWO generate calls, one per temperature, each reading the prompt for all of its
                  rows (cordlite before it sampled them in one call with a temperature per row and one
                  prefill per prompt): 2 x max_new_tokens sequential decode steps instead of one.

Only the paper's layout is covered: both loss terms on, a separate distillation rollout, and the
rule-based judge (the benchmark's settings).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from cordlite.config import Recipe
from cordlite.data import ViewBatch
from cordlite.judge.rewards import rule_rewards
from cordlite.models.audio_view import encode_audio, encoder_is_frozen, prompt_embeds
from cordlite.models.lora import adapters_off
from cordlite.models.runtime import Runtime
from cordlite.models.sampling import Rollouts, pad_right, repeat_rows, sample
from cordlite.objective.advantages import group_advantages
from cordlite.objective.logprobs import completion_hidden, full_logprobs
from cordlite.objective.step import Collected, ReferenceStore, Tokens, _rows, reference_answers
from cordlite.objective.step import _autocast, _clock  # the same autocast and synchronised clock as collect


@torch.no_grad()
def collect_variant(model, tokenizer, views: ViewBatch, recipe: Recipe, rt: Runtime, tokens: Tokens,
                    store: ReferenceStore, *, teacher=None, separate: bool = False) -> Collected:
    """cordlite.objective.step.collect, with the teacher on a separate copy and/or two generate calls (module docstring)."""
    ro, lo = recipe.rollout, recipe.loss
    if ro.share_rollouts or lo.lambda_tok <= 0 or lo.lambda_seq <= 0 or recipe.judge.mode != "rules":
        raise ValueError("collect_variant covers the paper's layout only: rollout.share_rollouts false, "
                         "loss.lambda_tok and loss.lambda_seq > 0, judge.mode rules")
    model.eval()
    timings: dict[str, float] = {}
    t0 = _clock(rt)
    common = dict(max_new_tokens=ro.max_new_tokens, end_ids=tokens.end_ids, pad_id=tokens.pad_id,
                  blocked_ids=tokens.blocked_ids, top_p=ro.top_p)
    encoded = None
    with _autocast(rt):
        if ro.encode_audio_once and encoder_is_frozen(model):
            encoded = encode_audio(model, views.audio["input_features"], views.audio["feature_attention_mask"])
        audio = prompt_embeds(model, views.audio, encoded) if ro.encode_audio_once else views.audio
        if separate:
            parts = [sample(model, audio, 1, temperature=ro.distill_temperature, share_prefill=False, **common),
                     sample(model, audio, ro.group_size, temperature=ro.group_temperature, share_prefill=False,
                            **common)]
        else:
            both = sample(model, audio, 1 + ro.group_size, **common,
                          temperature=[ro.distill_temperature] + [ro.group_temperature] * ro.group_size)
            first = torch.arange(0, both.source.shape[0], 1 + ro.group_size, device=both.source.device)
            rest = torch.ones_like(both.source, dtype=torch.bool).index_fill(0, first, False)
            parts = [_rows(both, first), _rows(both, rest.nonzero().squeeze(1))]
    timings["rollout_s"] = _clock(rt) - t0

    ids = pad_right([p.completion_ids for p in parts], tokens.pad_id)  # [n, L]
    mask = pad_right([p.completion_mask for p in parts], 0)  # [n, L]
    source = torch.cat([p.source for p in parts])  # [n]
    finished = torch.cat([p.finished for p in parts])  # [n]
    n_distill = group_start = parts[0].completion_ids.shape[0]

    t0 = _clock(rt)
    scorer = model if teacher is None else teacher
    off = adapters_off(model) if teacher is None and lo.teacher == "base" else contextlib.nullcontext()
    text_prompt = repeat_rows(views.text, source[:n_distill])
    with off, _autocast(rt):
        hidden = completion_hidden(scorer, text_prompt, ids[:n_distill], mask[:n_distill])
        teacher_lp = full_logprobs(scorer, hidden, lo.kl_chunk_size)  # [n_distill, L, V]
    timings["teacher_s"] = _clock(rt) - t0

    t0 = _clock(rt)
    if teacher is None:
        refs, ref_tokens = reference_answers(model, tokenizer, views, recipe, rt, tokens, store)
    else:  # the copy has no adapters to switch off: it is the frozen base as it is
        plain = dataclasses.replace(recipe, loss=dataclasses.replace(lo, teacher="current"))
        refs, ref_tokens = reference_answers(teacher, tokenizer, views, plain, rt, tokens, store)
    group = Rollouts(ids[group_start:], mask[group_start:], finished[group_start:], source[group_start:])
    texts = tokenizer.batch_decode(group.completion_ids, skip_special_tokens=True)
    exs = [views.examples[int(s)] for s in group.source]
    reward_list = rule_rewards(texts, [refs[int(s)] for s in group.source], [ex.choices for ex in exs],
                               [not bool(f) for f in group.finished], recipe.judge.number_tolerance)
    rewards = torch.tensor(reward_list, device=ids.device)  # [n_group]
    advantages = group_advantages(rewards, ro.group_size)
    stats = dict(reward_mean=rewards.mean().item(), reward_std=rewards.std(unbiased=False).item(),
                 reference_tokens=float(ref_tokens))
    timings["judge_s"] = _clock(rt) - t0

    lengths = mask.sum(dim=1).float()
    stats.update(tokens_generated=float(mask.sum()), completion_len=lengths.mean().item(),
                 truncated_frac=1.0 - finished.float().mean().item(), **timings)
    return Collected(views, source, ids, mask, n_distill, group_start, teacher_lp, advantages, stats, encoded)


def load_teacher_copy(recipe: Recipe, rt: Runtime):
    """A second frozen copy of the base, loaded exactly like the student's base (benchmark only)."""
    from cordlite.models.load import load_base

    teacher, _ = load_base(recipe.model, recipe.quantization, rt)
    return teacher.eval()
