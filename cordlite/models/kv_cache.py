"""The KV cache of a generate() call: each prompt's keys and values stored ONCE for all its rows, in a
buffer allocated once, and the byte arithmetic that sizes every call by a memory budget.

    cache = SharedPrefixCache(lm.config, prompts=B, group=G, prefix=P - 1, new=L, prompt_mask=mask[:, :-1])
    lm(inputs_embeds=embeds[:, :-1], ..., cache=cache)          # cordlite's prefill writes [0, P-1)
    with shared_prefix_attention(lm, cache): model.generate(..., cache=cache)

transformers' dynamic cache copies a prompt's keys and values to each of its G rows and grows by
concatenation: every decode step rewrites the whole cache, and G rows of a 790-position spoken
prompt hold G copies of it (at Qwen2-Audio-7B's 0.52 MB per position, 5 rows x 990 positions are
2.6 GB). Here one buffer per layer, [B, heads, P-1 + G*L, head_dim], holds each prompt's P-1
prompt positions once, followed by its rows' new tokens interleaved by step (step s of row g at
P-1 + s*G + g). A decode step writes G positions per prompt and reads only what is written; the
attention of a prompt's G rows is ONE scaled_dot_product_attention call with the rows as its G
query positions and a mask that shows each row the prompt and its own tokens
(cordlite_shared_prefix_attention). The same numbers as per-row attention, in another summation
order. It serves language models whose layers all attend to the full context (Qwen2-Audio,
Qwen2.5-Omni, the Flamingos); sliding windows or layers that reuse other layers' keys (Gemma 4)
keep transformers' dynamic cache (`supports_shared_prefix`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
from typing import Iterator

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

ATTENTION = "cordlite_shared_prefix"
_ACTIVE: contextvars.ContextVar["SharedPrefixCache | None"] = contextvars.ContextVar("cordlite_kv", default=None)


def text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def supports_shared_prefix(lm) -> bool:
    """Whether every layer of the decoder `lm` attends to the whole context with its own keys."""
    c = text_config(lm.config)
    types = getattr(c, "layer_types", None) or []
    return (all(t == "full_attention" for t in types) and not getattr(c, "num_kv_shared_layers", 0)
            and not getattr(c, "attn_logit_softcapping", None))


def kv_bytes(config, dtype: torch.dtype, rows: int, positions: int) -> int:
    """Bytes of the keys and values of `rows` rows of `positions` positions, every layer that keeps its
    own (a sliding-window layer keeps at most its window; layers reusing another layer's keep none).
    Per-layer head sizes (Gemma 4's per_layer_config) are read layer by layer."""
    c = text_config(config)
    layers = c.num_hidden_layers - (getattr(c, "num_kv_shared_layers", 0) or 0)
    types = (getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers)[:layers]
    window = getattr(c, "sliding_window", None) or positions
    per_layer = getattr(c, "per_layer_config", None)
    total = 0
    for i, kind in enumerate(types):
        lc = per_layer[i] if per_layer is not None else c
        heads = getattr(lc, "num_key_value_heads", None) or lc.num_attention_heads
        head_dim = getattr(lc, "head_dim", None) or lc.hidden_size // lc.num_attention_heads
        total += heads * head_dim * (min(positions, window) if kind == "sliding_attention" else positions)
    return 2 * rows * total * torch.empty((), dtype=dtype).element_size()


def call_bytes(config, dtype: torch.dtype, prompts: int, group: int, prompt_len: int, new: int,
               shared: bool) -> int:
    """KV cache bytes of one generate call: `prompts` prompts of `prompt_len` tokens (left-padded),
    `group` rows each, `new` tokens per row. `shared`: each prompt stored once (SharedPrefixCache);
    otherwise once per row, as transformers' dynamic cache holds it."""
    if shared:
        return kv_bytes(config, dtype, prompts, prompt_len - 1 + group * new)
    return kv_bytes(config, dtype, prompts * group, prompt_len + new)


def auto_budget(device: torch.device) -> int:
    """The KV budget when none is set: half of the memory free now (CUDA: the device's free memory plus
    what the caching allocator holds unused; CPU: MemAvailable), so weights, activations and the
    other phases keep the rest."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.5 * (free + cached))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        return int(0.5 * avail)
    except (OSError, StopIteration, ValueError):
        return 4 << 30


class BudgetError(ValueError):
    """A KV budget below what one prompt's rows need; the message says how much they need."""


def prompts_per_call(per_prompt: int, budget: int, what: str = "rollout.kv_budget_gb") -> int:
    """How many prompts one call may take when each needs `per_prompt` bytes of cache."""
    if per_prompt > budget:
        raise BudgetError(f"{what}: {budget / 1e9:.3g} GB is below the {per_prompt / 1e9:.3g} GB of KV cache that one "
                          f"prompt's rows need; raise it to at least {math.ceil(per_prompt / 1e7) / 100:g}")
    return max(1, budget // per_prompt)


class SharedPrefixLayer(DynamicLayer):
    """One layer's keys and values: prompt b's prefix once at [0, prefix), then its rows' tokens
    interleaved by step. The first update is the prefill ([B, heads, prefix, d]); each later one is a
    decode step of the B*G rows ([B*G, heads, 1, d]). Allocated once, on the first update."""

    def __init__(self, prompts: int, group: int, prefix: int, new: int):
        super().__init__()
        self.prompts, self.group, self.prefix, self.new = prompts, group, prefix, new
        self.steps = 0  # decode steps written
        self.length = 0  # positions written (buffer columns)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        shape = (self.prompts, key_states.shape[1], self.prefix + self.group * self.new)
        self.k_buf = key_states.new_zeros((*shape, key_states.shape[-1]))
        self.v_buf = value_states.new_zeros((*shape, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.length == 0:  # the prefill: [B, heads, prefix, d]
            if key_states.shape[0] != self.prompts or key_states.shape[2] != self.prefix:
                raise ValueError(f"prefill of {tuple(key_states.shape)}: expected {self.prompts} prompts of "
                                 f"{self.prefix} positions")
            self.k_buf[:, :, : self.prefix] = key_states
            self.v_buf[:, :, : self.prefix] = value_states
            self.length = self.prefix
        else:  # a decode step: [B*G, heads, 1, d] -> [B, heads, G, d] at this step's G columns
            if self.steps >= self.new:
                raise ValueError(f"more than the {self.new} decode steps this cache was allocated for")
            b, g = self.prompts, self.group
            at = self.prefix + self.steps * g
            self.k_buf[:, :, at : at + g] = key_states.reshape(b, g, *key_states.shape[1:]).squeeze(3).transpose(1, 2)
            self.v_buf[:, :, at : at + g] = value_states.reshape(b, g, *value_states.shape[1:]).squeeze(3).transpose(1, 2)
            self.steps += 1
            self.length = at + g
        self.keys, self.values = self.k_buf[:, :, : self.length], self.v_buf[:, :, : self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Positions each ROW has seen (its prompt and its own tokens), as generate() counts them."""
        return (self.prefix + self.steps) if self.length else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return self.prefix + self.new

    def storage_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.k_buf, self.v_buf))

    def _refuse(self, *args, **kwargs):
        raise NotImplementedError("a shared-prefix cache is written once per step and never reordered")

    crop = batch_repeat_interleave = batch_select_indices = reorder_cache = _refuse


class SharedPrefixCache(Cache):
    """A cache of SharedPrefixLayers for a decoder with `config`, and the mask that shows each of a
    prompt's G rows the prompt (where `prompt_mask` [B, prefix] is 1) and its own new tokens."""

    def __init__(self, config, prompts: int, group: int, prefix: int, new: int, prompt_mask: torch.Tensor):
        c = text_config(config)
        super().__init__(layers=[SharedPrefixLayer(prompts, group, prefix, new) for _ in range(c.num_hidden_layers)])
        self.prompts, self.group = prompts, group
        own = torch.eye(group, dtype=torch.bool, device=prompt_mask.device).repeat(1, new)  # [G, G*L]
        self.visible = torch.cat([prompt_mask.bool()[:, None, None, :].expand(-1, 1, group, -1),
                                  own[None, None].expand(prompts, 1, -1, -1)], dim=-1)  # [B, 1, G, prefix + G*L]

    def storage_bytes(self) -> int:
        return sum(layer.storage_bytes() for layer in self.layers)


def shared_prefix_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                    attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention function (registered as "cordlite_shared_prefix"): query [B*G, Hq, 1, d] of
    one decode step, key/value [B, Hkv, n, d] from a SharedPrefixLayer -> output [B*G, 1, Hq, d]."""
    cache = _ACTIVE.get()
    if cache is None:
        raise RuntimeError("cordlite_shared_prefix attention outside a shared-prefix generate call")
    rows, heads, q_len, dim = query.shape
    b, g = cache.prompts, cache.group
    if q_len != 1 or rows != b * g:
        raise RuntimeError(f"shared-prefix attention decodes one token for {b} x {g} rows, got query {tuple(query.shape)}")
    q = query.reshape(b, g, heads, dim).transpose(1, 2)  # [B, Hq, G, d]: a prompt's rows as its query positions
    mask = cache.visible[..., : key.shape[2]]  # [B, 1, G, n]
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling,
                                                           enable_gqa=heads != key.shape[1])  # [B, Hq, G, d]
    return out.transpose(1, 2).reshape(rows, 1, heads, dim), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, shared_prefix_attention_forward)


@contextlib.contextmanager
def shared_prefix_attention(lm, cache: SharedPrefixCache) -> Iterator[None]:
    """While generate() decodes from `cache`: the decoder `lm` attends with shared_prefix_attention_forward
    (and builds no mask: transformers skips it for an implementation without a mask function)."""
    _register()
    config = lm.config
    saved = config._attn_implementation
    token = _ACTIVE.set(cache)
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = saved
        _ACTIVE.reset(token)


class GradPassCache(DynamicCache):
    """The cache of the gradient pass that reads each prompt once (objective.logprobs.shared_prompt_hidden):
    a transformers DynamicCache of the decoder's own layer types, safe under gradient checkpointing,
    which replays every layer's forward in backward.

    The prompt pass writes it: a layer's first update stores its keys and values (with their graph:
    the completion rows' gradients flow back through them); a replay finds the layer filled and gets
    its recomputed tensors back, storing nothing. `continuation(source)` is then the completion
    pass's cache: each row's prompt gathered, and every update returns what the dynamic cache would
    (the prompt's keys and values followed by the row's) while leaving the layer as it was, so the
    forward and its replay see the same prompt."""

    frozen = False

    def __init__(self, config):
        super().__init__(config=config)
        self.config = config

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if not self.frozen:
            if layer_idx < len(self.layers) and self.layers[layer_idx].is_initialized:
                return key_states, value_states  # a checkpoint replay of the prompt pass
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        saved = dict(vars(layer))
        try:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        finally:
            vars(layer).clear()
            vars(layer).update(saved)

    def continuation(self, source: torch.Tensor) -> "GradPassCache":
        rows = GradPassCache(self.config)
        rows.layers = [copy.copy(layer) for layer in self.layers]
        rows.batch_select_indices(source)  # [n, heads, P, d] per layer: differentiable gathers
        rows.frozen = True
        return rows


def grad_pass_cache(config) -> GradPassCache:
    """A GradPassCache for a model with `config` (its decoder's layer types)."""
    return GradPassCache(config)


@contextlib.contextmanager
def keep_cache_under_checkpointing(module) -> Iterator[None]:
    """transformers' checkpointed layers drop the cache argument (a cache that stores would be written
    twice by the replay) unless the layer declares `_can_checkpoint_with_cache`; the grad-pass cache
    is replay-safe, so its layers keep it while this context lasts."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            vars(m).pop("_can_checkpoint_with_cache", None)
