"""The token ids that end an answer, and those that must never be sampled (audio placeholders)."""

from __future__ import annotations

from cordlite.models.lora import base_of

AUDIO_SPECIAL_TOKENS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")


def audio_special_token_ids(tokenizer) -> list[int]:
    """Token ids that must never be sampled: an audio placeholder in a completion breaks the next forward."""
    ids = []
    for tok in AUDIO_SPECIAL_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return ids


def end_token_ids(model, tokenizer) -> list[int]:
    """Ids that end an answer: the generation config's eos ids plus <|im_end|> and <|endoftext|>."""
    ids: list[int] = []
    eos = base_of(model).generation_config.eos_token_id
    if eos is not None:
        ids += list(eos) if isinstance(eos, (list, tuple)) else [eos]
    for tok in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids
