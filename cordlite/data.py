"""Manifest rows -> examples -> batches.

A manifest is JSONL, one object per line:
  id          unique string
  audio_path  path of the spoken question, relative to the manifest's directory (or absolute)
  question    the question as text (the teacher's view)
  answer      optional ground truth (used by evaluation, never by CORD training)
  choices     optional list of option texts for multiple choice
  text_view   optional, default true; false marks an audio-only item (the audio is a sound or music
              clip, the question is written): it has no text view, and `question` follows the
              audio in the audio view (evaluation only; CORD needs a text view to train)
Extra keys (duration, voice, source, ...) are kept in `Example.meta`.

Audio is read with soundfile (cordlite.audio), resampled to 16 kHz mono.
Data order is a pure function of (seed, epoch): resuming at step s replays the same prompts.
"""

from __future__ import annotations

import collections
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cordlite.audio import AudioError, load_audio

if TYPE_CHECKING:
    import torch


class ManifestError(ValueError):
    """A manifest problem, naming the file, the line and the field."""


@dataclass(frozen=True)
class Example:
    id: str
    audio_path: Path
    question: str
    answer: str | None = None
    choices: list[str] | None = None
    meta: dict = field(default_factory=dict)


REQUIRED = ("id", "audio_path", "question")


def read_manifest(path: str | Path, check_audio_exists: bool = True, skipped: list[str] | None = None) -> list[Example]:
    """Parse a manifest; every bad line is reported at once with its line number. With `skipped`
    (a list), bad lines are appended there and left out instead."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; check the path, or make spoken data with "
                            "`cordlite data tts` (docs/data_tools.md)")
    root = path.parent
    examples: list[Example] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"line {lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                "save the manifest as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if not examples and not problems and not line.lstrip().startswith(("{", "[")) and (
                        "," in line or "\t" in line or path.suffix.lower() in (".csv", ".tsv")):
                    kind = "TSV" if "\t" in line else "CSV"
                    raise ManifestError(f"{path}: a manifest is JSONL, one JSON object per line, and this looks like "
                                        f"{kind}; `cordlite data tts -i {path}` voices a table's questions into a "
                                        "manifest (docs/data_tools.md)") from None
                problems.append(f"line {lineno}: not valid JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"line {lineno}: expected a JSON object, got {type(row).__name__}")
                continue
            missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row.get(k).strip()]
            if missing:
                problems.append(f"line {lineno}: missing or empty field(s) {', '.join(missing)}")
                continue
            choices = row.get("choices")
            if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
                problems.append(f"line {lineno}: field choices must be a list of strings or null")
                continue
            if row["id"] in seen:
                problems.append(f"line {lineno}: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
                continue
            seen[row["id"]] = lineno
            audio = Path(row["audio_path"])
            audio = audio if audio.is_absolute() else root / audio
            if check_audio_exists and not audio.is_file():
                problems.append(f"line {lineno}: audio_path {row['audio_path']!r} not found at {audio}")
                continue
            if not isinstance(row.get("text_view", True), bool):
                problems.append(f"line {lineno}: field text_view must be true or false (false: an audio-only item "
                                f"such as MMAU, no text view), got {row['text_view']!r}")
                continue
            answer = row.get("answer")
            meta = {k: v for k, v in row.items() if k not in (*REQUIRED, "answer", "choices")}
            examples.append(Example(row["id"], audio, row["question"], None if answer is None else str(answer), choices, meta))
    if problems and skipped is not None and examples:
        skipped.extend(problems)
    elif problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ManifestError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(shown))
    if not examples:
        raise ManifestError(f"{path}: the manifest has no rows")
    return examples


def has_text_view(ex: Example) -> bool:
    """False for audio-only items (manifest `text_view: false`)."""
    return ex.meta.get("text_view", True) is not False


@dataclass
class ClipCheck:
    """What the headers of a manifest's clips say, read before any work (`check_clips`)."""

    problems: list[str]
    """One line per clip that cannot be used (unreadable, empty, too long)."""
    bad_ids: list[str]
    """The ids of those rows, in the same order."""
    resampled: list[str]
    """Ids of clips at another rate than 16 kHz (resampled as read)."""
    downmixed: list[str]
    """Ids of clips with more than one channel (averaged to mono as read)."""
    longest: str | None = None
    """Id of the longest usable clip (its prompt sizes the KV budget check before step 1)."""

    def notes(self) -> list[str]:
        out = []
        for ids, what in ((self.resampled, "not at 16 kHz: resampled as read"),
                          (self.downmixed, "not mono: channels averaged as read")):
            if ids:
                out.append(f"{len(ids)} clip(s) {what} (e.g. {ids[0]!r}); `cordlite data check` lists them")
        return out


def check_clips(examples: list[Example], max_seconds: float, limit: str = "data.max_audio_seconds",
                workers: int = 4) -> ClipCheck:
    """Read every clip's header (not its samples): a clip that cannot be read, is empty or is
    longer than `max_seconds` is a problem, reported with all the others before the first step,
    instead of stopping a run at the step that first loads it. Rate and channel count are noted."""
    import soundfile as sf
    from concurrent.futures import ThreadPoolExecutor

    def one(ex: Example):
        try:
            info = sf.info(str(ex.audio_path))
        except (RuntimeError, sf.LibsndfileError, OSError, TypeError) as e:
            return f"row {ex.id!r}: {ex.audio_path} cannot be read ({e}); convert it to 16 kHz mono WAV or drop the row"
        if info.frames <= 0 or info.samplerate <= 0:
            return f"row {ex.id!r}: {ex.audio_path} holds no samples; re-synthesise the clip or drop the row"
        seconds = info.frames / info.samplerate
        if seconds > max_seconds:
            return (f"row {ex.id!r}: {ex.audio_path} is {seconds:.1f} s, longer than {limit} ({max_seconds} s); "
                    "trim the clip or drop the row")
        return info

    problems, bad_ids, resampled, downmixed = [], [], [], []
    longest, most = None, -1.0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for ex, res in zip(examples, pool.map(one, examples)):
            if isinstance(res, str):
                problems.append(res)
                bad_ids.append(ex.id)
                continue
            if res.frames / res.samplerate > most:
                longest, most = ex.id, res.frames / res.samplerate
            if res.samplerate != 16000:
                resampled.append(ex.id)
            if res.channels != 1:
                downmixed.append(ex.id)
    return ClipCheck(problems, bad_ids, resampled, downmixed, longest)


def prompt_length_problems(processor, examples: list[Example], instruction: str, system_prompt: str | None,
                           new_tokens: int, limit: int) -> list[str]:
    """Rows whose text-view prompt plus `new_tokens` of answer exceed the language model's context
    (`limit` positions): one line each, found before the first step, not in it."""
    from cordlite.prompts import text_view_messages

    def prompt(question: str) -> str:
        return processor.apply_chat_template(text_view_messages(question, instruction, system_prompt),
                                             add_generation_prompt=True, tokenize=False)

    # Cheap first: the template's own tokens plus each question's (one batched tokenizer call, no
    # template per row). Only rows within a margin of the limit get their exact prompt: tokens can
    # merge differently where the question meets the template, by a token or two, not 16.
    overhead = len(processor.tokenizer(prompt(""), add_special_tokens=False)["input_ids"])
    lengths = [len(ids) for ids in processor.tokenizer([ex.question for ex in examples],
                                                       add_special_tokens=False)["input_ids"]]
    near = [ex for ex, n in zip(examples, lengths) if overhead + n + new_tokens > limit - 16]
    out = []
    for start in range(0, len(near), 256):
        chunk = near[start : start + 256]
        prompts = [prompt(ex.question) for ex in chunk]
        for ex, ids in zip(chunk, processor.tokenizer(prompts, add_special_tokens=False)["input_ids"]):
            if len(ids) + new_tokens > limit:
                out.append(f"row {ex.id!r}: its text-view prompt is {len(ids)} tokens; with rollout.max_new_tokens="
                           f"{new_tokens} that is over the model's {limit} positions; shorten the question "
                           "(or drop the row)")
    return out


def clip_problems_message(manifest: Path, problems: list[str], show: int = 20, what: str = "clip(s)") -> str:
    lines = [f"{manifest}: {len(problems)} {what} cannot be used; nothing was run:"]
    lines += [f"  {p}" for p in problems[:show]]
    if len(problems) > show:
        where = f"`cordlite data check {manifest}` lists every one" if what == "clip(s)" else "the first shown"
        lines.append(f"  ... and {len(problems) - show} more ({where})")
    return "\n".join(lines)


class AudioCache:
    """Loads clips (16 kHz mono float32), checks their length, and keeps the most recently used ones
    up to `max_mb` megabytes (least recently used dropped first; 0 keeps none): a run over 80,000 clips
    would otherwise hold every one of them, 100 GB and more."""

    def __init__(self, max_seconds: float = 30.0, max_mb: float = 1024.0):
        self.max_seconds = max_seconds
        self.max_bytes = int(max_mb * 1e6)
        self.bytes = 0
        self._cache: collections.OrderedDict[Path, np.ndarray] = collections.OrderedDict()

    def __call__(self, ex: Example) -> np.ndarray:
        audio = self._cache.get(ex.audio_path)
        if audio is not None:
            self._cache.move_to_end(ex.audio_path)
            return audio
        audio = load_audio(ex.audio_path)
        seconds = len(audio) / 16000
        if seconds > self.max_seconds:
            raise AudioError(f"{ex.audio_path}: {seconds:.1f} s is longer than data.max_audio_seconds="
                             f"{self.max_seconds}; trim the clip or drop row {ex.id!r}")
        if len(audio) == 0:
            raise AudioError(f"{ex.audio_path}: the clip is empty; re-synthesise row {ex.id!r}")
        if not np.isfinite(audio).all():
            raise AudioError(f"{ex.audio_path}: the clip holds NaN or infinite samples; re-synthesise row "
                             f"{ex.id!r} or drop it (`cordlite data check` finds every such clip)")
        if audio.nbytes <= self.max_bytes:
            self._cache[ex.audio_path] = audio
            self.bytes += audio.nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self._cache.popitem(last=False)
                self.bytes -= dropped.nbytes
        return audio


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> tuple[int, ...]:
    """The example order of one epoch: a seeded permutation, the same on every run and rank."""
    if not shuffle:
        return tuple(range(n))
    import torch  # lazy: reading a manifest (cordlite data check) needs no torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def batch_indices(n: int, batch_size: int, step: int, seed: int, shuffle: bool = True) -> list[int]:
    """Indices of the `batch_size` examples of optimizer step `step` (0-based) in the global stream."""
    start = step * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n)
        out.append(epoch_order(n, seed, epoch, shuffle)[offset])
    return out


@dataclass
class ViewBatch:
    """Model inputs of the two views of B examples, prompts left-padded."""

    examples: list[Example]
    audio: dict[str, "torch.Tensor"]  # input_ids [B, Pa], attention_mask, input_features, feature_attention_mask
    text: dict[str, "torch.Tensor"]  # input_ids [B, Pt], attention_mask

    def to(self, device: "torch.device") -> "ViewBatch":
        return ViewBatch(self.examples, {k: v.to(device) for k, v in self.audio.items()},
                         {k: v.to(device) for k, v in self.text.items()})


def encode_views(
    processor,
    examples: list[Example],
    audio_cache: AudioCache,
    instruction: str = "",
    system_prompt: str | None = None,
    frame_counts: dict[str, int] | None = None,
) -> ViewBatch:
    """Render both views with the chat template and run the processor (audio -> mel features).
    With `frame_counts` (clip id -> encoder frames, from a frame store) holding every example, the
    audio view is its token ids alone (input_ids, attention_mask), for prompt_embeds with the
    stored frames."""
    from cordlite.prompts import audio_view_messages

    audio_prompts = [
        processor.apply_chat_template(audio_view_messages(str(ex.audio_path), instruction, system_prompt,
                                                          None if has_text_view(ex) else ex.question),
                                      add_generation_prompt=True, tokenize=False)
        for ex in examples
    ]
    text = text_views(processor, examples, instruction, system_prompt)
    if frame_counts is not None and all(ex.id in frame_counts for ex in examples):
        # The encoder's frames are known (a frame store): no audio read, no mel features; the
        # placeholder is expanded to each clip's frame count as the processor expands it.
        expanded = [expand_audio_placeholder(processor, p, frame_counts[ex.id]) for p, ex in zip(audio_prompts, examples)]
        enc = processor.tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False)
        return ViewBatch(examples, {k: enc[k] for k in ("input_ids", "attention_mask")}, text)
    clips = [audio_cache(ex) for ex in examples]
    # Text padded to the longest prompt; the audio keeps its processor's own padding (a full window).
    # add_special_tokens=False everywhere a rendered chat template is tokenized: the template writes the
    # model's BOS itself where it has one (Gemma's), as transformers' apply_chat_template(tokenize=True).
    audio = processor(text=audio_prompts, audio=clips, sampling_rate=16000, return_tensors="pt",
                      text_kwargs={"padding": True, "add_special_tokens": False})
    return ViewBatch(examples, audio_inputs(audio, len(examples)), text)


def audio_inputs(encoded, n_clips: int) -> dict[str, "torch.Tensor"]:
    """A processor's audio-view output under cordlite's names (input_ids, attention_mask,
    input_features, feature_attention_mask: families name the mask differently), one window per clip."""
    mask_key = next((k for k in ("feature_attention_mask", "input_features_mask") if k in encoded), None)
    if mask_key is None or "input_features" not in encoded:
        raise ValueError(f"the processor returned {sorted(encoded.keys())}: no mel features with their mask")
    if encoded["input_features"].shape[0] != n_clips:
        raise ValueError(f"the processor split {n_clips} clips into {encoded['input_features'].shape[0]} windows; "
                         "cordlite needs one window per clip: keep clips within the encoder's window "
                         "(data.max_audio_seconds)")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "input_features": encoded["input_features"], "feature_attention_mask": encoded[mask_key]}


def expand_audio_placeholder(processor, prompt: str, n_audio: int) -> str:
    """A rendered audio-view prompt with its one audio placeholder repeated n_audio times (the
    clip's encoder frames), as the processor expands it after computing the mel features."""
    token = processor.audio_token
    if prompt.count(token) != 1:
        raise ValueError(f"the chat template rendered {prompt.count(token)} audio placeholders ({token}); expected 1")
    # the tokens the family's processor writes around them (AudioFamily.audio_span, set by its load_processor)
    start, end = getattr(processor, "_cordlite_audio_span", ("", ""))
    return prompt.replace(token, start + token * n_audio + end)


def text_views(processor, examples: list[Example], instruction: str = "",
               system_prompt: str | None = None) -> dict[str, "torch.Tensor"]:
    """The text view alone (input_ids [B, Pt], attention_mask; left-padded): no audio read."""
    from cordlite.prompts import text_view_messages

    prompts = [processor.apply_chat_template(text_view_messages(ex.question, instruction, system_prompt),
                                             add_generation_prompt=True, tokenize=False) for ex in examples]
    text = processor.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: text[k] for k in ("input_ids", "attention_mask")}
