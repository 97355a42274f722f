"""Voice a text QA data set into a spoken manifest: parallel, resumable, with rejects and a summary.

    cordlite data tts --input data/gsm8k.jsonl --out data/gsm8k_spoken --workers 2

Output folder:
    manifest.jsonl   one row per voiced question: id, audio_path (relative), question (text view),
                     answer, choices, duration, voice, source, source_line, spoken (what was read)
    audio/<id>.wav   16 kHz mono PCM16, loudness-normalised
    rejects.jsonl    one row per record not voiced: line, id, kind, reason
    job.json         the settings; a rerun with different ones is refused, not mixed in
    summary.json, summary.md, durations.png

Resuming: a rerun skips every id in the manifest (whose audio file reads) and every line in
the rejects file. Audio is written to a temp file and renamed, and a manifest row is appended
in one write() only after its audio is complete, so a kill at any moment leaves complete
files; a row whose audio was written but not yet recorded is simply voiced again. A completed
run rewrites the manifest and rejects sorted by source line and removes unreferenced audio.
Ctrl-C and SIGTERM finish the rows in flight, record them, and exit with code 130.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cordlite.audio import SAMPLE_RATE, write_audio_atomic
from cordlite.lock import writer_lock
from data_tools.job.config import JobConfig
from data_tools.job.outdir import (
    AUDIO_DIR,
    MANIFEST,
    REJECTS,
    JobError,
    LineLog,
    audio_name,
    check_job_file,
    finalise,
    load_state,
)
from data_tools.job.report import write_summary
from data_tools.sources import QARow, Reject, read_records, spoken_choices, to_row
from data_tools.text.speakable import speakable
from data_tools.tts.backends import make_backend
from data_tools.tts.base import Backend, VoiceChoice, VoicePlan

SILENCE_DBFS = -60.0
__all__ = ["build", "BuildResult", "JobError", "plan_tasks", "resolve_workers"]


@dataclass(frozen=True)
class Task:
    row: QARow
    spoken: str
    voice: VoiceChoice
    audio_path: str  # relative to the output folder


@dataclass
class BuildResult:
    out_dir: Path
    manifest: Path
    rows: int = 0
    """Rows in the manifest now (earlier runs included)."""
    rejected: int = 0
    """Rows in the rejects file now."""
    new_rows: int = 0
    new_rejects: int = 0
    skipped: int = 0
    """Records already done (or rejected) by an earlier run."""
    seconds: float = 0.0
    interrupted: bool = False
    summary: dict = field(default_factory=dict)


def source_name(cfg: JobConfig) -> str:
    """The `source` label of the rows: source.name, else the input's name up to its first dot."""
    return cfg.source.name or Path(cfg.source.path).name.split(".")[0]


def resolve_workers(cfg: JobConfig, backend: Backend) -> int:
    """cfg.workers, or for 0 the backend's threads per core times the cores."""
    return cfg.workers or backend.threads_per_core * (os.cpu_count() or 1)


# --------------------------------------------------------------------------- plan


def plan_tasks(cfg: JobConfig, plan: VoicePlan, done: dict[str, dict], rejected: dict[int, dict],
               ) -> tuple[list[Task], list[Reject], int]:
    """Read the source: (tasks to voice, new rejects, records skipped as already finished)."""
    name = source_name(cfg)
    ext = cfg.output.audio_format
    tasks: list[Task] = []
    new_rejects: list[Reject] = []
    skipped = 0
    first_line: dict[str, int] = {}
    file_owner: dict[str, str] = {r.get("audio_path", "").lower(): rid for rid, r in done.items()}
    records = read_records(cfg.source.path, cfg.source.format, cfg.source.split)
    for n, (line, record, error) in enumerate(records, start=1):
        if cfg.source.limit and n > cfg.source.limit:
            break
        if line in rejected:
            skipped += 1
            continue
        if record is None:
            new_rejects.append(Reject(line, error or "unreadable record"))
            continue
        row = to_row(record, line, cfg.source.fields, name)
        if isinstance(row, Reject):
            new_rejects.append(row)
            continue
        if row.id in first_line:
            new_rejects.append(Reject(line, f"duplicate id {row.id!r} (first on line {first_line[row.id]})",
                                      row.id, kind="duplicate_id"))
            continue
        first_line[row.id] = line
        if row.id in done:
            skipped += 1
            continue
        text = spoken_choices(row.stem, row.choices) if row.choices else row.stem
        spoken = speakable(text) if cfg.text.verbalize else " ".join(text.split())
        if not any(c.isalnum() for c in spoken):
            new_rejects.append(Reject(line, f"nothing to speak in {row.stem[:60]!r}", row.id, kind="empty_text"))
            continue
        if len(spoken) > cfg.text.max_chars:
            new_rejects.append(Reject(line, f"spoken text has {len(spoken)} characters, more than "
                                            f"text.max_chars={cfg.text.max_chars}", row.id, kind="text_too_long"))
            continue
        rel = f"{AUDIO_DIR}/{audio_name(row.id, ext)}"
        if file_owner.setdefault(rel.lower(), row.id) != row.id:
            # Two ids that differ only in case would share a file on macOS/Windows.
            rel = f"{AUDIO_DIR}/{audio_name(row.id + '#', ext)}"
            file_owner[rel.lower()] = row.id
        tasks.append(Task(row, spoken, plan.pick(row.id), rel))
    return tasks, new_rejects, skipped


# --------------------------------------------------------------------------- one row


@dataclass(frozen=True)
class _Outcome:
    """One voiced row (a manifest row) or one reject, never both."""

    row: dict | None = None
    reject: Reject | None = None


def _voice_one(task: Task, backend: Backend, cfg: JobConfig, out: Path, source: str) -> _Outcome:
    row = task.row
    try:
        audio = backend.synthesize(task.spoken, task.voice)
    except Exception as e:  # one row's failure must not stop the job; it becomes a reject
        return _Outcome(reject=Reject(row.line, f"synthesis failed: {type(e).__name__}: {e}", row.id,
                                      kind="synthesis_error"))
    if not np.all(np.isfinite(audio)):
        return _Outcome(reject=Reject(row.line, "synthesis produced NaN or infinite samples", row.id,
                                      kind="synthesis_error"))
    seconds = len(audio) / SAMPLE_RATE
    limits = cfg.audio
    if seconds > limits.max_seconds:
        return _Outcome(reject=Reject(row.line, f"audio is {seconds:.1f} s, longer than audio.max_seconds="
                                                f"{limits.max_seconds}", row.id, kind="audio_too_long"))
    if seconds < limits.min_seconds:
        return _Outcome(reject=Reject(row.line, f"audio is {seconds:.2f} s, shorter than audio.min_seconds="
                                                f"{limits.min_seconds}", row.id, kind="audio_too_short"))
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms <= 10 ** (SILENCE_DBFS / 20):
        return _Outcome(reject=Reject(row.line, f"audio is silent (RMS below {SILENCE_DBFS:.0f} dBFS)",
                                      row.id, kind="silent_audio"))
    write_audio_atomic(out / task.audio_path, audio, SAMPLE_RATE)
    return _Outcome(row={
        "id": row.id,
        "audio_path": task.audio_path,
        "question": row.question,
        "answer": row.answer,
        "choices": row.choices,
        "duration": round(seconds, 3),
        "voice": task.voice.label,
        "source": source,
        "source_line": row.line,
        "spoken": task.spoken,
    })


def _reject_row(r: Reject) -> dict:
    return {"line": r.line, "id": r.id, "kind": r.kind, "reason": r.reason}


# --------------------------------------------------------------------------- the job


def build(cfg: JobConfig, progress: bool = True, log: Callable[[str], None] | None = None,
          backend: Backend | None = None) -> BuildResult:
    """Run (or resume) the job `cfg` describes; returns counts. See the module docstring."""
    with writer_lock(cfg.output.dir, "cordlite data tts", fix="pass another --out"):
        log = log or (lambda _msg: None)
        started = time.perf_counter()
        out = Path(cfg.output.dir)
        (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
        check_job_file(out, cfg)
        done, rejected = load_state(out, cfg, log)
        backend = backend or make_backend(cfg.tts)
        plan = VoicePlan.for_backend(backend, cfg.tts, cfg.seed)
        source = source_name(cfg)
        tasks, parse_rejects, skipped = plan_tasks(cfg, plan, done, rejected)
        if done or rejected:
            log(f"resume: {len(done)} row(s) done and {len(rejected)} rejected earlier; {len(tasks)} to voice")

        result = BuildResult(out, out / MANIFEST, skipped=skipped)
        manifest_log, rejects_log = LineLog(out / MANIFEST), LineLog(out / REJECTS)
        for r in parse_rejects:
            rejects_log.append(_reject_row(r))
        result.new_rejects = len(parse_rejects)

        workers = resolve_workers(cfg, backend)
        stop = threading.Event()
        bar = _progress(len(tasks), progress)

        def record(fut: Future) -> None:
            outcome = fut.result()  # raises only for errors of the job itself, e.g. a full disk
            if outcome.row is not None:
                manifest_log.append(outcome.row)
                result.new_rows += 1
            elif outcome.reject is not None and not stop.is_set():
                # After an interrupt a failure is likely our own signal (espeak-ng gets Ctrl-C too):
                # not recorded, so the next run tries the row again.
                rejects_log.append(_reject_row(outcome.reject))
                result.new_rejects += 1
            bar.update(1)
            bar.set_postfix(rejected=result.new_rejects, refresh=False)

        previous_term = _raise_on_sigterm()
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tts") as pool:
                pending: dict[Future, Task] = {}  # in flight, in submission order
                queue = iter(tasks)
                try:
                    while True:
                        # A bounded window: an interrupt then waits for a few rows, not thousands.
                        while len(pending) < 2 * workers:
                            task = next(queue, None)
                            if task is None:
                                break
                            pending[pool.submit(_voice_one, task, backend, cfg, out, source)] = task
                        if not pending:
                            break
                        finished, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            del pending[fut]
                            record(fut)
                except KeyboardInterrupt:
                    result.interrupted = True
                    stop.set()
                    log("interrupted: finishing the rows in flight ...")
                    for fut in pending:
                        fut.cancel()
                    for fut in list(pending):
                        if not fut.cancelled():
                            wait([fut])
                            record(fut)
        finally:
            _restore_sigterm(previous_term)
            bar.close()
            manifest_log.close()
            rejects_log.close()

        if not result.interrupted:
            finalise(out)
        result.seconds = time.perf_counter() - started
        result.summary = write_summary(out, cfg, backend, new_rows=result.new_rows, new_rejects=result.new_rejects,
                                       skipped=result.skipped, seconds=result.seconds, workers=workers,
                                       interrupted=result.interrupted)
        result.rows = result.summary["rows"]
        result.rejected = result.summary["rejected"]
        return result


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="tts", unit="row", disable=not enabled, dynamic_ncols=True)


def _raise_on_sigterm():
    # SIGTERM (a scheduler stopping the job) gets the same clean stop as Ctrl-C.
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
