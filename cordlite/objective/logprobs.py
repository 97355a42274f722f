"""Per-token log-probs and full-vocabulary divergences over a completion, in chunks of positions.

Both views score the same completion tokens after different prompts. Prompts are left-padded,
so the completion occupies the last L positions of both sequences; only those positions go
through the LM head, `chunk_size` positions at a time, so at most [n, chunk_size, V] logits are
alive. With grad, each chunk is recomputed in backward (activation checkpointing), which keeps
the student's memory bounded the same way.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from cordlite.models.families import decoder_kwargs, family_of, forward_inputs, logit_softcap
from cordlite.models.kv_cache import grad_pass_cache, keep_cache_under_checkpointing
from cordlite.models.lora import base_of
from cordlite.models.sampling import cache_kwarg
from cordlite.objective.losses import forward_kl_per_token, reverse_kl_per_token


def completion_hidden(
    model,
    prompt: dict[str, torch.Tensor],  # input_ids [n, P] left-padded, attention_mask, (+ audio features or embeds)
    completion_ids: torch.Tensor,  # [n, L]
    completion_mask: torch.Tensor,  # [n, L]
) -> torch.Tensor:  # [n, L, H]: the hidden state that predicts each completion token
    base = base_of(model)
    attention_mask = torch.cat([prompt["attention_mask"], completion_mask.to(prompt["attention_mask"].dtype)], dim=1)
    # Same positions as generate(): count real tokens, so left padding does not shift them.
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
    if "inputs_embeds" in prompt:  # an audio view already merged (cordlite.models.audio_view.prompt_embeds)
        completion = base.model.get_input_embeddings()(completion_ids)
        kwargs["inputs_embeds"] = torch.cat([prompt["inputs_embeds"], completion.to(prompt["inputs_embeds"].dtype)],
                                            dim=1)  # [n, P+L, H]
        kwargs.update(decoder_kwargs(base, torch.cat([prompt["input_ids"], completion_ids], dim=1)))
    else:
        kwargs["input_ids"] = torch.cat([prompt["input_ids"], completion_ids], dim=1)  # [n, P+L]
    if "input_features" in prompt and "inputs_embeds" not in prompt:
        kwargs.update(forward_inputs(base, {k: prompt[k] for k in ("input_features", "feature_attention_mask")}))
    hidden = base.model(**kwargs).last_hidden_state  # [n, P+L, H]
    p, length = prompt["attention_mask"].shape[1], completion_ids.shape[1]
    return hidden[:, p - 1 : p - 1 + length]


def shared_prompt_hidden(
    model,
    prompt: dict[str, torch.Tensor],  # inputs_embeds [B, P, H] (or input_ids [B, P]), attention_mask [B, P]; left-padded
    source: torch.Tensor,  # [n] the prompt row each completion row continues
    completion_ids: torch.Tensor,  # [n, L]
    completion_mask: torch.Tensor,  # [n, L]
) -> torch.Tensor:  # [n, L, H], as completion_hidden on the prompt rows repeated by `source`
    """completion_hidden for rows that share prompts (a step's rollouts: 1 + N rows per prompt):
    the language model runs each prompt once, and the rows continue from its keys and values
    (gathered by `source`, so their gradients add up on the shared prompt), not from n copies of it.
    The audio prompt is most of a row's tokens, so the gradient pass costs about B prompts plus n
    completions instead of n of both. Mathematically the same causal attention. Under gradient
    checkpointing too: the cache is replay-safe (models.kv_cache.grad_pass_cache), so the layers
    keep it while backward recomputes them. Needs merged embeddings or token ids (no audio features)."""
    base = base_of(model)
    lm = family_of(base).lm(base)
    p_mask = prompt["attention_mask"]  # [B, P]
    embeds = prompt["inputs_embeds"] if "inputs_embeds" in prompt else base.model.get_input_embeddings()(
        prompt["input_ids"])  # [B, P, H]
    p_pos = (p_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, P], as generate() counts them
    cache = grad_pass_cache(base.config)
    name = cache_kwarg(type(lm))
    with keep_cache_under_checkpointing(lm):
        out = lm(inputs_embeds=embeds, attention_mask=p_mask, position_ids=p_pos, use_cache=True, **{name: cache},
                 **decoder_kwargs(base, prompt["input_ids"]))
        mask = torch.cat([p_mask.index_select(0, source), completion_mask.to(p_mask.dtype)], dim=1)  # [n, P+L]
        pos = (mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, p_mask.shape[1]:]  # [n, L]
        completion = base.model.get_input_embeddings()(completion_ids).to(embeds.dtype)  # [n, L, H]
        hidden = lm(inputs_embeds=completion, attention_mask=mask, position_ids=pos, use_cache=True,
                    **{name: cache.continuation(source)}, **decoder_kwargs(base, completion_ids)).last_hidden_state
    first = out.last_hidden_state[:, -1].index_select(0, source)  # [n, H]: predicts completion token 0
    return torch.cat([first.unsqueeze(1), hidden[:, :-1]], dim=1)


def _lm_head(model) -> torch.nn.Linear:
    return base_of(model).lm_head


def head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                softcap: float | None = None) -> torch.Tensor:
    """The LM head's logits, soft-capped as the model's forward caps them (Gemma: tanh(z / c) * c)."""
    logits = F.linear(hidden, weight, bias)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def model_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """[.., H] -> [.., V]: the model's own logits for hidden states of its language model."""
    head = _lm_head(model)
    return head_logits(hidden, head.weight, head.bias, logit_softcap(model))


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 logits are upcast: the KL subtracts nearly equal log-probs
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits.log_softmax(dim=-1)


@torch.no_grad()
def full_logprobs(model, hidden: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[n, L, H] -> [n, L, V] log-softmax (at least float32), computed chunk by chunk (no grad: teachers)."""
    head, cap = _lm_head(model), logit_softcap(model)
    parts = [_log_softmax(head_logits(hidden[:, s : s + chunk_size], head.weight, head.bias, cap))
             for s in range(0, hidden.shape[1], chunk_size)]
    return torch.cat(parts, dim=1)


def _chunk_terms(h, weight, bias, tokens, teacher_lp, divergence, softcap=None):
    logp = _log_softmax(head_logits(h, weight, bias, softcap))  # [n, c, V]
    token_lp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [n, c]
    if teacher_lp is None:
        div = torch.zeros_like(token_lp)
    elif divergence == "reverse":
        div = reverse_kl_per_token(logp, teacher_lp)
    else:
        div = forward_kl_per_token(logp, teacher_lp)
    return token_lp, div


def student_token_terms(
    model,
    hidden: torch.Tensor,  # [n, L, H] student hidden states (carry grad)
    tokens: torch.Tensor,  # [n, L] completion tokens
    teacher_lp: torch.Tensor | None = None,  # [n, L, V] constant, or None for log-probs only
    chunk_size: int = 64,
    divergence: Literal["reverse", "forward"] = "reverse",
) -> tuple[torch.Tensor, torch.Tensor]:  # token_lp [n, L], per-token divergence [n, L] (0 without teacher)
    head, cap = _lm_head(model), logit_softcap(model)
    token_parts, div_parts = [], []
    for s in range(0, hidden.shape[1], chunk_size):
        args = (hidden[:, s : s + chunk_size], head.weight, head.bias, tokens[:, s : s + chunk_size],
                None if teacher_lp is None else teacher_lp[:, s : s + chunk_size], divergence, cap)
        if torch.is_grad_enabled() and hidden.requires_grad:
            tok, div = checkpoint(_chunk_terms, *args, use_reentrant=False)
        else:
            tok, div = _chunk_terms(*args)
        token_parts.append(tok)
        div_parts.append(div)
    return torch.cat(token_parts, dim=1), torch.cat(div_parts, dim=1)
