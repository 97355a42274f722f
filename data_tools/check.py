"""Validate a spoken manifest before training or evaluation on it.

    cordlite data check data/gsm8k_spoken/manifest.jsonl          # writes check.json beside it

Problems (exit status 1): unreadable JSON, missing or empty id/audio_path/question, bad
choices, duplicate ids, missing or undecodable audio, NaN or infinite samples, a sample rate other than 16 kHz,
more than one channel, silence, clips longer than the model takes (Qwen2-Audio: 30 s) or
shorter than a spoken question can be. Warnings (exit status 0): a `duration` field that
disagrees with the file. Finally the manifest goes through cordlite.data.read_manifest, the
reader `cordlite train` uses, so "ok" means the trainer will accept it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_tools.job.report import duration_stats


@dataclass(frozen=True)
class CheckLimits:
    max_seconds: float = 30.0
    """Longest clip allowed (Qwen2-Audio's encoder sees at most 30 s)."""
    min_seconds: float = 0.3
    """Shortest clip allowed."""
    silence_dbfs: float = -50.0
    """A clip whose RMS level is below this is silent."""
    sample_rate: int = 16000
    """The rate every clip must have."""


@dataclass(frozen=True)
class Finding:
    line: int
    id: str | None
    kind: str
    detail: str


def _check_audio(path: Path, limits: CheckLimits) -> tuple[list[tuple[str, str]], float | None]:
    """[(kind, detail)] for one clip, and its duration when it could be read."""
    import soundfile as sf

    if not path.is_file():
        return [("missing_file", f"{path} not found")], None
    try:
        info = sf.info(str(path))
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        return [("unreadable", f"{path}: {e}")], None
    found: list[tuple[str, str]] = []
    seconds = data.shape[0] / sr if sr else 0.0
    if sr != limits.sample_rate:
        found.append(("sample_rate", f"{sr} Hz, expected {limits.sample_rate} Hz"))
    if info.channels != 1:
        found.append(("channels", f"{info.channels} channels, expected mono"))
    if data.shape[0] == 0:
        return found + [("empty", "no samples")], 0.0
    if not np.isfinite(data).all():
        return found + [("not_finite", f"{int((~np.isfinite(data)).sum())} NaN or infinite samples")], seconds
    if seconds > limits.max_seconds:
        found.append(("too_long", f"{seconds:.2f} s > {limits.max_seconds} s"))
    if seconds < limits.min_seconds:
        found.append(("too_short", f"{seconds:.2f} s < {limits.min_seconds} s"))
    rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
    level = 20 * np.log10(rms) if rms > 0 else -np.inf
    if level < limits.silence_dbfs:
        found.append(("silence", f"RMS {level:.1f} dBFS < {limits.silence_dbfs} dBFS"))
    return found, seconds


def _row_schema(row: object) -> list[str]:
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    out = [f"field {k!r} missing or empty" for k in ("id", "audio_path", "question")
           if not isinstance(row.get(k), str) or not row[k].strip()]
    choices = row.get("choices")
    if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
        out.append("field 'choices' must be a list of strings or null")
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        out.append("field 'answer' must be text, a number or null")
    return out


def check_manifest(path: str | Path, limits: CheckLimits = CheckLimits(), workers: int = 0) -> dict:
    """Check every row and clip; returns the report (``ok`` is False when any problem was found)."""
    path = Path(path)
    problems: list[Finding] = []
    warnings: list[Finding] = []
    if not path.is_file():
        problems.append(Finding(0, None, "missing_manifest", f"{path} not found"))
        return _report(path, limits, 0, problems, warnings, [])
    rows: list[tuple[int, dict]] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8-sig", errors="replace") as fh:  # a BOM is accepted, as by every reader
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(Finding(lineno, None, "json", f"not valid JSON ({e.msg})"))
                continue
            bad = _row_schema(row)
            rid = row.get("id") if isinstance(row, dict) and isinstance(row.get("id"), str) else None
            if bad:
                problems += [Finding(lineno, rid, "schema", b) for b in bad]
                continue
            if rid in seen:
                problems.append(Finding(lineno, rid, "duplicate_id", f"id {rid!r} first on line {seen[rid]}"))
                continue
            seen[rid] = lineno
            rows.append((lineno, row))

    def audio_of(item: tuple[int, dict]):
        p = Path(item[1]["audio_path"])
        return _check_audio(p if p.is_absolute() else path.parent / p, limits)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(audio_of, rows))
    durations: list[float] = []
    for (lineno, row), (found, seconds) in zip(rows, results):
        problems += [Finding(lineno, row["id"], kind, detail) for kind, detail in found]
        if seconds is None:
            continue
        durations.append(seconds)
        stated = row.get("duration")
        if isinstance(stated, (int, float)) and abs(stated - seconds) > 0.05:
            warnings.append(Finding(lineno, row["id"], "duration_mismatch",
                                    f"duration field {stated} s, file {seconds:.3f} s"))
    if not problems:
        from cordlite.data import ManifestError, read_manifest  # the trainer's own reader

        try:
            read_manifest(path)
        except ManifestError as e:
            problems.append(Finding(0, None, "reader", str(e)))
    return _report(path, limits, len(rows), problems, warnings, durations)


def _report(path: Path, limits: CheckLimits, n_rows: int, problems: list[Finding],
            warnings: list[Finding], durations: list[float]) -> dict:
    problems = sorted(problems, key=lambda p: p.line)
    warnings = sorted(warnings, key=lambda w: w.line)
    return {
        "manifest": str(path),
        "ok": not problems,
        "rows": n_rows,
        "counts": dict(Counter(p.kind for p in problems).most_common()),
        "problems": [asdict(p) for p in problems],
        "warnings": [asdict(w) for w in warnings],
        "duration_seconds": duration_stats(durations),
        "limits": asdict(limits),
    }
