"""CORD token weights and GRPO advantages against numbers worked out by hand."""

import pytest
import torch

from cordlite.objective.advantages import group_advantages
from cordlite.objective.weights import cord_token_weights


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_topk_and_position_decay_by_hand():
    # T = 4, beta = 2: w_pos = 2 - (t-1)/3 = [2, 5/3, 4/3, 1]; top-2 D_t are positions 1 and 2.
    w = cord_token_weights(t([[0.1, 0.5, 0.3, 0.2]]), t([[1, 1, 1, 1]]), alpha=2, beta=2, top_k=2)
    assert torch.allclose(w, t([[2.0, 10 / 3, 8 / 3, 1.0]]))


def test_sequence_shorter_than_k_gets_alpha_everywhere():
    # T = 3 <= K = 20: w_kl = alpha = 2 everywhere; beta = 3: w_pos = [3, 2, 1].
    w = cord_token_weights(t([[0.1, 0.2, 0.3]]), t([[1, 1, 1]]), alpha=2, beta=3, top_k=20)
    assert torch.allclose(w, t([[6.0, 4.0, 2.0]]))


def test_single_token_gets_beta_times_alpha_and_padding_gets_zero():
    w = cord_token_weights(t([[0.7, 9.0, 9.0]]), t([[1, 0, 0]]), alpha=2, beta=2, top_k=20)
    assert torch.allclose(w, t([[4.0, 0.0, 0.0]]))


def test_masked_positions_never_take_a_top_k_slot():
    # Huge divergence on padding must not steal alpha from valid tokens.
    kl = t([[0.1, 0.3, 0.2, 50.0, 60.0], [0.5, 0.4, 0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    w = cord_token_weights(kl, mask, alpha=3, beta=1, top_k=1)
    assert torch.allclose(w, t([[1, 3, 1, 0, 0], [3, 1, 0, 0, 0]]))
    # Row 2 has T = 2: beta = 1 leaves positions flat, the largest D_t is the first.


def test_uniform_when_alpha_and_beta_are_one():
    kl = torch.rand(3, 7)
    mask = t([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    assert torch.equal(cord_token_weights(kl, mask, alpha=1, beta=1, top_k=20), mask)


def test_weights_carry_no_gradient():
    kl = torch.rand(2, 5, requires_grad=True)
    w = cord_token_weights(kl, torch.ones(2, 5), 2, 2, 2)
    assert not w.requires_grad


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        cord_token_weights(torch.rand(2, 5), torch.ones(2, 4))


def test_group_advantages_by_hand():
    rewards = t([1, 0, 0, 1, 1, 1, 1, 1])
    adv = group_advantages(rewards, group_size=4)
    assert torch.allclose(adv, t([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_constant_reward_group_has_zero_advantage_and_no_std_division():
    assert torch.equal(group_advantages(t([0, 0, 0, 0]), 4), torch.zeros(4))
    # A std-normalised advantage would give +-1 here; CORD's is r - mean = +-0.25.
    assert torch.allclose(group_advantages(t([1, 0, 0, 0]), 4), t([0.75, -0.25, -0.25, -0.25]))


def test_group_size_must_divide_rewards():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(t([1, 0, 1, 0]), 3)
