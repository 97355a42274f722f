"""Row-keyed sampling (cordlite.models.draws) and the shared-prefix KV cache (cordlite.models.kv_cache):
the draws follow the distribution and depend only on (key, step); the cache's attention is the
per-row attention; its byte arithmetic by hand; a budget splits calls and refuses one too small."""

from __future__ import annotations

import math

import pytest
import torch

from cordlite.models.draws import RowSampler, draw, mix32, row_keys, uniforms
from cordlite.models.kv_cache import (BudgetError, SharedPrefixCache, call_bytes, kv_bytes, prompts_per_call,
                                      shared_prefix_attention_forward)


def _lowbias32(x: int) -> int:
    """The hash in plain Python integers (arbitrary precision: nothing can overflow)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_is_the_lowbias32_hash_and_stays_in_32_bits():
    x = [0, 1, 2, 12345, 0x7FFFFFFF, 0xFFFFFFFF]
    assert mix32(torch.tensor(x)).tolist() == [_lowbias32(v) for v in x]
    assert _lowbias32(1) == 0x688990C0 and _lowbias32(0) == 0
    assert len(set(mix32(torch.arange(10_000)).tolist())) == 10_000  # a bijection: no collisions


def test_uniforms_are_a_pure_function_of_key_and_step():
    keys = row_keys(torch.tensor([5, 6]), 3)  # [6]: 2 prompts x 3 rows
    assert len(set(keys.tolist())) == 6
    u0, u0_again, u1 = uniforms(keys, 0), uniforms(keys[[3, 4, 5, 0, 1, 2]], 0), uniforms(keys, 1)
    assert torch.equal(u0[[3, 4, 5, 0, 1, 2]], u0_again)  # the row's key decides, not its place in the batch
    assert not torch.equal(u0, u1)
    assert bool(((u0 > 0) & (u0 < 1)).all())
    many = uniforms(torch.arange(100_000), 0)
    assert abs(many.mean().item() - 0.5) < 0.003 and abs(many.var().item() - 1 / 12) < 0.001


def test_draw_inverts_the_cdf_by_hand():
    z = torch.tensor([0.1, 0.2, 0.7]).log().expand(4, 3)  # cdf 0.1, 0.3, 1.0
    u = torch.tensor([0.05, 0.25, 0.31, 0.999], dtype=torch.float64)
    assert draw(z, u).tolist() == [0, 1, 2, 2]
    # top-p 0.8 keeps the 0.7 and 0.2 tokens (the mass before 0.2 is 0.7 < 0.8): cdf 0.7/0.9, 1.0
    assert draw(z, u, top_p=0.8).tolist() == [2, 2, 2, 1]
    assert draw(z, u, top_p=0.5).tolist() == [2, 2, 2, 2]  # the nucleus is the 0.7 token alone
    suppressed = torch.tensor([[0.0, float("-inf"), 0.0]])
    assert draw(suppressed, torch.tensor([0.5 - 1e-9], dtype=torch.float64)).tolist() == [0]
    assert draw(suppressed, torch.tensor([0.5 + 1e-9], dtype=torch.float64)).tolist() == [2]


def test_drawn_frequencies_follow_softmax_at_each_rows_temperature():
    """60,000 rows, half at T = 1 and half at T = 0.5, each drawing its first token: every token's
    frequency is within 4 standard errors of softmax(z / T)."""
    z = torch.tensor([1.0, 0.0, -1.0, 0.5])
    n = 30_000
    sampler = RowSampler(torch.arange(2 * n), torch.tensor([1.0] * n + [0.5] * n), 1.0, prompt_len=7)
    scores = sampler(torch.zeros(2 * n, 7, dtype=torch.long), z.expand(2 * n, 4).clone())
    assert bool(((scores == 0).sum(dim=1) == 1).all()) and bool(torch.isinf(scores).sum(dim=1).eq(3).all())
    picks = scores.argmax(dim=1)
    for half, t in ((picks[:n], 1.0), (picks[n:], 0.5)):
        p = (z / t).softmax(0)
        freq = torch.bincount(half, minlength=4).double() / n
        se = (p * (1 - p) / n).sqrt()
        assert bool(((freq - p).abs() < 4 * se).all()), (t, freq, p)


def _per_row_attention(q, k_rows, v_rows, mask_rows, scale):
    """Plain attention, one row at a time: q [R, Hq, 1, d], k/v [R, Hkv, n_r, d] (lists), masks [n_r]."""
    out = []
    for qi, ki, vi, mi in zip(q, k_rows, v_rows, mask_rows):
        rep = qi.shape[0] // ki.shape[0]
        ki, vi = ki.repeat_interleave(rep, 0), vi.repeat_interleave(rep, 0)
        s = (qi @ ki.transpose(-1, -2)) * scale  # [Hq, 1, n]
        s = s.masked_fill(~mi, float("-inf"))
        out.append((s.softmax(-1) @ vi).transpose(0, 1))  # [1, Hq, d]
    return torch.stack(out)  # [R, 1, Hq, d]


def test_shared_prefix_attention_is_per_row_attention_with_gqa():
    """2 prompts (left-padded prefixes of 5 and 3 positions) x 3 rows, 4 query heads on 2 key/value
    heads, 3 decode steps: each step's output equals attention of each row over its own prompt and
    its own tokens (float64)."""
    from cordlite.models import kv_cache

    torch.manual_seed(0)
    b, g, hq, hkv, d, prefix, new = 2, 3, 4, 2, 8, 5, 3
    prompt_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    cache = SharedPrefixCache(_Config(2, hkv, d), b, g, prefix, new, prompt_mask)
    layer = cache.layers[0]
    kp, vp = torch.randn(b, hkv, prefix, d, dtype=torch.float64), torch.randn(b, hkv, prefix, d, dtype=torch.float64)
    layer.update(kp, vp)
    assert cache.get_seq_length() == prefix and layer.get_mask_sizes(1) == (prefix + 1, 0)
    own_k, own_v = [[] for _ in range(b * g)], [[] for _ in range(b * g)]
    token = kv_cache._ACTIVE.set(cache)  # as shared_prefix_attention sets it around generate()
    for step in range(new):
        k_new, v_new = torch.randn(b * g, hkv, 1, d, dtype=torch.float64), torch.randn(b * g, hkv, 1, d, dtype=torch.float64)
        keys, values = layer.update(k_new, v_new)
        assert keys.shape == (b, hkv, prefix + (step + 1) * g, d)
        q = torch.randn(b * g, hq, 1, d, dtype=torch.float64)
        ours, _ = shared_prefix_attention_forward(None, q, keys, values, None, scaling=0.3)
        k_rows, v_rows, masks = [], [], []
        for r in range(b * g):
            own_k[r].append(k_new[r])
            own_v[r].append(v_new[r])
            k_rows.append(torch.cat([kp[r // g]] + own_k[r], dim=1))
            v_rows.append(torch.cat([vp[r // g]] + own_v[r], dim=1))
            masks.append(torch.cat([prompt_mask[r // g].bool(), torch.ones(step + 1, dtype=torch.bool)]))
        expect = _per_row_attention(q, k_rows, v_rows, masks, 0.3)
        assert ours.shape == (b * g, 1, hq, d)
        assert torch.allclose(ours, expect, atol=1e-12)
    kv_cache._ACTIVE.reset(token)
    assert cache.get_seq_length() == prefix + new
    with pytest.raises(ValueError, match="more than the 3 decode steps"):
        layer.update(k_new, v_new)


class _Config:
    def __init__(self, layers, kv_heads, head_dim):
        self.num_hidden_layers, self.num_key_value_heads, self.head_dim = layers, kv_heads, head_dim
        self.num_attention_heads, self.hidden_size = kv_heads, kv_heads * head_dim


def test_kv_bytes_by_hand():
    """Qwen2-Audio-7B: 32 layers x 32 key/value heads x 128 dims x K and V x 2 bytes = 524,288 bytes a
    position. 4 prompts of 790 positions, 5 rows, 200 new tokens: one copy per row holds
    20 x 990 positions (10.38 GB); one copy per prompt 4 x (789 + 5 x 200) (3.75 GB)."""
    c = _Config(32, 32, 128)
    assert kv_bytes(c, torch.bfloat16, 1, 1) == 524_288
    assert call_bytes(c, torch.bfloat16, 4, 5, 790, 200, shared=False) == 20 * 990 * 524_288
    assert call_bytes(c, torch.bfloat16, 4, 5, 790, 200, shared=True) == 4 * 1789 * 524_288
    assert math.isclose(4 * 1789 * 524_288 / 1e9, 3.7518, rel_tol=1e-4)
    c.layer_types, c.sliding_window = ["sliding_attention", "full_attention"] * 16, 512
    assert kv_bytes(c, torch.bfloat16, 1, 1000) == (16 * 512 + 16 * 1000) * 32 * 128 * 2 * 2


def test_a_budget_splits_calls_and_refuses_one_below_a_prompt():
    assert prompts_per_call(100, 1000) == 10 and prompts_per_call(100, 150) == 1
    with pytest.raises(BudgetError, match=r"rollout.kv_budget_gb: 5e-08 GB is below the 1e-07 GB"):
        prompts_per_call(100, 50)
