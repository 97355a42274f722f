"""Supervised pieces of the testbed build: teacher-forced answer loss and the stop-at-target loop.

    loss, stats = answer_loss(model, prompt, completion_ids, completion_mask)
    result = fit(params, step_loss, evaluate, n_examples, FitConfig(...), label="text")

Both trained stages of the build (the text model, then the audio alignment) minimise the
negative log-likelihood of the reference chain of thought after a prompt (text view or audio
view), with AdamW, linear warm-up and a constant rate (or a linear decay, `schedule`), and stop
as soon as a validation metric reaches its target (or at max_steps). Stopping at a target
instead of after a fixed number of steps is what makes the teacher "good but not perfect" and the
audio view "aligned, but less", whatever the speed of the machine. Everything is seeded; the data
order is cordlite.data.batch_indices (a seeded permutation per epoch).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cordlite.data import batch_indices
from cordlite.models.lora import base_of
from cordlite.objective.logprobs import completion_hidden

SCHEDULES = ("constant", "linear")
_SHOWN = ("loss", "transcript", "asr", "audio_chain", "text_chain")  # the losses a progress line prints


@dataclass(frozen=True)
class FitConfig:
    """Optimisation and stopping rule of one trained stage."""

    lr: float = 3e-3
    """AdamW learning rate (constant after warm-up)."""
    batch_size: int = 32
    """Examples per optimizer step."""
    max_steps: int = 2000
    """Hard budget; the stage also stops earlier when the target is reached."""
    warmup_steps: int = 50
    """Linear warm-up from 0 to lr."""
    schedule: str = "constant"
    """After warm-up: "constant", or "linear" (down to 0 at max_steps; docs/testbed_record.md, the scratch build's second build)."""
    eval_every: int = 25
    """Steps between evaluations of the stopping metric."""
    target: float = 1.0
    """Stop at the first evaluation whose metric is >= target (a fraction in [0, 1])."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 = none)."""
    seed: int = 0
    """Seed of the data order and of any sampling inside the loss."""

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"FitConfig.schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")


@dataclass
class FitResult:
    steps: int
    reached_target: bool
    metric: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def completion_tensors(tokenizer, answers: list[str], end_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Answers as completion ids [B, L] right-padded, each followed by the end token, and the mask."""
    rows = [tokenizer(a, add_special_tokens=False)["input_ids"] + [end_id] for a in answers]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def answer_loss(model, prompt: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                completion_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Token-mean NLL of the completion after the prompt; stats; and per row whether greedy
    decoding would reproduce the completion exactly (argmax right at every position)."""
    hidden = completion_hidden(model, prompt, completion_ids, completion_mask)  # [B, L, H]
    logits = base_of(model).lm_head(hidden).float()  # [B, L, V]
    mask = completion_mask.bool()  # [B, L]
    nll = F.cross_entropy(logits.transpose(1, 2), completion_ids, reduction="none")  # [B, L]
    loss = nll[mask].mean()
    with torch.no_grad():
        right = (logits.argmax(-1) == completion_ids) | ~mask  # [B, L]
        exact = right.all(dim=1)  # [B]
        stats = {"loss": loss.item(), "token_acc": (right & mask).sum().item() / mask.sum().item(),
                 "exact": exact.float().mean().item()}
    return loss, stats, exact


def fit_fingerprint(cfg: FitConfig) -> dict:
    """cfg as a dict for the build's stage fingerprints. `schedule` came after the first builds:
    left out at its default, so their stages stay valid (they were all trained at a constant rate)."""
    d = dataclasses.asdict(cfg)
    if d["schedule"] == "constant":
        del d["schedule"]
    return d


def lr_factor(step: int, cfg: FitConfig) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warm-up, then the schedule."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.schedule == "constant" or step < cfg.warmup_steps:
        return warm
    return max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - cfg.warmup_steps))  # "linear"


def fit(params: list[torch.nn.Parameter], step_loss: Callable[[list[int], int], tuple[torch.Tensor, dict]],
        evaluate: Callable[[], float], n_examples: int, cfg: FitConfig, label: str,
        progress: bool = True) -> FitResult:
    """Train `params` on batches of example indices until evaluate() >= cfg.target or max_steps.

    step_loss(indices, step) returns (loss, stats) for one batch; evaluate() returns the
    stopping metric in [0, 1] (it is also run before the first step)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    t0 = time.perf_counter()
    history: list[dict] = []
    metric = evaluate()
    history.append({"step": 0, "metric": metric, "seconds": 0.0})
    bar = None
    if progress:
        from tqdm.auto import tqdm

        print(f"  [{label}] step 0: metric {metric:.3f} (target {cfg.target})", file=sys.stderr, flush=True)
        # A live bar between the evaluations (steps/s, time left); each evaluation prints a line above it.
        bar = tqdm(total=cfg.max_steps, desc=f"  [{label}]", unit="step", file=sys.stderr, dynamic_ncols=True,
                   mininterval=2.0, leave=False)
    step, running = 0, []
    while metric < cfg.target and step < cfg.max_steps:
        indices = batch_indices(n_examples, cfg.batch_size, step, cfg.seed)
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        loss, stats = step_loss(indices, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        running.append(stats)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {stats['loss']:.3f}" if "loss" in stats else "", refresh=False)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            metric = evaluate()
            keys = {k for s in running for k in s}
            mean = {k: sum(s[k] for s in running if k in s) / sum(k in s for s in running) for k in sorted(keys)}
            running = []
            row = {"step": step, "metric": metric, "seconds": round(time.perf_counter() - t0, 1),
                   **{f"train_{k}": round(v, 4) for k, v in mean.items()}}
            history.append(row)
            if bar is not None:
                losses = ", ".join(f"{k} {v:.3f}" for k, v in mean.items() if k in _SHOWN)
                bar.write(f"  [{label}] step {step}: metric {metric:.3f} (target {cfg.target}), train {losses}, "
                          f"{row['seconds']:.0f} s", file=sys.stderr)
    if bar is not None:
        bar.close()
    return FitResult(step, metric >= cfg.target, metric, time.perf_counter() - t0, history)
