"""The token ids that end an answer, and those that must never be sampled (audio placeholders)."""

from __future__ import annotations

from cordlite.models.lora import base_of


def _family_tokens(attr: str) -> tuple[str, ...]:
    """Every family's `attr` tokens (a tokenizer holds only its own family's; the others are unknown to it)."""
    from cordlite.models.families import FAMILIES

    return tuple(dict.fromkeys(t for f in FAMILIES.values() for t in getattr(f, attr)))


def audio_special_token_ids(tokenizer) -> list[int]:
    """Token ids that must never be sampled: an audio placeholder in a completion breaks the next forward."""
    ids = []
    for tok in _family_tokens("never_sample"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return ids


def end_token_ids(model, tokenizer) -> list[int]:
    """Ids that end an answer: the generation config's eos ids plus the families' end-of-turn tokens
    the tokenizer has (<|im_end|>, <|endoftext|>, ...)."""
    ids: list[int] = []
    eos = base_of(model).generation_config.eos_token_id
    if eos is not None:
        ids += list(eos) if isinstance(eos, (list, tuple)) else [eos]
    for tok in _family_tokens("end_tokens"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids
