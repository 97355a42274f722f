"""What the no-grad phase of a step hands the gradient pass (`Collected`), and its slice per micro-batch.

A step samples every prompt's rows together (one decode loop for the whole optimizer step, within
the KV budget), then scores and back-propagates micro-batch by micro-batch: `Collected.prompts(a, b)`
is the part of prompts [a, b) with their rows, rewards and advantages, trimmed to the columns they use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cordlite.data import ViewBatch
from cordlite.models.sampling import trim_prompts


@dataclass
class Collected:
    """Everything the loss needs, produced without grad."""

    views: ViewBatch
    source: torch.Tensor  # [n] prompt row of each student row
    completion_ids: torch.Tensor  # [n, L]
    completion_mask: torch.Tensor  # [n, L]
    n_distill: int  # rows [0, n_distill) train the token-level KL
    group_start: int  # rows [group_start, n) train the GRPO term
    teacher_lp: torch.Tensor | None  # [n_distill, L, V]
    advantages: torch.Tensor | None  # [n - group_start]
    stats: dict[str, float] = field(default_factory=dict)
    audio_frames: tuple[torch.Tensor, torch.Tensor] | None = None  # a frozen encoder's output, reused by the loss

    def prompts(self, first: int, last: int) -> "Collected":
        """Prompts [first, last) with their rows (in the same order), re-indexed from 0; completion
        columns past every kept row's last valid token and prompt columns that are padding in every
        kept prompt are dropped (masked everywhere, so the loss is the same). Stats stay with the step."""
        keep = ((self.source >= first) & (self.source < last)).nonzero().squeeze(1)  # [n']
        n_distill = int((keep < self.n_distill).sum())
        group_start = int((keep < self.group_start).sum())
        mask = self.completion_mask.index_select(0, keep)
        width = max(1, int(mask.sum(dim=1).max())) if keep.numel() else 1
        advantages = None
        if self.advantages is not None:
            in_group = keep[keep >= self.group_start] - self.group_start
            advantages = self.advantages.index_select(0, in_group)
        teacher_lp = None
        if self.teacher_lp is not None:
            teacher_lp = self.teacher_lp.index_select(0, keep[keep < self.n_distill])[:, :width]
        views = ViewBatch(self.views.examples[first:last], trim_prompts(self.views.audio, first, last),
                          trim_prompts(self.views.text, first, last))
        frames = None
        if self.audio_frames is not None:
            hidden, lengths = self.audio_frames
            frames = (hidden[first:last], lengths[first:last])
        return Collected(views, self.source.index_select(0, keep) - first, self.completion_ids.index_select(0, keep)[:, :width],
                         mask[:, :width], n_distill, group_start, teacher_lp, advantages, {}, frames)
