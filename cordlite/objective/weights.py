"""CORD token weights (method doc, "Token level", step 4). PURE: tensors in, tensors out.

For each sequence with T valid tokens and per-token divergence D_t (detached):
  divergence weight  w_kl  = alpha at the K positions with the largest D_t, else 1
                             (T <= K: every position gets alpha)
  position weight    w_pos = beta - (beta - 1) * (t - 1) / (T - 1),  t = 1..T  (beta when T = 1)
  w_t = w_kl * w_pos, and 0 on masked positions.
alpha = beta = 1 gives uniform weights (the "OPD" ablation).
"""

from __future__ import annotations

import torch


def cord_token_weights(
    kl: torch.Tensor,  # [N, L] per-token divergence D_t; only its order matters, never its grad
    mask: torch.Tensor,  # [N, L] 1 = valid completion token
    alpha: float = 2.0,
    beta: float = 2.0,
    top_k: int = 20,
) -> torch.Tensor:  # [N, L] weights, 0 where mask is 0
    if kl.shape != mask.shape or kl.dim() != 2:
        raise ValueError(f"kl and mask must both be [N, L], got {tuple(kl.shape)} and {tuple(mask.shape)}")
    valid = mask.bool()
    kl = kl.detach().float()
    n, length = kl.shape

    # Position weight: t counts valid tokens only, so a mask with holes still decays over T.
    t = valid.long().cumsum(dim=1)  # [N, L] 1-based index of each valid token
    big_t = valid.long().sum(dim=1, keepdim=True)  # [N, 1]
    frac = (t - 1).float() / (big_t - 1).clamp(min=1).float()  # [N, L] 0 at first, 1 at last
    w_pos = beta - (beta - 1.0) * frac  # T = 1: frac = 0, so w_pos = beta

    # Divergence weight: alpha on the top-K valid positions. Masked positions sort last (-inf),
    # so when T <= K every valid position is in the top-K.
    w_kl = torch.ones_like(kl)
    k = min(int(top_k), length)
    if k > 0:
        ranked = kl.masked_fill(~valid, float("-inf"))
        idx = ranked.topk(k, dim=1).indices  # [N, k]
        w_kl.scatter_(1, idx, float(alpha))

    return w_kl * w_pos * valid.float()
