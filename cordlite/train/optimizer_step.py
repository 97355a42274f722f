"""One optimizer step of the trainer, the same code every run and the step benchmark execute.

    parts = cordlite.train.trainer.setup(recipe, dist)     # model, data, optimizer: built once
    row = run_step(parts, step)                            # one step; its metrics.jsonl row

prefetch the teacher's references of the coming steps (budgeted calls) -> the step's prompts (this
rank's share) -> collect: every prompt's rollouts in one decode loop where rollout.kv_budget_gb
allows, the judge, the advantages -> per micro-batch: the teacher's log-probs (adapters off), the
loss, backward -> sum gradients over ranks, unscale (fp16), clip, optimizer step -> the row: timings
by phase, peak memory, rollout tokens/s, model FLOPs and MFU (cordlite.train.meter).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from cordlite.config import Recipe
from cordlite.data import AudioCache, Example, batch_indices, encode_views, text_views
from cordlite.models.audio_view import FrameCache
from cordlite.objective.references import ReferenceStore, Tokens, step_keys
from cordlite.objective.step import (batch_examples, clock, collect, compute_loss, generate_references,
                                     score_teacher)
from cordlite.train.distributed import Dist
from cordlite.train.meter import peak_memory_gb, reset_peak_memory, step_flops

_SUMMED = {"tokens_generated", "reference_tokens", "rollout_s", "teacher_s", "judge_s", "forward_s", "backward_s",
           "judge_by_rules", "judge_by_llm", "judge_cache_hits", "judge_unparseable", "generate_calls",
           "prefill_positions", "decode_positions", "teacher_positions", "teacher_head_positions", "grad_positions",
           "grad_head_positions", "reference_calls", "reference_positions", "reference_decode_positions"}
_MAXED = {"kl_max", "weight_max", "kv_cache_gb", "reference_kv_cache_gb"}


@dataclass
class StepParts:
    """What every step uses, built once (cordlite.train.trainer.setup)."""

    recipe: Recipe
    rt: object  # cordlite.models.runtime.Runtime
    dist: Dist
    model: object
    processor: object
    tokens: Tokens
    store: ReferenceStore
    judge: object
    frames: FrameCache | None
    audio_cache: AudioCache
    examples: list[Example]
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None
    sizes: tuple[int, int]  # (N_dec, N_head) of the FLOPs formula
    peak_flops: float | None
    check: Callable[[], None] = lambda: None  # between micro-batches: the trainer's signal check
    phase: Callable[[str, object], None] = lambda name, data: None
    """Called at the end of each phase ("prefetch", "rollouts" with (first prompt, Collected), "teacher", "gradient",
    "optimizer"): the step benchmark records each phase's peak memory there."""

    @property
    def per_rank(self) -> int:
        return self.recipe.train.batch_size // self.dist.world


def step_seed(seed: int, step: int, micro: int = 0) -> int:
    """Sampling seed of one micro-batch of one step (micro counts over the global batch)."""
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729) % (2**31)


def merge_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """One step's stats from its micro-batches: means, except counts/times (summed) and maxima."""
    out = {}
    for k in {k for p in parts for k in p}:
        vals = [p[k] for p in parts if k in p]
        out[k] = sum(vals) if k in _SUMMED else max(vals) if k in _MAXED else sum(vals) / len(vals)
    return out


REFERENCE_BATCH = 64  # text-view references generated together, for the coming steps' prompts


def _prefetch_references(model, processor, examples: list[Example], recipe: Recipe, rt, tokens: Tokens,
                         store: ReferenceStore, step: int, per_rank: int, rank: int) -> dict[str, float]:
    """When a prompt of this step has no text-view reference yet, generate those of every prompt of
    its block of steps (blocks of REFERENCE_BATCH // per_rank steps from step 0: the data order is
    known in advance, and fixed blocks make a resumed run generate what an unbroken one did), in as
    few generate calls as rollout.kv_budget_gb allows. Only for the frozen-base teacher, whose
    references never change. Its seconds and the positions it ran (for the step's FLOPs)."""
    t = recipe.train
    if recipe.loss.lambda_seq <= 0 or recipe.loss.teacher != "base":
        return {}

    def mine(s: int) -> list[Example]:
        idx = batch_indices(len(examples), t.batch_size, s, t.seed, recipe.data.shuffle)
        return [examples[i] for i in idx[rank * per_rank : (rank + 1) * per_rank]]

    if not store.missing(mine(step)):
        return {}
    t0 = time.perf_counter()
    block = max(1, REFERENCE_BATCH // per_rank)
    first = step // block * block
    # The whole block, past max_steps too: a resumed run with another max_steps generates the same.
    ahead = store.missing([ex for s in range(first, first + block) for ex in mine(s)])
    text = {k: v.to(rt.device) for k, v in text_views(processor, ahead, recipe.data.instruction,
                                                      recipe.data.system_prompt).items()}
    calls: list[dict] = []
    generate_references(model, processor.tokenizer, text, ahead, recipe, rt, tokens, store, calls=calls)
    return {"references_s": time.perf_counter() - t0, "reference_calls": float(len(calls)),
            "reference_kv_cache_gb": max(c["kv_bytes"] for c in calls) / 1e9,
            "reference_positions": float(sum(c["prompts"] * c["prompt_len"] + c["rows"] * c["steps"] for c in calls)),
            "reference_decode_positions": float(sum(c["rows"] * c["steps"] for c in calls))}


def run_step(p: StepParts, step: int) -> dict:
    """Optimizer step `step` (0-based); returns its metrics row (every rank's stats merged)."""
    recipe, rt, dist, t, o = p.recipe, p.rt, p.dist, p.recipe.train, p.recipe.optim
    t0 = time.perf_counter()
    reset_peak_memory(rt.device)
    indices = batch_indices(len(p.examples), t.batch_size, step, t.seed, recipe.data.shuffle)
    first = dist.rank * p.per_rank
    mine = indices[first : first + p.per_rank]
    p.optimizer.zero_grad(set_to_none=True)
    prefetch = _prefetch_references(p.model, p.processor, p.examples, recipe, rt, p.tokens, p.store, step, p.per_rank,
                                    dist.rank)
    p.phase("prefetch", None)
    p.check()
    views = encode_views(p.processor, batch_examples(p.examples, mine), p.audio_cache, recipe.data.instruction,
                         recipe.data.system_prompt, p.frames.counts() if p.frames is not None else None).to(rt.device)
    keys = step_keys(t.seed, step, list(range(first, first + p.per_rank)), rt.device)
    # Every prompt of this rank's share of the step at once: rollouts, rewards, advantages.
    collected = collect(p.model, p.processor.tokenizer, views, recipe, rt, p.tokens, p.store, p.judge, p.frames,
                        keys=keys, score=False)
    p.phase("rollouts", (first, collected))
    parts = [collected.stats, prefetch]
    for start in range(0, p.per_rank, t.micro_batch_size):
        p.check()
        # LoRA dropout (the off-policy baselines only) draws from torch's generator.
        torch.manual_seed(step_seed(t.seed, step, (first + start) // t.micro_batch_size))
        part = score_teacher(p.model, collected.prompts(start, start + t.micro_batch_size), recipe, rt)
        p.phase("teacher", None)
        loss, stats = compute_loss(p.model, part, recipe, rt)
        tb = clock(rt)
        share = loss * (len(part.views.examples) / t.batch_size)  # each rank's share of the global mean
        (p.scaler.scale(share) if p.scaler is not None else share).backward()
        parts.append({**part.stats, **stats, "backward_s": clock(rt) - tb})
        del part, loss, share
        p.phase("gradient", None)
    del collected, views
    p.check()  # parameters are still those of the last completed step
    t1 = time.perf_counter()
    dist.sum_gradients(p.params)
    if p.scaler is not None:
        p.scaler.unscale_(p.optimizer)  # clip the true gradients
    max_norm = o.max_grad_norm if o.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(p.params, max_norm).item()
    lr = p.scheduler.get_last_lr()[0]
    if p.scaler is not None:
        parts.append({"loss_scale": p.scaler.get_scale()})
        p.scaler.step(p.optimizer)  # skipped when the gradients overflowed; every rank agrees (the same sums)
        p.scaler.update()
    else:
        p.optimizer.step()
    p.scheduler.step()
    optimizer_s = clock(rt) - t1
    p.phase("optimizer", None)
    row = merge_stats([q for rank_parts in dist.gather(parts) for q in rank_parts])
    row.setdefault("references_s", 0.0)
    seconds = time.perf_counter() - t0
    flops = step_flops(*p.sizes, row)  # the row sums every rank's positions
    row.update(step=step + 1, lr=lr, grad_norm=grad_norm, optimizer_s=optimizer_s, step_seconds=seconds,
               world_size=dist.world, global_batch=len(indices), prompt_ids=[p.examples[i].id for i in indices],
               peak_memory_gb=peak_memory_gb(rt.device),
               tokens_per_s=row["tokens_generated"] / max(row["rollout_s"], 1e-9), tflops=flops / 1e12,
               mfu=flops / seconds / (p.peak_flops * dist.world) if p.peak_flops else None)
    return row
