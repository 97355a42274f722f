"""Import a benchmark that ships its own audio (VoiceBench, MMAU) into a cordlite eval manifest.

The clips are taken as they are: decoded from the dataset's audio bytes with soundfile (no
torchcodec or ffmpeg), mixed to mono and resampled to 16 kHz (cordlite's input format) but not
loudness-normalised; a clip longer than 30 s is cut to the 30 s Qwen2-Audio's encoder sees
anyway, and the row records its original length. The text prompt and the reference answer are
copied unchanged. Used by data_tools.presets; rows come from `voicebench_row` and `mmau_row`.

Resumable: every clip written is recorded in OUT/imported.jsonl (one line each), and a rerun does
not decode those again; the manifest is written at the end.
"""

from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

import numpy as np

from cordlite.audio import SAMPLE_RATE, resample, write_audio_atomic
from data_tools.sources import LETTERS, render_choices


class RowError(ValueError):
    """One record cannot be imported; it becomes a reject with this reason."""


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:100] or "row"


def decode_audio(value: object) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) of a datasets audio cell: {"bytes", "path"}, raw bytes,
    or a path to a readable file."""
    import soundfile as sf

    data_bytes, path = None, None
    if isinstance(value, dict):
        data_bytes, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data_bytes = value
    elif isinstance(value, str):
        path = value
    try:
        if data_bytes:
            samples, sr = sf.read(io.BytesIO(data_bytes), dtype="float32", always_2d=True)
        elif path and Path(path).is_file():
            samples, sr = sf.read(path, dtype="float32", always_2d=True)
        else:
            raise RowError("the audio cell has no bytes and no readable file path")
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise RowError(f"audio not decodable by soundfile ({e})") from None
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    return mono, int(sr)


def import_clip(value: object, dest: Path, max_seconds: float) -> dict:
    """Write the clip as 16 kHz mono PCM16 at `dest`; returns duration facts for the row."""
    mono, sr = decode_audio(value)
    if mono.size == 0:
        raise RowError("the audio clip is empty")
    if not np.all(np.isfinite(mono)):
        raise RowError("the audio clip holds NaN or infinite samples")
    audio = resample(mono, sr, SAMPLE_RATE)
    original = len(audio) / SAMPLE_RATE
    limit = int(max_seconds * SAMPLE_RATE)
    write_audio_atomic(dest, np.clip(audio[:limit], -1.0, 1.0), SAMPLE_RATE)
    facts = {"duration": round(min(len(audio), limit) / SAMPLE_RATE, 3), "original_sample_rate": sr}
    if len(audio) > limit:
        facts["clip_seconds"] = round(original, 3)  # cut to what the model's encoder sees
    return facts


def existing_clip(dest: Path) -> dict | None:
    """Duration facts of a clip an earlier run wrote, or None when it must be (re)made."""
    import soundfile as sf

    try:
        info = sf.info(str(dest))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    if info.samplerate != SAMPLE_RATE or info.frames == 0:
        return None
    return {"duration": round(info.frames / SAMPLE_RATE, 3)}


# --------------------------------------------------------------------------- rows


def voicebench_row(rec: dict, split: str, index: int, subset: str, many_splits: bool) -> dict:
    """A VoiceBench multiple-choice record (audio, prompt, reference) as a manifest row (no audio yet)."""
    prompt, ref = rec.get("prompt"), rec.get("reference")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError(f"prompt is {prompt!r}, expected the question text")
    if not isinstance(ref, str) or ref.strip().upper() not in tuple(LETTERS[:10]):
        raise RowError(f"reference is {ref!r}, expected an option letter")
    row_id = f"{subset}-{split}-{index:05d}" if many_splits else f"{subset}-{index:05d}"
    row = {"id": row_id, "question": prompt, "answer": ref.strip().upper(), "choices": None}
    for key in ("question_id", "category", "src"):  # MMSU's bookkeeping columns, kept for reference
        if rec.get(key) not in (None, ""):
            row[key] = rec[key]
    return row


def parse_choices(value: object) -> list[str]:
    """MMAU's choices: a list, or (lmms-lab/mmau) a JSON or Python-literal string of one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise RowError(f"choices {value[:60]!r} is neither a list nor a JSON list") from None
    if (not isinstance(value, (list, tuple)) or len(value) < 2
            or not all(isinstance(c, str) and c.strip() for c in value)):
        raise RowError(f"choices {value!r} must be a list of 2 or more option texts")
    if len(value) > 10:
        raise RowError(f"{len(value)} choices; at most 10 can be lettered")
    return [c.strip() for c in value]


def mmau_row(rec: dict, split: str, index: int, subset: str) -> dict:
    """An MMAU record (audio, question, choices, answer text) as an audio-only manifest row."""
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RowError(f"question is {question!r}, expected text")
    choices = parse_choices(rec.get("choices"))
    answer = rec.get("answer")
    if not isinstance(answer, str):
        raise RowError(f"answer is {answer!r}, expected the text of one option")
    folded = [c.casefold() for c in choices]
    if answer.strip() in choices:
        letter = LETTERS[choices.index(answer.strip())]
    elif answer.strip().casefold() in folded:
        letter = LETTERS[folded.index(answer.strip().casefold())]
    else:
        raise RowError(f"answer {answer!r} is not one of the choices {choices}")
    key = rec.get("id") or rec.get("audio_id")
    row_id = f"{subset}-{safe_id(Path(str(key)).stem)}" if key else f"{subset}-{split}-{index:05d}"
    row = {"id": row_id, "question": render_choices(question.strip(), choices), "answer": letter, "choices": choices,
           "text_view": False}
    for key in ("task", "difficulty", "category", "sub-category", "dataset"):
        if rec.get(key) not in (None, ""):
            row[key] = rec[key]
    return row
