"""Answer spoken questions with a merged checkpoint, or with a base model plus a LoRA adapter.

    cordlite infer --model exports/tiny-merged --audio question.flac
    cordlite infer --model BASE --adapter runs/tiny_cpu --audio q.wav --question "Answer with a number."
    cordlite infer --model exports/tiny-merged --manifest data/manifest.jsonl --out answers.jsonl

Any sample rate and channel count is read (cordlite.audio.load_audio: channels averaged, then
resampled to 16 kHz). Decoding is greedy. The text after the audio in the user turn is
`--question` when given, else the instruction the model was trained with when cordlite recorded it
(RUN/config.yaml of the adapter, or cordlite_export.json of a merged checkpoint), else nothing.
Batch mode appends one JSON line per answered row and skips rows already in the output file, so
an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cordlite.audio import SAMPLE_RATE, AudioError, load_audio
from cordlite.deploy.loading import load_model, resolve_adapter
from cordlite.lock import writer_lock


@dataclass
class Answerer:
    """A loaded model ready to answer: model (plain or PeftModel), processor and decoding settings."""

    model: object
    processor: object
    end_ids: list[int]
    pad_id: int
    blocked_ids: list[int]
    instruction: str  # text after the audio in the user turn
    system_prompt: str | None
    max_new_tokens: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def audio_prompt_inputs(processor, clips: list[np.ndarray], instruction: str = "",
                        system_prompt: str | None = None) -> dict[str, torch.Tensor]:
    """The audio view of each clip (chat template, generation prompt) as left-padded model inputs."""
    from cordlite.prompts import audio_view_messages

    # The template only needs to know there is an audio item; the samples go in through `audio=`.
    texts = [processor.apply_chat_template(audio_view_messages("clip", instruction, system_prompt),
                                           add_generation_prompt=True, tokenize=False) for _ in clips]
    enc = processor(text=texts, audio=list(clips), sampling_rate=SAMPLE_RATE, return_tensors="pt",
                    text_kwargs={"padding": True, "add_special_tokens": False})  # the template writes any BOS;
    # the audio keeps its processor's own padding (a full window)
    from cordlite.data import audio_inputs

    return audio_inputs(enc, len(clips))


def decoding_tokens(model, tokenizer) -> tuple[list[int], int, list[int]]:
    from cordlite.models.tokens import audio_special_token_ids, end_token_ids

    end = end_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end[-1]
    return end, pad, audio_special_token_ids(tokenizer)


def recorded_prompt(model_path: str, adapter_source=None) -> tuple[str, str | None]:
    """(instruction, system_prompt) the model was trained with, when cordlite recorded them: the
    adapter's training recipe, else the prompt cordlite merge wrote next to a merged checkpoint."""
    from cordlite.models.adapter import exported_prompt, trained_prompt

    found = trained_prompt(adapter_source.recipe, "adapter") if adapter_source is not None else None
    found = found or exported_prompt(model_path)
    return (found.instruction, found.system_prompt) if found else ("", None)


def load_answerer(model_path: str, adapter: str | None = None, *, allow_base_mismatch: bool = False,
                  device: str = "auto", dtype: str = "auto", quantize: str = "none",
                  max_new_tokens: int = 256, question: str | None = None) -> Answerer:
    """Load `model_path` (+ the adapter of a run or adapter directory) and the prompt settings."""
    from cordlite.models.adapter import check_adapter_base, load_adapter

    source = None
    if adapter is not None:
        source = resolve_adapter(adapter)  # a wrong path or base fails before the model loads
        if not allow_base_mismatch:
            check_adapter_base(source.adapter_dir, model_path)
    model, processor = load_model(model_path, device, dtype, quantize)
    if source is not None:
        model = load_adapter(model, source.adapter_dir, allow_base_mismatch=allow_base_mismatch).eval()
    instruction, system_prompt = recorded_prompt(model_path, source)
    if question is not None:
        instruction = question
    end, pad, blocked = decoding_tokens(model, processor.tokenizer)
    return Answerer(model, processor, end, pad, blocked, instruction, system_prompt, max_new_tokens)


def read_clip(path: str | Path, max_seconds: float | None = None) -> np.ndarray:
    """16 kHz mono float32 samples of one file; AudioError naming the file when it cannot be used."""
    clip = load_audio(path)
    if clip.size == 0:
        raise AudioError(f"audio file {path} has no samples; record or export it again")
    if max_seconds is not None and clip.size > max_seconds * SAMPLE_RATE:
        print(f"warning: {path} is {clip.size / SAMPLE_RATE:.1f} s; the audio encoder hears only the first "
              f"{max_seconds:g} s", file=sys.stderr)
    return clip


def _window_seconds(processor) -> float | None:
    n = getattr(processor.feature_extractor, "n_samples", None)
    return n / SAMPLE_RATE if n else None


@torch.no_grad()
def answer_clips(ans: Answerer, clips: list[np.ndarray]) -> list[str]:
    """Greedy answers to 16 kHz mono clips, one per clip."""
    from cordlite.models.audio_view import merged_audio_prompt
    from cordlite.models.sampling import sample

    inputs = audio_prompt_inputs(ans.processor, clips, ans.instruction, ans.system_prompt)
    inputs = {k: v.to(ans.device) for k, v in inputs.items()}  # the encoder casts features to its own dtype
    with torch.no_grad():
        inputs = merged_audio_prompt(ans.model, inputs)
    out = sample(ans.model, inputs, 1, temperature=1.0, max_new_tokens=ans.max_new_tokens, end_ids=ans.end_ids,
                 pad_id=ans.pad_id, blocked_ids=ans.blocked_ids, greedy=True)
    ids = out.completion_ids.masked_fill(out.completion_mask == 0, ans.pad_id)
    return [t.strip() for t in ans.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def answer_file(ans: Answerer, path: str | Path) -> str:
    """The greedy answer to one audio file of any sample rate and channel count."""
    return answer_clips(ans, [read_clip(path, _window_seconds(ans.processor))])[0]


def _done_rows(out: Path) -> dict[str, dict]:
    """Rows already answered; a torn last line (killed mid-write) is dropped and the file rewritten."""
    if not out.is_file():
        return {}
    rows, good = {}, []
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row:
            rows[row["id"]] = row
            good.append(line)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
    os.replace(tmp, out)
    return rows


def answer_manifest(ans: Answerer, manifest: str | Path, out: str | Path, batch_size: int = 1,
                    overwrite: bool = False, progress: bool = True) -> tuple[int, int]:
    """Answer every row of a manifest into JSONL `out`; returns (answered now, answered before)."""
    with writer_lock(out, "cordlite infer", fix="pass another --out"):
        from cordlite.data import read_manifest

        examples = read_manifest(manifest)  # reports every missing audio file at once
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and out.exists():
            out.unlink()
        done = _done_rows(out)
        todo = [ex for ex in examples if ex.id not in done]
        if done:
            print(f"{out}: {len(examples) - len(todo)} of {len(examples)} rows already answered; continuing",
                  file=sys.stderr)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="infer", unit="q", dynamic_ncols=True)
        window = _window_seconds(ans.processor)
        with out.open("a", encoding="utf-8") as f:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                answers = answer_clips(ans, [read_clip(ex.audio_path, window) for ex in chunk])
                for ex, text in zip(chunk, answers):
                    f.write(json.dumps({"id": ex.id, "audio_path": str(ex.audio_path), "prediction": text,
                                        "question": ex.question, "answer": ex.answer}) + "\n")
                f.flush()
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return len(todo), len(examples) - len(todo)
