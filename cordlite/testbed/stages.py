"""Stages (b) and (c) of the testbed build: train the text model, then align the audio side.

    model, processor = load_checkpoint(DIR)
    result = train_text(model, processor, train, val, instruction, FitConfig(...))
    result = align_audio(model, processor, train_examples, val_examples, instruction, FitConfig(...))
    save_checkpoint(model, processor, OUT_DIR)

(b) The language model (embeddings, decoder, LM head) of the real Qwen2AudioForConditionalGeneration
    learns question -> chain of thought on the TEXT view (the chat template with the question in
    the user turn), the audio tower untouched; it stops when the validation exact-match
    reaches its target: a good but imperfect teacher.
(c) With the language model frozen, the audio encoder and projector learn spoken question ->
    the same chain on the AUDIO view, and stop at a lower validation target: the audio view is
    aligned, but worse, like a real LALM's. A transcript term helps them start: each projected
    audio frame is classified against the language model's own (frozen) input embeddings, its
    label the token being spoken then (espeak reports where each word starts). It is the ASR part
    of a real LALM's alignment in its cheapest form: every spoken word gets a gradient, and the
    frames move into the embedding space the language model reads. (CTC on the same targets
    learned nothing about the numbers in the same budget; docs/testbed.md.)
The stopping metric is teacher-forced exact match on the validation split: the fraction of
answers whose every token is the argmax after the right prefix, which is exactly the fraction
that greedy decoding reproduces token for token (one forward pass instead of a decode loop).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cordlite.audio import load_audio
from cordlite.data import Example, encode_views
from cordlite.prompts import text_view_messages
from cordlite.testbed.fit import FitConfig, FitResult, answer_loss, completion_tensors, fit
from cordlite.testbed.task import Problem

EVAL_BATCH = 64


def load_checkpoint(path: str | Path):
    """(model in float32 eval mode, processor with left padding) from a checkpoint directory."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"  # both views' answers start at the same column
    return model, processor


def save_checkpoint(model, processor, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def end_and_pad(processor) -> tuple[int, int]:
    tok = processor.tokenizer
    return tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id


def text_prompts(processor, questions: list[str], instruction: str) -> dict[str, torch.Tensor]:
    """Text-view prompts, rendered exactly as cordlite.data.encode_views renders them."""
    texts = [processor.apply_chat_template(text_view_messages(q, instruction), add_generation_prompt=True,
                                           tokenize=False) for q in questions]
    enc = processor.tokenizer(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class TextPrompts:
    """text_prompts with each question's ids rendered once: the chat template costs about as much
    per question as a training step's compute on the testbed, and the trained stages see each
    question many times. Batches are left-padded like text_prompts'."""

    def __init__(self, processor, instruction: str):
        self.processor, self.instruction = processor, instruction
        self.ids: dict[str, torch.Tensor] = {}

    def __call__(self, questions: list[str]) -> dict[str, torch.Tensor]:
        missing = [q for q in dict.fromkeys(questions) if q not in self.ids]
        if missing:
            enc = text_prompts(self.processor, missing, self.instruction)
            for q, row, m in zip(missing, enc["input_ids"], enc["attention_mask"]):
                self.ids[q] = row[m.bool()]
        rows = [self.ids[q] for q in questions]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.processor.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, width - len(r):] = r
            attention[b, width - len(r):] = 1
        return {"input_ids": input_ids, "attention_mask": attention}


class ClipLoader:
    """encode_views' audio source without a cache: the train split is read from disk per batch."""

    def __call__(self, ex: Example):
        return load_audio(ex.audio_path)


def audio_prompts(processor, examples: list[Example], instruction: str) -> dict[str, torch.Tensor]:
    return encode_views(processor, examples, ClipLoader(), instruction).audio


class AudioPromptCache:
    """Audio-view prompts per clip, computed once (mel features kept in float16, 256 KB a clip
    with the 10 s window): the alignment sees each training clip several times, and the mel
    spectrogram is a third of a step's time."""

    def __init__(self, processor, instruction: str):
        self.processor, self.instruction = processor, instruction
        self.rows: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        missing = [ex for ex in examples if ex.id not in self.rows]
        if missing:
            enc = audio_prompts(self.processor, missing, self.instruction)
            for i, ex in enumerate(missing):
                ids = enc["input_ids"][i][enc["attention_mask"][i].bool()]  # strip the left padding
                self.rows[ex.id] = (ids, enc["input_features"][i].half(), enc["feature_attention_mask"][i])
        rows = [self.rows[ex.id] for ex in examples]
        length = max(len(r[0]) for r in rows)
        pad_id = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids, _, _) in enumerate(rows):
            input_ids[i, length - len(ids):] = ids
            attention[i, length - len(ids):] = 1
        return {"input_ids": input_ids, "attention_mask": attention,
                "input_features": torch.stack([r[1] for r in rows]).float(),
                "feature_attention_mask": torch.stack([r[2] for r in rows])}


def _labels(tokenizer, ex: Example, n_frames: int) -> torch.Tensor:
    enc = tokenizer(ex.question, add_special_tokens=False, return_offsets_mapping=True)
    return frame_token_labels(ex.question, ex.meta.get("words") or [], float(ex.meta.get("seconds", 0.0)),
                              enc["input_ids"], enc["offset_mapping"], n_frames)


def _set_trainable(model, part: str) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze the language model ('text') or the audio side ('audio')."""
    for p in model.parameters():
        p.requires_grad_(False)
    if part == "text":
        modules = [model.model.language_model, model.lm_head]
    else:
        modules = [model.model.audio_tower, model.model.multi_modal_projector]
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _exact_match(model, batches) -> float:
    """Mean teacher-forced exact match over (prompt, completion_ids, completion_mask) batches."""
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for prompt, ids, mask in batches:
            _, _, exact = answer_loss(model, prompt, ids, mask)
            hits += int(exact.sum())
            total += len(exact)
    return hits / max(1, total)


def train_text(model, processor, train: list[Problem], val: list[Problem], instruction: str,
               cfg: FitConfig, progress: bool = True) -> FitResult:
    """Stage (b): the language model learns question -> chain on the text view."""
    end_id, pad_id = end_and_pad(processor)
    params = _set_trainable(model, "text")
    val_batches = []
    for s in range(0, len(val), EVAL_BATCH):
        chunk = val[s : s + EVAL_BATCH]
        ids, mask = completion_tensors(processor.tokenizer, [p.answer for p in chunk], end_id, pad_id)
        val_batches.append((text_prompts(processor, [p.question for p in chunk], instruction), ids, mask))

    prompts = TextPrompts(processor, instruction)

    def step_loss(indices: list[int], step: int):
        model.train()
        chunk = [train[i] for i in indices]
        ids, mask = completion_tensors(processor.tokenizer, [p.answer for p in chunk], end_id, pad_id)
        loss, stats, _ = answer_loss(model, prompts([p.question for p in chunk]), ids, mask)
        return loss, stats

    result = fit(params, step_loss, lambda: _exact_match(model, val_batches), len(train), cfg, "text", progress)
    _set_trainable(model, "none")
    model.eval()
    return result


FRAMES_PER_SECOND = 25  # Qwen2-Audio: 100 mel frames/s, stride-2 conv, then average pooling by 2


def frame_token_labels(question: str, words: list, seconds: float, token_ids: list[int],
                       offsets: list[tuple[int, int]], n_frames: int) -> torch.Tensor:
    """Token id per audio frame [n_frames] from espeak's word starts (-100 = no label). PURE.

    A word spans from its start to the next word's start (the last one to the clip's end); its
    tokens, punctuation after it included, share that span in equal parts, in order."""
    labels = torch.full((n_frames,), -100, dtype=torch.long)
    if not words:
        return labels
    starts = [int(w[0]) for w in words]
    per_word: list[list[int]] = [[] for _ in words]
    for tid, (c0, c1) in zip(token_ids, offsets):
        while c0 < c1 and question[c0] == " ":
            c0 += 1
        k = max((i for i, s in enumerate(starts) if s <= c0), default=0)
        per_word[k].append(tid)
    for k, toks in enumerate(per_word):
        t0 = float(words[k][2])
        t1 = float(words[k + 1][2]) if k + 1 < len(words) else seconds
        f0, f1 = int(t0 * FRAMES_PER_SECOND), min(n_frames, int(round(t1 * FRAMES_PER_SECOND)))
        if not toks or f1 <= f0:
            continue
        for j, tid in enumerate(toks):
            a = f0 + (f1 - f0) * j // len(toks)
            b = f0 + (f1 - f0) * (j + 1) // len(toks)
            labels[a:b] = tid
    return labels


def transcript_loss(frames: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each projected audio frame [B, T, H] against its token label [B, T], the
    logits being dot products with the language model's input embeddings [V, H] (frozen)."""
    logits = frames.float() @ embeddings.float().T  # [B, T, V]
    return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)


def align_audio(model, processor, train: list[Example], val: list[Example], instruction: str,
                cfg: FitConfig, transcript_weight: float = 1.0, progress: bool = True,
                evaluate: Callable[[], float] | None = None) -> FitResult:
    """Stage (c): the audio encoder and projector learn spoken question -> chain (plus the
    transcript term with weight `transcript_weight`), the language model frozen. `evaluate`
    replaces the stopping metric (val exact match) when given: the ablation control uses it to
    score the test split at fixed steps."""
    end_id, pad_id = end_and_pad(processor)
    params = _set_trainable(model, "audio")
    captured: list[torch.Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o))
    val_batches = []
    for s in range(0, len(val), EVAL_BATCH):
        chunk = val[s : s + EVAL_BATCH]
        ids, mask = completion_tensors(processor.tokenizer, [ex.answer for ex in chunk], end_id, pad_id)
        val_batches.append((audio_prompts(processor, chunk, instruction), ids, mask))

    prompts = AudioPromptCache(processor, instruction)

    def step_loss(indices: list[int], step: int):
        model.train()
        model.model.language_model.eval()  # frozen: no dropout there either
        chunk = [train[i] for i in indices]
        prompt = prompts(chunk)
        captured.clear()
        ids, mask = completion_tensors(processor.tokenizer, [ex.answer for ex in chunk], end_id, pad_id)
        loss, stats, _ = answer_loss(model, prompt, ids, mask)
        if transcript_weight > 0:
            frames = captured[-1]  # [B, T, H] projector output, padded to the encoder window
            labels = torch.stack([_labels(processor.tokenizer, ex, frames.shape[1]) for ex in chunk])  # [B, T]
            term = transcript_loss(frames, model.model.language_model.embed_tokens.weight, labels)
            loss = loss + transcript_weight * term
            stats["transcript"] = term.item()
        return loss, stats

    try:
        metric = evaluate if evaluate is not None else (lambda: _exact_match(model, val_batches))
        result = fit(params, step_loss, metric, len(train), cfg, "audio", progress)
    finally:
        hook.remove()
    _set_trainable(model, "none")
    model.eval()
    return result
