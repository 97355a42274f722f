"""Sampling whose draws depend on the row, never on the batch: per-row counter-based uniforms.

    keys = row_keys(prompt_keys, group)           # [B] int64 -> [B*G] int64: one key per row
    pick = RowSampler(keys, temperatures, top_p, prompt_len)   # a logits processor for generate()

torch.multinomial draws from one generator for the whole batch, so a row's sample depends on
which other rows share its generate() call and in what order. Here the t-th token of a row is
drawn by inverse CDF from the uniform u = hash(key, t): the same key and the same logits give
the same token whether the row is sampled alone, with its group, with a whole optimizer step's
prompts, split by a memory budget, or on another rank. The distribution is exactly softmax(z / T)
(top-p applied first); only which uniform a row consumes changes. The hash is a 32-bit integer
mix (Wellons' "lowbias32") applied in int64 arithmetic that never overflows, twice, for 53 bits.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), in int64 without overflow: c split into 16-bit halves."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash of x (int64 tensor, values in [0, 2^32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(prompt_keys: torch.Tensor, group: int) -> torch.Tensor:
    """[B] prompt keys -> [B * group] row keys: row b*group + j is (prompt b, position j in its group)."""
    keys = prompt_keys.long().repeat_interleave(group)  # [B*G]
    j = torch.arange(group, device=keys.device).repeat(prompt_keys.shape[0])  # [B*G]
    return mix32((keys ^ mix32(j + 0x632BE5AB)) & _M32) | ((keys >> 32) << 32)


def uniforms(keys: torch.Tensor, t: int) -> torch.Tensor:
    """[R] row keys, token index t -> [R] float64 uniforms in (0, 1), a pure function of (key, t)."""
    lo, hi = keys & _M32, (keys >> 32) & _M32
    h1 = mix32(lo ^ mix32(hi ^ mix32(torch.full_like(lo, t & _M32))))
    h2 = mix32(h1 ^ 0x9E3779B9)
    bits = (h1 << 21) | (h2 >> 11)  # 53 random bits
    return (bits.double() + 0.5) / float(1 << 53)


def draw(scores: torch.Tensor, u: torch.Tensor, top_p: float = 1.0) -> torch.Tensor:
    """[R, V] logits (already divided by the temperature; -inf = never), [R] uniforms -> [R] token ids,
    token v with probability softmax(scores)[v] (restricted to the top-p nucleus when top_p < 1)."""
    probs = scores.float().softmax(dim=-1).double()  # [R, V]
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each
        probs = probs.masked_fill(before >= top_p, 0.0)  # the first token always stays
    cdf = probs.cumsum(dim=-1)  # [R, V]
    x = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)  # [R, 1] in (0, total)
    pick = torch.searchsorted(cdf, x, right=True).clamp(max=cdf.shape[1] - 1)  # first index with cdf > x
    if order is not None:
        pick = order.gather(1, pick)
    return pick.squeeze(1)


class RowSampler:
    """A generate() logits processor that samples each row itself and leaves generate() the argmax:
    the returned scores are 0 at the drawn token and -inf elsewhere (run generate() with
    do_sample=False; the suppress_tokens processor runs before it). `temperatures` [R]: one per row."""

    def __init__(self, keys: torch.Tensor, temperatures: torch.Tensor, top_p: float, prompt_len: int):
        self.keys = keys  # [R]
        self.temperatures = temperatures  # [R]
        self.top_p = top_p
        self.prompt_len = prompt_len  # the input_ids width before the first new token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len  # index of the token being drawn
        z = scores.float() / self.temperatures.to(scores.device, torch.float32)[:, None]  # [R, V]
        pick = draw(z, uniforms(self.keys.to(scores.device), t), self.top_p)  # [R]
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, pick[:, None], 0.0)
