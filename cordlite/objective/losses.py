"""CORD loss terms and the baselines' terms. PURE: tensors and scalars in, (loss, stats) out.

Every function takes per-token quantities that logprobs.py computes chunk by chunk, so the
full-vocabulary tensors are never all alive at once. Stats are detached Python floats.

  reverse_kl_per_token   D_t = sum_v p_s(v) (log p_s(v) - log p_t(v))        KL(student || teacher)
  forward_kl_per_token         sum_v p_t(v) (log p_t(v) - log p_s(v))        KL(teacher || student)
  weighted_token_loss    L_tok = mean_seq sum_t w_t D_t    (method doc, token level step 5)
  policy_gradient_loss   L_seq = -(1/N) sum_i A_i log p(y_i | x_a)           (sequence level step 5)
  sft_loss               -mean_seq sum_t log p(y_t | y_<t, x_a)              (SFT baseline)

Gradient of the reverse KL flows through the student log-probs only: the teacher is a constant,
and the sampled tokens are constants (no score-function term), as in GKD-style on-policy
distillation.
"""

from __future__ import annotations

from typing import Literal

import torch


def reverse_kl_per_token(
    student_logprobs: torch.Tensor,  # [..., V] log-softmax of the student, carries grad
    teacher_logprobs: torch.Tensor,  # [..., V] log-softmax of the teacher, constant
) -> torch.Tensor:  # [...] exact KL(student || teacher) at each position
    teacher_logprobs = teacher_logprobs.detach()
    return (student_logprobs.exp() * (student_logprobs - teacher_logprobs)).sum(dim=-1)


def forward_kl_per_token(
    student_logprobs: torch.Tensor,  # [..., V] carries grad
    teacher_logprobs: torch.Tensor,  # [..., V] constant
) -> torch.Tensor:  # [...] exact KL(teacher || student)
    teacher_logprobs = teacher_logprobs.detach()
    return (teacher_logprobs.exp() * (teacher_logprobs - student_logprobs)).sum(dim=-1)


def _per_sequence(values: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    summed = (values * mask).sum(dim=1)  # [N]
    if reduction == "sum":
        return summed
    if reduction == "mean":
        return summed / mask.sum(dim=1).clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def weighted_token_loss(
    kl: torch.Tensor,  # [N, L] per-token divergence, carries grad
    weights: torch.Tensor,  # [N, L] constant token weights (0 on masked positions)
    mask: torch.Tensor,  # [N, L] 1 = valid token
    reduction: Literal["sum", "mean"] = "sum",
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_tok = mean over sequences of sum_t w_t D_t (or of the per-token mean)."""
    mask = mask.to(kl.dtype)
    loss = _per_sequence(weights.detach().to(kl.dtype) * kl, mask, reduction).mean()
    with torch.no_grad():
        valid = mask.bool()
        kl_valid = kl.detach()[valid].float()
        w_valid = weights.detach()[valid].float()
        stats = {
            "tok_loss": loss.item(),
            "kl_mean": kl_valid.mean().item() if kl_valid.numel() else 0.0,
            "kl_p80": kl_valid.quantile(0.8).item() if kl_valid.numel() else 0.0,
            "kl_max": kl_valid.max().item() if kl_valid.numel() else 0.0,
            "weight_mean": w_valid.mean().item() if w_valid.numel() else 0.0,
            "weight_max": w_valid.max().item() if w_valid.numel() else 0.0,
        }
    return loss, stats


def policy_gradient_loss(
    token_logprobs: torch.Tensor,  # [N, L] log p(y_t | y_<t, x_a) of the sampled tokens, carries grad
    mask: torch.Tensor,  # [N, L] 1 = valid token
    advantages: torch.Tensor,  # [N] constant group advantages
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_seq = -(1/N) sum_i A_i * sum_t log p(y_i,t): REINFORCE, fully on-policy (no ratio, no clip)."""
    seq_logprob = (token_logprobs * mask.to(token_logprobs.dtype)).sum(dim=1)  # [N]
    adv = advantages.detach().to(seq_logprob.dtype)
    loss = -(adv * seq_logprob).mean()
    with torch.no_grad():
        stats = {
            "seq_loss": loss.item(),
            "adv_abs_mean": adv.abs().mean().item(),
            "seq_logprob_mean": seq_logprob.detach().mean().item(),
        }
    return loss, stats


def sft_loss(
    token_logprobs: torch.Tensor,  # [N, L] carries grad
    mask: torch.Tensor,  # [N, L]
    reduction: Literal["sum", "mean"] = "sum",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative log-likelihood of teacher-view rollouts under the audio view (the SFT baseline)."""
    loss = -_per_sequence(token_logprobs, mask.to(token_logprobs.dtype), reduction).mean()
    return loss, {"sft_loss": loss.item()}
