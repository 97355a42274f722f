"""Sample completions from the current model (student: adapters on, audio view).

`completion_mask` is PURE: it marks every token up to and including the first end token, so
the end token itself is trained on (the model must learn to stop).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cordlite.models.families import decoder_kwargs, family_or_none, forward_inputs


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


class _RowTemperature:
    """A logits processor dividing row r's scores by temperatures[r]: rows of one generate call
    sampled at different temperatures (generate runs it before top-k / top-p, as its own
    temperature warper)."""

    def __init__(self, temperatures: torch.Tensor):  # [n]
        self.temperatures = temperatures[:, None]  # [n, 1]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperatures.to(scores.device, scores.dtype)


def _prompt_cache(base, lm, prompt: dict[str, torch.Tensor], num_per_prompt: int):
    """The language model's keys and values of every prompt but its last token ([B, P-1] -> a
    cache of B * num_per_prompt rows, each prompt's repeated): generate() then reads only the last
    token, as it does after any prefilled cache, and samples on from there. `lm` is base's decoder
    (its family's lm)."""
    mask = prompt["attention_mask"]  # [B, P]
    embeds = prompt["inputs_embeds"] if "inputs_embeds" in prompt else base.get_input_embeddings()(prompt["input_ids"])
    position_ids = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # as generate() counts them
    out = lm(inputs_embeds=embeds[:, :-1], attention_mask=mask[:, :-1],
             position_ids=position_ids[:, :-1], use_cache=True, **decoder_kwargs(base, prompt["input_ids"][:, :-1]))
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    cache.batch_repeat_interleave(num_per_prompt)
    return cache


@functools.cache
def cache_kwarg(lm_class: type) -> str:
    """transformers renamed the forward's `past_key_values` to `cache` (5.24 accepts both, with a
    deprecation warning for the old name); the name this version declares."""
    import inspect

    return "cache" if "cache" in inspect.signature(lm_class.forward).parameters else "past_key_values"


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
) -> Rollouts:
    """num_per_prompt completions per prompt, grouped contiguously: rows [b*G, (b+1)*G) answer prompt b.
    `temperature`: one for every row, or one per position j in each prompt's group (row b*G + j
    at temperature[j]): several temperatures in one generate call, one prefill and one decode loop.
    `share_prefill` (prompts given as merged embeddings or as token ids): the language model reads
    each prompt once, without its LM head, and its G rows start from copies of its keys and values:
    one prefill per prompt instead of G, and no full-vocabulary logits for the prompt positions
    (generate() then computes them for the last position only; the model classes without
    `logits_to_keep`, Qwen2-Audio's, would compute a [rows, prompt, vocabulary] tensor there)."""
    from transformers import GenerationConfig, LogitsProcessorList

    batch = prompt["input_ids"].shape[0]
    source = torch.arange(batch, device=prompt["input_ids"].device).repeat_interleave(num_per_prompt)
    inputs = repeat_rows(prompt, source)
    processors = LogitsProcessorList()
    if not isinstance(temperature, (int, float)):
        if len(temperature) != num_per_prompt:
            raise ValueError(f"{len(temperature)} temperatures for groups of {num_per_prompt} rows")
        processors.append(_RowTemperature(torch.tensor(list(temperature), dtype=torch.float32).repeat(batch)))
        temperature = 1.0  # generate's own warper stays out
    gen = GenerationConfig(
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_p=top_p if not greedy else None,
        top_k=0 if not greedy else None,  # on-policy: sample the model's full distribution
        repetition_penalty=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(end_ids),
        pad_token_id=pad_id,
        suppress_tokens=list(blocked_ids) or None,
    )
    # generate() fills every field left unset in `gen` from the checkpoint's generation_config
    # (Qwen checkpoints ship top_k, top_p and repetition_penalty there). On-policy training must
    # sample the model's own distribution, so nothing may be inherited: swap in a clean config.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    # The cache layout is carried over: it changes speed and memory, never the distribution
    # (benchmarks/step_memory_speed.py --static-cache sets it there).
    base.generation_config = GenerationConfig(eos_token_id=list(end_ids), pad_token_id=pad_id,
                                              cache_implementation=saved.cache_implementation)
    cache = {}
    family = family_or_none(base)
    if family is not None and family.before_generate is not None:
        family.before_generate(base, inputs["input_ids"].shape[0])
    lm = family.lm(base) if family is not None else None  # None for a text-only model (the LLM judge): its own prefill
    if (share_prefill and lm is not None and ("inputs_embeds" in prompt or "input_features" not in prompt)
            and prompt["input_ids"].shape[1] > 1 and saved.cache_implementation is None):
        cache = {cache_kwarg(type(lm)): _prompt_cache(base, lm, prompt, num_per_prompt)}
    elif "inputs_embeds" in prompt and family is not None and family.decoder_inputs is not None:
        raise ValueError(f"{family.name}: prompts given as merged embeddings need cordlite's prefill (its language "
                         "model also reads the token ids); keep share_prefill on and the checkpoint's "
                         "cache_implementation unset")
    try:
        if cache:  # generate() reads only the last prompt token: its id, as in every decoding step
            inputs = {k: v for k, v in inputs.items() if k != "inputs_embeds"}
        out = model.generate(**forward_inputs(base, inputs), generation_config=gen,
                             logits_processor=processors if not greedy else None, **cache)
    finally:
        base.generation_config = saved
    completion = out[:, inputs["input_ids"].shape[1]:]  # [n, L]
    if completion.shape[1] == 0:
        completion = torch.full((out.shape[0], 1), pad_id, dtype=out.dtype, device=out.device)
    mask, finished = completion_mask(completion, end_ids)
    completion = completion.masked_fill(mask == 0, pad_id)
    return Rollouts(completion, mask, finished, source)
