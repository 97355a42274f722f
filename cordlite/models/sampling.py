"""Sample completions from the current model (student: adapters on, audio view).

    r = sample(model, prompt, G, temperature=[1.0, 1.5, 1.5, 1.5, 1.5], keys=prompt_keys, ...)

`completion_mask` is PURE: it marks every token up to and including the first end token, so
the end token itself is trained on (the model must learn to stop).

A row's draws are a pure function of its key (cordlite.models.draws): the same prompts with the same
keys give the same completions however they are grouped into generate() calls. sample() splits its
prompts into calls whose KV cache fits `kv_budget` bytes (cordlite.models.kv_cache), prefills each
prompt once without the LM head, and decodes its G rows from one copy of the prompt's keys and
values where the language model allows it (kv_cache "auto"; "dynamic": transformers' own cache with
the prompt copied to each row, the former layout).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cordlite.models.draws import RowSampler, row_keys
from cordlite.models.families import decoder_kwargs, family_or_none, forward_inputs
from cordlite.models.kv_cache import (SharedPrefixCache, auto_budget, call_bytes, prompts_per_call,
                                      shared_prefix_attention, supports_shared_prefix)


@dataclass
class Rollouts:
    completion_ids: torch.Tensor  # [n, L] right-padded after the first end token
    completion_mask: torch.Tensor  # [n, L] 1 = valid token (end token included)
    finished: torch.Tensor  # [n] bool, True when an end token was produced within the budget
    source: torch.Tensor  # [n] index of the prompt each row answers


def completion_mask(ids: torch.Tensor, end_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [n, L] -> (mask [n, L] long, finished [n] bool). PURE."""
    is_end = torch.isin(ids, torch.tensor(end_ids, device=ids.device))  # [n, L]
    # Count end tokens strictly before each position: valid while none has appeared yet.
    ends_before = is_end.long().cumsum(dim=1) - is_end.long()  # [n, L]
    mask = (ends_before == 0).long()
    return mask, is_end.any(dim=1)


def repeat_rows(inputs: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Select prompt rows (with repeats) from a dict of batch-first tensors."""
    return {k: v.index_select(0, index.to(v.device)) for k, v in inputs.items()}


def pad_right(seqs: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    """Stack [n_i, L_i] blocks into [sum n_i, max L_i]."""
    length = max(s.shape[1] for s in seqs)
    out = [torch.nn.functional.pad(s, (0, length - s.shape[1]), value=pad_id) for s in seqs]
    return torch.cat(out, dim=0)


def random_keys(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n] prompt keys drawn from torch's global generator (seeded runs stay reproducible)."""
    return torch.randint(0, 2**62, (n,), device="cpu").to(device)


_SEQUENCE_KEYS = ("input_ids", "attention_mask", "inputs_embeds")


def trim_prompts(prompt: dict[str, torch.Tensor], first: int, last: int) -> dict[str, torch.Tensor]:
    """Prompts [first, last) of left-padded batch-first inputs, without the columns that are padding
    in all of them (positions count real tokens, so nothing computed from them changes)."""
    part = {k: v[first:last] for k, v in prompt.items()}
    real = part["attention_mask"].bool().any(dim=0)  # [P]
    start = int(real.float().argmax()) if bool(real.any()) else part["attention_mask"].shape[1] - 1
    return {k: (v[:, start:] if k in _SEQUENCE_KEYS else v) for k, v in part.items()}


def _prefill(base, lm, prompt: dict[str, torch.Tensor], cache) -> None:
    """The language model's keys and values of every prompt but its last token, into `cache`:
    generate() then reads only the last token, as it does after any prefilled cache."""
    mask = prompt["attention_mask"]  # [B, P]
    embeds = prompt["inputs_embeds"] if "inputs_embeds" in prompt else base.get_input_embeddings()(prompt["input_ids"])
    position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # as generate() counts them
    lm(inputs_embeds=embeds[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, :-1], use_cache=True,
       **{cache_kwarg(type(lm)): cache}, **decoder_kwargs(base, prompt["input_ids"][:, :-1]))


def _dynamic_prompt_cache(base, lm, prompt: dict[str, torch.Tensor], num_per_prompt: int):
    """The prefilled prompts in transformers' dynamic cache, each prompt's copied to its rows."""
    from transformers import DynamicCache

    cache = DynamicCache(config=base.config)
    _prefill(base, lm, prompt, cache)
    cache.batch_repeat_interleave(num_per_prompt)
    return cache


@functools.cache
def cache_kwarg(lm_class: type) -> str:
    """transformers renamed the forward's `past_key_values` to `cache` (5.24 accepts both, with a
    deprecation warning for the old name); the name this version declares."""
    import inspect

    return "cache" if "cache" in inspect.signature(lm_class.forward).parameters else "past_key_values"


def cache_storage_bytes(cache) -> int:
    """Bytes held by a cache's keys and values (a shared-prefix cache's whole buffers)."""
    if hasattr(cache, "storage_bytes"):
        return cache.storage_bytes()
    return sum(t.numel() * t.element_size() for layer in getattr(cache, "layers", [])
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, torch.Tensor))


@torch.no_grad()
def sample(
    model,
    prompt: dict[str, torch.Tensor],  # batch-first prompt inputs, left-padded, B rows
    num_per_prompt: int,
    *,
    temperature: float | Sequence[float],
    max_new_tokens: int,
    end_ids: list[int],
    pad_id: int,
    blocked_ids: list[int] = (),
    top_p: float = 1.0,
    greedy: bool = False,
    share_prefill: bool = True,
    keys: torch.Tensor | None = None,
    kv_budget: int | None = None,
    kv_cache: str = "auto",
    calls: list | None = None,
) -> Rollouts:
    """num_per_prompt completions per prompt, grouped contiguously: rows [b*G, (b+1)*G) answer prompt b.
    `temperature`: one for every row, or one per position j in each prompt's group (row b*G + j
    at temperature[j]). `keys` [B]: each prompt's sampling key (row b*G + j draws from (keys[b], j));
    unset, they come from torch's global generator. `kv_budget`: bytes of KV cache one generate call
    may hold (unset: half the free memory); the prompts are split into calls that fit it.
    `share_prefill` (prompts given as merged embeddings or as token ids): the language model reads
    each prompt once, without its LM head (generate() would compute [rows, prompt, vocabulary]
    logits for classes without `logits_to_keep`, Qwen2-Audio's). `kv_cache`: "auto" keeps one copy
    of each prompt's keys and values for its rows where the decoder allows it; "dynamic" copies it to
    every row in transformers' dynamic cache. `calls`: a list to which one dict per generate call is
    appended (prompts, rows, prompt_len, steps decoded, kv_bytes held)."""
    batch = prompt["input_ids"].shape[0]
    device = prompt["input_ids"].device
    temps = [float(temperature)] * num_per_prompt if isinstance(temperature, (int, float)) else list(temperature)
    if len(temps) != num_per_prompt:
        raise ValueError(f"{len(temps)} temperatures for groups of {num_per_prompt} rows")
    if keys is None:
        keys = random_keys(batch, device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_or_none(base)
    lm = family.lm(base) if family is not None else None  # None for a text-only model (the LLM judge): its own prefill
    prefilled = (share_prefill and lm is not None and ("inputs_embeds" in prompt or "input_features" not in prompt)
                 and prompt["input_ids"].shape[1] > 1)
    shared = prefilled and kv_cache == "auto" and supports_shared_prefix(lm)
    if "inputs_embeds" in prompt and family is not None and family.decoder_inputs is not None and not prefilled:
        raise ValueError(f"{family.name}: prompts given as merged embeddings need cordlite's prefill (its language "
                         "model also reads the token ids); keep share_prefill on")
    per_prompt = call_bytes(base.config, _kv_dtype(base, device), 1, num_per_prompt, prompt["input_ids"].shape[1],
                            max_new_tokens, shared)
    step = prompts_per_call(per_prompt, kv_budget if kv_budget is not None else auto_budget(device),
                            "the KV budget" if kv_budget is None else "rollout.kv_budget_gb")
    parts = []
    for first in range(0, batch, step):
        last = min(batch, first + step)
        part = trim_prompts(prompt, first, last)
        r = _sample_call(model, base, family, lm, part, num_per_prompt, temps, max_new_tokens, end_ids, pad_id,
                         blocked_ids, top_p, greedy, keys[first:last], prefilled, shared, calls)
        parts.append(Rollouts(r.completion_ids, r.completion_mask, r.finished, r.source + first))
    if len(parts) == 1:
        return parts[0]
    return Rollouts(pad_right([p.completion_ids for p in parts], pad_id), pad_right([p.completion_mask for p in parts], 0),
                    torch.cat([p.finished for p in parts]), torch.cat([p.source for p in parts]))


def _sample_call(model, base, family, lm, prompt, num_per_prompt, temps, max_new_tokens, end_ids, pad_id, blocked_ids,
                 top_p, greedy, keys, prefilled, shared, calls) -> Rollouts:
    """One generate() call for the B prompts of `prompt` (a budget's worth)."""
    from transformers import GenerationConfig, LogitsProcessorList

    batch, width = prompt["input_ids"].shape
    source = torch.arange(batch, device=prompt["input_ids"].device).repeat_interleave(num_per_prompt)
    # After cordlite's prefill generate() reads each row's last token id only: the merged embeddings
    # stay one copy per prompt (repeated for 20 rows of a 30 s prompt they would be 130 MB at 7B).
    inputs = repeat_rows({k: v for k, v in prompt.items() if not (prefilled and k == "inputs_embeds")}, source)
    processors = LogitsProcessorList()
    if not greedy:  # each row draws its own token (draws.RowSampler); generate() takes the argmax of that
        processors.append(RowSampler(row_keys(keys, num_per_prompt), torch.tensor(temps).repeat(batch), top_p, width))
    gen = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(end_ids),
        pad_token_id=pad_id,
        suppress_tokens=list(blocked_ids) or None,
        repetition_penalty=1.0,
    )
    # generate() fills every field left unset in `gen` from the checkpoint's generation_config
    # (Qwen checkpoints ship top_k, top_p and repetition_penalty there). On-policy training must
    # sample the model's own distribution, so nothing may be inherited: swap in a clean config.
    saved = base.generation_config
    base.generation_config = GenerationConfig(eos_token_id=list(end_ids), pad_token_id=pad_id)
    if family is not None and family.before_generate is not None:
        family.before_generate(base, inputs["input_ids"].shape[0])
    cache, attend = None, None
    if shared:
        cache = SharedPrefixCache(lm.config, batch, num_per_prompt, width - 1, max_new_tokens,
                                  prompt["attention_mask"][:, :-1])
        _prefill(base, lm, prompt, cache)
        attend = shared_prefix_attention(lm, cache)
    elif prefilled:
        cache = _dynamic_prompt_cache(base, lm, prompt, num_per_prompt)
    try:
        kwargs = {}
        if cache is not None:  # generate() reads only the last prompt token: its id, as in every decoding step
            kwargs[cache_kwarg(type(lm))] = cache
        with attend if attend is not None else contextlib.nullcontext():
            out = model.generate(**forward_inputs(base, inputs), generation_config=gen,
                                 logits_processor=processors or None, **kwargs)
    finally:
        base.generation_config = saved
    if calls is not None:
        positions = width + max_new_tokens
        planned = call_bytes(base.config, _kv_dtype(base, out.device), batch, num_per_prompt, width, max_new_tokens, shared)
        calls.append({"prompts": batch, "rows": batch * num_per_prompt, "prompt_len": width,
                      "steps": out.shape[1] - width, "positions": positions, "shared_prefix": shared,
                      "kv_bytes": cache_storage_bytes(cache) if cache is not None else planned})
    completion = out[:, width:]  # [n, L]
    if completion.shape[1] == 0:
        completion = torch.full((out.shape[0], 1), pad_id, dtype=out.dtype, device=out.device)
    mask, finished = completion_mask(completion, end_ids)
    completion = completion.masked_fill(mask == 0, pad_id)
    return Rollouts(completion, mask, finished, source)


def prompt_kv_bytes(model, prompt_len: int, rows: int, max_new_tokens: int, device: torch.device) -> int:
    """KV cache bytes of one prompt of `prompt_len` tokens and its `rows` rows in a call of sample() with
    merged embeddings or token ids (the trainer's rollouts and references): what a budget must hold."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_or_none(base)
    shared = family is not None and prompt_len > 1 and supports_shared_prefix(family.lm(base))
    return call_bytes(base.config, _kv_dtype(base, device), 1, rows, prompt_len, max_new_tokens, shared)


def _kv_dtype(base, device: torch.device) -> torch.dtype:
    """The dtype keys and values are cached in: autocast's where it is on, else the model's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return base.dtype
