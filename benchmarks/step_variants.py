"""Benchmark-only variants of the collection phase of a CORD step (cordlite.objective.step.collect).

collect_variant mirrors cordlite.objective.step.collect and departs from it only where a flag says so; with
no flag it returns exactly what collect returns (tests/test_benchmark.py checks this), so the
comparison measures the flag and nothing else.

  teacher=COPY   text-view scoring and the reference answers use a second, frozen copy of the base,
                 the way two-model distillation trainers hold their teacher, instead of the
                 student's own weights inside adapters_off(model). cordlite never loads such a copy;
                 it exists here only to measure what sharing one base saves.
  fused=True     the distillation rollout (T = 1.0) and the N group rollouts (T = 1.5) of a prompt
                 are sampled in ONE generate call with a temperature per row. collect makes two
                 calls (the N group rollouts are already one batched call; the distillation rollout
                 is a second call because its temperature differs), so a step decodes
                 2 x max_new_tokens sequential steps; fused decodes max_new_tokens.

Only the paper's layout is covered: both loss terms on, a separate distillation rollout, and the
rule-based judge (the benchmark's settings).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from cordlite.objective.advantages import group_advantages
from cordlite.config import Recipe
from cordlite.data import ViewBatch
from cordlite.judge.rewards import rule_rewards
from cordlite.objective.logprobs import completion_hidden, full_logprobs
from cordlite.models.runtime import Runtime
from cordlite.models.lora import adapters_off
from cordlite.models.sampling import Rollouts, completion_mask, pad_right, repeat_rows, sample
from cordlite.objective.step import Collected, ReferenceStore, Tokens, reference_answers
from cordlite.objective.step import _autocast, _clock  # the same autocast and synchronised clock as collect


def _row_temperature(temperature: torch.Tensor):
    """A logits processor dividing row i's scores by temperature[i]."""
    from transformers import LogitsProcessor

    class RowTemperature(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return scores / temperature.to(scores.device, scores.dtype)[:, None]  # [n, V] / [n, 1]

    return RowTemperature()


@torch.no_grad()
def sample_fused(model, prompt: dict[str, torch.Tensor], group_size: int, t_distill: float, t_group: float, *,
                 max_new_tokens: int, end_ids: list[int], pad_id: int, blocked_ids: list[int]) -> list[Rollouts]:
    """One generate call for B distillation rows then B*G group rows (grouped per prompt, as in collect)."""
    from transformers import GenerationConfig, LogitsProcessorList

    dev = prompt["input_ids"].device
    b = prompt["input_ids"].shape[0]
    src_d = torch.arange(b, device=dev)  # [B]
    src_g = src_d.repeat_interleave(group_size)  # [B*G]
    temps = torch.cat([torch.full((b,), t_distill), torch.full((b * group_size,), t_group)])  # [B + B*G]
    inputs = repeat_rows(prompt, torch.cat([src_d, src_g]))
    gen = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                           max_new_tokens=max_new_tokens, eos_token_id=list(end_ids), pad_token_id=pad_id,
                           suppress_tokens=list(blocked_ids) or None)
    # As in cordlite.models.sampling.sample: nothing inherited from the checkpoint's generation_config but the
    # cache layout.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = GenerationConfig(eos_token_id=list(end_ids), pad_token_id=pad_id,
                                              cache_implementation=saved.cache_implementation)
    try:
        out = model.generate(**inputs, generation_config=gen,
                             logits_processor=LogitsProcessorList([_row_temperature(temps)]))
    finally:
        base.generation_config = saved
    completion = out[:, inputs["input_ids"].shape[1]:]  # [B + B*G, L]
    mask, finished = completion_mask(completion, end_ids)
    completion = completion.masked_fill(mask == 0, pad_id)
    return [Rollouts(completion[:b], mask[:b], finished[:b], src_d),
            Rollouts(completion[b:], mask[b:], finished[b:], src_g)]


@torch.no_grad()
def collect_variant(model, tokenizer, views: ViewBatch, recipe: Recipe, rt: Runtime, tokens: Tokens,
                    store: ReferenceStore, *, teacher=None, fused: bool = False) -> Collected:
    """cordlite.objective.step.collect, with the teacher on a separate copy and/or fused rollouts (module docstring)."""
    ro, lo = recipe.rollout, recipe.loss
    if ro.share_rollouts or lo.lambda_tok <= 0 or lo.lambda_seq <= 0 or recipe.judge.mode != "rules":
        raise ValueError("collect_variant covers the paper's layout only: rollout.share_rollouts false, "
                         "loss.lambda_tok and loss.lambda_seq > 0, judge.mode rules")
    if fused and ro.top_p != 1.0:
        raise ValueError(f"rollout.top_p: {ro.top_p}; fused rollouts sample the full distribution (top_p 1.0)")
    model.eval()
    timings: dict[str, float] = {}
    t0 = _clock(rt)
    common = dict(max_new_tokens=ro.max_new_tokens, end_ids=tokens.end_ids, pad_id=tokens.pad_id,
                  blocked_ids=tokens.blocked_ids)
    with _autocast(rt):
        if fused:
            parts = sample_fused(model, views.audio, ro.group_size, ro.distill_temperature, ro.group_temperature,
                                 **common)
        else:
            parts = [sample(model, views.audio, 1, temperature=ro.distill_temperature, top_p=ro.top_p, **common),
                     sample(model, views.audio, ro.group_size, temperature=ro.group_temperature, top_p=ro.top_p,
                            **common)]
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
    return Collected(views, source, ids, mask, n_distill, group_start, teacher_lp, advantages, stats)


def load_teacher_copy(recipe: Recipe, rt: Runtime):
    """A second frozen copy of the base, loaded exactly like the student's base (benchmark only)."""
    from cordlite.models.load import load_base

    teacher, _ = load_base(recipe.model, recipe.quantization, rt)
    return teacher.eval()
