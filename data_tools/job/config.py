"""The typed, frozen configuration of a `cordlite data tts` job, from YAML, flags and --set.

A job config is YAML with sections source, text, tts, audio, output plus a few top-level
keys; every field is documented below. Unknown keys, wrong types and bad ranges are reported
together with their dotted path (cordlite.schema), like recipes:

    # spoken_gsm8k.yaml
    source: {path: data/gsm8k_test.jsonl, fields: {question: question, answer: answer}}
    tts: {backend: espeak, speed: [0.9, 1.1]}
    output: {dir: data/gsm8k_spoken}

    cordlite data tts spoken_gsm8k.yaml --set source.limit=100 --workers 2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cordlite.recipe import apply_overrides, set_dotted
from cordlite.schema import ConfigError, build, to_plain
from data_tools.sources import FieldMap, Format
from data_tools.tts.base import TTSConfig


@dataclass(frozen=True)
class SourceConfig:
    path: str = ""
    """Input: a .jsonl, .csv, .tsv or .parquet file, or a folder written by datasets.save_to_disk."""
    format: Format = "auto"
    """auto picks from the extension (a folder is a saved dataset)."""
    split: str | None = None
    """Split of a saved DatasetDict; may stay null when it has only one."""
    name: str = ""
    """Label stored in each row's `source` and used in generated ids; default: the input's file name stem."""
    fields: FieldMap = field(default_factory=FieldMap)
    """Which record fields hold the question, answer, choices and id."""
    limit: int = 0
    """Use only the first N records (0 = all). Raising it later and rerunning continues the job."""


@dataclass(frozen=True)
class TextConfig:
    verbalize: bool = True
    """Rewrite numbers, operators, LaTeX and symbols into words before synthesis (data_tools.text.speakable)."""
    max_chars: int = 1000
    """Rows whose spoken text is longer are rejected before synthesis (about 30 s of speech is 450 characters)."""


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float = 30.0
    """Longer clips are rejected (Qwen2-Audio's encoder takes at most 30 s)."""
    min_seconds: float = 0.3
    """Shorter clips are rejected (a failed or empty synthesis)."""


@dataclass(frozen=True)
class OutputConfig:
    dir: str = ""
    """Output folder: manifest.jsonl, audio/, rejects.jsonl, summary.json/.md, durations.png, job.json."""
    audio_format: Literal["wav", "flac"] = "wav"
    """16 kHz mono 16-bit audio as WAV or FLAC (about half the size)."""


@dataclass(frozen=True)
class JobConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    audio: AudioLimits = field(default_factory=AudioLimits)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 0
    """Seeds each row's voice draw (per row id, so the order of work does not matter)."""
    workers: int = 0
    """Synthesis threads; 0 = auto: two per CPU core for espeak's binary (each row is a short process
    plus a file write, so two keep a core busy), one per core otherwise."""
    retry_rejects: bool = False
    """On a rerun, try rows rejected before again instead of skipping them."""


# Settings that may change between a run and its resumption without mixing two data sets.
RESUMABLE_KEYS = ("workers", "retry_rejects", "source.limit", "tts.device", "output.dir")


def _check(cfg: JobConfig, problems: list[str], check_paths: bool) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    s = cfg.source
    need(bool(s.path), "source.path: required; the input file (.jsonl/.csv/.tsv/.parquet) or save_to_disk folder")
    if s.path and check_paths and not Path(s.path).exists():
        problems.append(f"source.path: {s.path!r} does not exist; check the path")
    need(bool(s.fields.question), "source.fields.question: required; the field holding the question text")
    need(s.limit >= 0, f"source.limit: {s.limit} must be >= 0 (0 = all records)")
    need(cfg.text.max_chars >= 1, f"text.max_chars: {cfg.text.max_chars} must be >= 1")
    a = cfg.audio
    need(0 <= a.min_seconds < a.max_seconds,
         f"audio.min_seconds / audio.max_seconds: need 0 <= {a.min_seconds} < {a.max_seconds}")
    t = cfg.tts
    lo, hi = t.speed
    need(0.46 <= lo <= hi <= 2.5, f"tts.speed: {list(t.speed)} must be [low, high] with 0.46 <= low <= high <= 2.5")
    plo, phi = t.pitch
    need(0 <= plo <= phi <= 99, f"tts.pitch: {list(t.pitch)} must be [low, high] within 0..99")
    if t.backend in ("kokoro", "transformers"):
        need(bool(t.model), f"tts.model: required with tts.backend={t.backend!r}; the local model folder")
        if t.model and check_paths and not Path(t.model).is_dir():
            problems.append(f"tts.model: {t.model!r} is not a folder; pass the local model directory")
    need(bool(cfg.output.dir), "output.dir: required; the folder the manifest and audio go to")
    need(cfg.workers >= 0, f"workers: {cfg.workers} must be >= 0 (0 = auto)")


def job_from_dict(raw: Any, source: str = "job", overrides: tuple[str, ...] | list[str] = (),
                  check_paths: bool = True) -> JobConfig:
    """Build and check a JobConfig from a mapping plus `key=value` overrides (values read as YAML)."""
    problems: list[str] = []
    raw = dict(raw) if isinstance(raw, dict) else raw
    if isinstance(raw, dict):
        apply_overrides(raw, overrides, problems)
    cfg = build(JobConfig, raw, "", problems)
    bad_fields = {p.split(":", 1)[0].split("[", 1)[0] for p in problems}
    checks: list[str] = []
    _check(cfg, checks, check_paths)
    problems += [c for c in checks if not any(c.startswith(b) for b in bad_fields)]
    if problems:
        raise ConfigError(source, problems, "in the TTS job's settings" if source == "flags" else "in the TTS job")
    return cfg


def load_job(path: str | Path | None, flags: dict[str, Any] | None = None,
             overrides: tuple[str, ...] | list[str] = (), check_paths: bool = True) -> JobConfig:
    """YAML file (optional), then flags (dotted keys, values as given), then --set overrides."""
    raw: dict = {}
    source = "flags"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(source, ["file not found; pass a job YAML or use flags only"])
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(source, [f"not valid YAML: {e}"]) from None
        if not isinstance(raw, dict):
            raise ConfigError(source, ["expected a mapping of sections (source, tts, output, ...)"])
    for dotted, value in (flags or {}).items():
        if value is not None:
            set_dotted(raw, dotted, value)
    return job_from_dict(raw, source, overrides, check_paths)


def job_to_dict(cfg: JobConfig) -> dict:
    return to_plain(cfg)


def fingerprint(cfg: JobConfig) -> dict:
    """What must match for a rerun to continue the same data set (input resolved to an absolute path)."""
    d = job_to_dict(cfg)
    d["source"]["path"] = str(Path(cfg.source.path).resolve())
    for dotted in RESUMABLE_KEYS:
        *parents, last = dotted.split(".")
        node = d
        for k in parents:
            node = node[k]
        node.pop(last, None)
    return d
