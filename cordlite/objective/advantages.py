"""GRPO group advantages (method doc, "Sequence level", step 4). PURE.

A_i = r_i - mean(r) over the G rollouts of the same prompt. No division by the standard
deviation: the paper follows the Dr. GRPO-style unnormalised advantage, so a group whose
rewards are all equal contributes exactly zero.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards [N] with N = prompts * group_size, grouped contiguously -> advantages [N]."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)  # [prompts, G]
    return (groups - groups.mean(dim=1, keepdim=True)).view(-1)  # [N]
