"""The output folder of a TTS job: append-only logs, resume state, the job file, tidy-up.

    out/manifest.jsonl  rows done       out/rejects.jsonl  rows refused (by source line)
    out/audio/          one clip a row  out/job.json       the settings the folder was made with

A row is appended in one write() after its audio file is complete (renamed into place), so
whatever a kill leaves behind, `load_state` sees only rows whose audio reads; cut or
duplicated lines are dropped and their rows voiced again. Used by data_tools.job.build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from cordlite.audio import SAMPLE_RATE
from cordlite.files import write_text_atomic
from data_tools.job.config import JobConfig, fingerprint, job_to_dict

MANIFEST = "manifest.jsonl"
REJECTS = "rejects.jsonl"
JOB = "job.json"
AUDIO_DIR = "audio"


class JobError(RuntimeError):
    """The job cannot run as asked (the output folder holds another job's data)."""


class LineLog:
    """Append-only JSONL where each row goes out in one write(): a kill never splits a row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, obj: dict) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # not seen on local filesystems; fail loudly rather than tear a row
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")

    def close(self) -> None:
        os.close(self._fd)


def read_jsonl_rows(path: Path) -> tuple[list[dict], int]:
    """Parsed objects of a JSONL file, and how many lines were unreadable (e.g. cut by a kill)."""
    rows: list[dict] = []
    bad = 0
    if not path.is_file():
        return rows, bad
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
    return rows, bad


def _audio_ok(path: Path) -> bool:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError, OSError):
        return False
    return info.frames > 0 and info.samplerate == SAMPLE_RATE


def audio_name(row_id: str, ext: str) -> str:
    """A file name for `row_id`: the id itself when it is filesystem-safe, else a cleaned id + hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", row_id).strip("._")[:80]
    if safe != row_id or not safe:
        safe = f"{safe or 'row'}-{hashlib.sha1(row_id.encode()).hexdigest()[:8]}"
    return f"{safe}.{ext}"



def load_state(out: Path, cfg: JobConfig, log: Callable[[str], None]) -> tuple[dict[str, dict], dict[int, dict]]:
    """Rows done and lines rejected by earlier runs; the files are cleaned up when needed."""
    manifest, rejects = out / MANIFEST, out / REJECTS
    rows, bad_rows = read_jsonl_rows(manifest)
    done: dict[str, dict] = {}
    dropped = bad_rows
    for r in rows:
        rid, rel = r.get("id"), r.get("audio_path")
        if not isinstance(rid, str) or not isinstance(rel, str) or rid in done or not _audio_ok(out / rel):
            dropped += 1
            continue
        done[rid] = r
    if dropped:
        log(f"resume: dropped {dropped} manifest line(s) that were cut, duplicated or lack their audio; "
            "those rows are voiced again")
        write_text_atomic(manifest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()))

    rej, bad_rej = read_jsonl_rows(rejects)
    rejected: dict[int, dict] = {}
    for r in rej:
        line = r.get("line")
        if isinstance(line, int) and line not in rejected:
            rejected[line] = r
    if cfg.retry_rejects and rejected:
        log(f"retry_rejects: trying {len(rejected)} earlier reject(s) again")
        rejected = {}
    if cfg.retry_rejects or bad_rej or len(rejected) != len(rej):
        write_text_atomic(rejects, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected.values()))
    # Temp files of a killed run are never referenced; remove only our own naming pattern.
    for stale in (out / AUDIO_DIR).glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    return done, rejected


def check_job_file(out: Path, cfg: JobConfig) -> None:
    job_file = out / JOB
    want = fingerprint(cfg)
    if job_file.is_file():
        try:
            have = json.loads(job_file.read_text())["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError):
            have = None
        if have is not None and have != want:
            diffs = sorted(_diff(have, want))
            raise JobError(
                f"{out} holds a job with other settings ({', '.join(diffs[:6])}"
                f"{' ...' if len(diffs) > 6 else ''}); rerun with the same settings to resume, "
                "or use a new output.dir (or delete this one) to start over"
            )
    write_text_atomic(job_file, json.dumps({"fingerprint": want, "config": job_to_dict(cfg)}, indent=2) + "\n")


def _diff(a: object, b: object, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]



def finalise(out: Path) -> None:
    """Sort manifest and rejects by source line; delete audio no row refers to."""
    rows, _ = read_jsonl_rows(out / MANIFEST)
    rows.sort(key=lambda r: (r.get("source_line") or 0, str(r.get("id"))))
    write_text_atomic(out / MANIFEST, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    rej, _ = read_jsonl_rows(out / REJECTS)
    rej.sort(key=lambda r: r.get("line") or 0)
    write_text_atomic(out / REJECTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rej))
    referenced = {Path(r["audio_path"]).name for r in rows if isinstance(r.get("audio_path"), str)}
    for f in (out / AUDIO_DIR).iterdir():
        if f.is_file() and f.suffix in (".wav", ".flac") and f.name not in referenced:
            f.unlink()
