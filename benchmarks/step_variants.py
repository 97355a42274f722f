"""Benchmark-only variants of the trainer's optimizer step (cordlite.train.optimizer_step.run_step).

  run_step_former   the arrangement cordlite ran before this release, from the same product functions:
                    per micro-batch, the rollouts of its prompts (their own generate call), each row a
                    copy of its prompt's keys and values in transformers' dynamic cache, the teacher's
                    log-probs, and a gradient pass that runs every row's prompt again when gradient
                    checkpointing is on (it shared the prompt only without checkpointing); the reference
                    prefetch decodes its whole block in one call, with no KV budget. The rows are drawn
                    from the same keys as the current step, so both arrangements sample the same tokens.
  separate_teacher  a second frozen copy of the base scores the text view and writes the reference
                    answers, the way two-model distillation trainers hold their teacher, instead of the
                    student's own weights with the adapters off. cordlite never loads such a copy; it
                    exists here only to measure what sharing one base saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch

from cordlite.data import encode_views
from cordlite.objective.references import step_keys
from cordlite.objective.step import batch_examples, clock, collect, compute_loss
from cordlite.train import optimizer_step
from cordlite.train.meter import peak_memory_gb, reset_peak_memory, step_flops
from cordlite.train.optimizer_step import StepParts, merge_stats, step_seed


def run_step_former(p: StepParts, step: int) -> dict:
    """One optimizer step in the former arrangement (module docstring); the same metrics row as run_step."""
    recipe, rt, t, o = p.recipe, p.rt, p.recipe.train, p.recipe.optim
    t0 = time.perf_counter()
    reset_peak_memory(rt.device)
    indices = optimizer_step.batch_indices(len(p.examples), t.batch_size, step, t.seed, recipe.data.shuffle)
    p.optimizer.zero_grad(set_to_none=True)
    unbudgeted = dataclasses.replace(recipe, rollout=dataclasses.replace(recipe.rollout, kv_budget_gb=1e6))
    prefetch = optimizer_step._prefetch_references(p.model, p.processor, p.examples, unbudgeted, rt, p.tokens,
                                                   p.store, step, p.per_rank, 0)
    p.phase("prefetch", None)
    keys = step_keys(t.seed, step, list(range(p.per_rank)), rt.device)
    parts = [prefetch]
    for start in range(0, p.per_rank, t.micro_batch_size):
        torch.manual_seed(step_seed(t.seed, step, start // t.micro_batch_size))
        chunk = batch_examples(p.examples, indices[start : start + t.micro_batch_size])
        views = encode_views(p.processor, chunk, p.audio_cache, recipe.data.instruction, recipe.data.system_prompt,
                             p.frames.counts() if p.frames is not None else None).to(rt.device)
        c = collect(p.model, p.processor.tokenizer, views, recipe, rt, p.tokens, p.store, p.judge, p.frames,
                    keys=keys[start : start + t.micro_batch_size], score=False, kv_cache="dynamic")
        p.phase("rollouts", (start, c))
        c = optimizer_step.score_teacher(p.model, c, recipe, rt)
        p.phase("teacher", None)
        loss, stats = compute_loss(p.model, c, recipe, rt, share_prompt=not rt.gradient_checkpointing)
        tb = clock(rt)
        (loss * (len(chunk) / t.batch_size)).backward()
        parts.append({**c.stats, **stats, "backward_s": clock(rt) - tb})
        del c, loss
        p.phase("gradient", None)
    t1 = time.perf_counter()
    max_norm = o.max_grad_norm if o.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(p.params, max_norm).item()
    lr = p.scheduler.get_last_lr()[0]
    p.optimizer.step()
    p.scheduler.step()
    optimizer_s = clock(rt) - t1
    p.phase("optimizer", None)
    row = merge_stats(parts)
    row.setdefault("references_s", 0.0)
    seconds = time.perf_counter() - t0
    flops = step_flops(*p.sizes, row)
    row.update(step=step + 1, lr=lr, grad_norm=grad_norm, optimizer_s=optimizer_s, step_seconds=seconds,
               peak_memory_gb=peak_memory_gb(rt.device), tokens_per_s=row["tokens_generated"] / max(row["rollout_s"], 1e-9),
               tflops=flops / 1e12, mfu=flops / seconds / p.peak_flops if p.peak_flops else None)
    return row


@contextlib.contextmanager
def separate_teacher(copy):
    """While it lasts, the trainer's teacher scoring and reference answers run on `copy` (a frozen
    base without adapters) instead of the student with its adapters off."""
    from cordlite.objective import step as step_module

    def as_current(recipe):  # the copy has no adapters to switch off: it is the frozen base as it is
        return dataclasses.replace(recipe, loss=dataclasses.replace(recipe.loss, teacher="current"))

    real_score, real_refs = optimizer_step.score_teacher, step_module.generate_references

    def score(model, c, recipe, rt):
        return real_score(copy, c, as_current(recipe), rt)

    def references(model, tokenizer, text, examples, recipe, rt, tokens, store, calls=None):
        return real_refs(copy, tokenizer, text, examples, as_current(recipe), rt, tokens, store, calls=calls)

    patches = [(optimizer_step, "score_teacher", score), (optimizer_step, "generate_references", references),
               (step_module, "generate_references", references)]
    saved = [(m, name, getattr(m, name)) for m, name, _ in patches]
    try:
        for m, name, fn in patches:
            setattr(m, name, fn)
        yield
    finally:
        for m, name, fn in saved:
            setattr(m, name, fn)


def load_teacher_copy(recipe, rt):
    """A second frozen copy of the base, loaded exactly like the student's base (benchmark only)."""
    from cordlite.models.load import load_base

    teacher, _ = load_base(recipe.model, recipe.quantization, rt)
    return teacher.eval()
