"""The summary of a TTS job: summary.json, summary.md and durations.png in the output folder.

Counts cover the whole folder (earlier runs included); the `run` block covers this run only.
Written by data_tools.job.build at the end of every run, interrupted ones too, from the facts of
the run it passes in (so this module never imports the builder).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from data_tools.job.config import JobConfig
    from data_tools.tts.base import Backend


def duration_stats(durations: list[float]) -> dict:
    if not durations:
        return {"count": 0}
    d = np.asarray(durations, dtype=np.float64)
    return {
        "count": int(d.size),
        "total_hours": round(float(d.sum()) / 3600, 4),
        "min": round(float(d.min()), 3),
        "mean": round(float(d.mean()), 3),
        "median": round(float(np.median(d)), 3),
        "p95": round(float(np.percentile(d, 95)), 3),
        "max": round(float(d.max()), 3),
    }


def write_summary(out: Path, cfg: "JobConfig", backend: "Backend", *, new_rows: int, new_rejects: int, skipped: int,
                  seconds: float, workers: int, interrupted: bool) -> dict:
    """This run's facts (rows and rejects it added, rows it skipped as done, its wall time and
    worker count, whether it was interrupted) plus the folder's counts -> summary files."""
    from cordlite.files import write_text_atomic
    from data_tools.job.outdir import MANIFEST, REJECTS, read_jsonl_rows

    rows, _ = read_jsonl_rows(out / MANIFEST)
    rejects, _ = read_jsonl_rows(out / REJECTS)
    durations = [float(r["duration"]) for r in rows if isinstance(r.get("duration"), (int, float))]
    stats = duration_stats(durations)
    voices = Counter(str(r.get("voice", "?")).split("+")[0] for r in rows)
    kinds = Counter(str(r.get("kind", "?")) for r in rejects)
    summary = {
        "manifest": str(out / MANIFEST),
        "complete": not interrupted,
        "rows": len(rows),
        "rejected": len(rejects),
        "rejects_by_kind": dict(kinds.most_common()),
        "audio_hours": stats.get("total_hours", 0.0),
        "duration_seconds": stats,
        "voices": dict(sorted(voices.items())),
        "backend": backend.description,
        "licence": backend.licence,
        "source": str(Path(cfg.source.path).resolve()),
        "run": {
            "new_rows": new_rows,
            "new_rejects": new_rejects,
            "skipped_as_done": skipped,
            "seconds": round(seconds, 2),
            "rows_per_second": round(new_rows / seconds, 2) if seconds > 0 else None,
            "workers": workers,
            "interrupted": interrupted,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "summary.md", _markdown(summary))
    png = out / "durations.png"
    # Redrawn only when the rows changed: a no-op rerun should not pay for matplotlib.
    if durations and (new_rows or not png.is_file()):
        _histogram(png, durations, cfg.audio.max_seconds, summary)
    return summary


def _markdown(s: dict) -> str:
    d = s["duration_seconds"]
    lines = [
        f"# Spoken set: {Path(s['manifest']).parent.name}",
        "",
        f"{'Complete' if s['complete'] else 'Interrupted (rerun the same command to resume)'}. "
        f"Backend: {s['backend']}. Licence: {s['licence']}.",
        "",
        "| | |",
        "|---|---|",
        f"| rows in manifest | {s['rows']} |",
        f"| rejected | {s['rejected']} |",
        f"| audio | {s['audio_hours']:.3f} h |",
    ]
    if d.get("count"):
        lines += [f"| duration min / median / mean / p95 / max | {d['min']} / {d['median']} / {d['mean']} / "
                  f"{d['p95']} / {d['max']} s |"]
    r = s["run"]
    lines += [
        f"| this run | {r['new_rows']} voiced, {r['new_rejects']} rejected, {r['skipped_as_done']} "
        f"already done, {r['seconds']} s with {r['workers']} worker(s) |",
        "",
    ]
    if s["rejects_by_kind"]:
        lines += ["Rejects by kind (details with line numbers in rejects.jsonl):", ""]
        lines += [f"- {k}: {n}" for k, n in s["rejects_by_kind"].items()] + [""]
    lines += ["Voices: " + ", ".join(f"{k} {n}" for k, n in s["voices"].items()), ""]
    return "\n".join(lines)


def _histogram(path: Path, durations: list[float], max_seconds: float, s: dict) -> None:
    # Figure + the Agg canvas directly: files only, no window, and no pyplot import (about 1 s).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = max(max_seconds, max(durations))
    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(durations, bins=np.arange(0, np.ceil(top) + 1, 1.0), color="#4c72b0", edgecolor="white")
    ax.axvline(max_seconds, color="#c44e52", linestyle="--", label=f"limit {max_seconds:g} s")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("clips")
    hours = s["audio_hours"]
    amount = f"{hours:.2f} h" if hours >= 0.1 else f"{hours * 60:.1f} min"
    ax.set_title(f"{s['rows']} clips, {amount} of audio, {s['rejected']} rejected")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{threading.get_ident()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
