"""The voiced presets: NuminaMath problems (CORD's training prompts) and GSM8K test, through our TTS.

numina: a seeded walk over the whole split picks problems that speak well (data_tools.text.speaks_well:
no figures, tables or walls of LaTeX, and an estimated clip under the 30 s limit) until N plus a
few spares are found; the TTS job voices the first N, and if synthesis rejects some (a clip that
came out longer than estimated, a failed synthesis) it goes on with the spares until N rows exist
or the spares run out. gsm8k: every test question (or a seeded --n), answer = the number after
"####". Both write OUT/prepared.jsonl (what is voiced), OUT/filtered.jsonl (what was left out and
why) and run data_tools.job.build on it (resumable, rejects in OUT/rejects.jsonl).

TTS: `--backend auto` takes Kokoro-82M, the paper's TTS, when the kokoro package is installed and
its weights folder is given (--tts-model) or sits in models/kokoro-82m; else espeak-ng.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from data_tools.presets.splits import PresetError, SplitData

DEFAULT_KOKORO_DIR = "models/kokoro-82m"
_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")


def choose_backend(backend: str, tts_model: str) -> tuple[str, str, str]:
    """(backend, model folder, why) for --backend auto|espeak|kokoro|transformers."""
    if backend != "auto":
        return backend, tts_model, f"TTS: {backend} (as asked)"
    model = tts_model or (DEFAULT_KOKORO_DIR if Path(DEFAULT_KOKORO_DIR).is_dir() else "")
    has_kokoro = importlib.util.find_spec("kokoro") is not None
    if has_kokoro and model:
        return "kokoro", model, f"TTS: Kokoro-82M from {model} (the paper's TTS)"
    return "espeak", "", ("TTS: espeak-ng, because Kokoro needs the kokoro package "
                          f"({'installed' if has_kokoro else 'not installed: pip install kokoro'}) and its weights "
                          f"folder ({model or f'none: pass --tts-model DIR or put it in {DEFAULT_KOKORO_DIR}'})")


def gsm8k_answer(solution: object) -> str | None:
    """The final number of a GSM8K solution ("... #### 1,234" -> "1234")."""
    if not isinstance(solution, str):
        return None
    m = _GSM8K_FINAL.search(solution.strip())
    return m.group(1).replace(",", "").strip() if m else None


def _prepare_numina(p, splits: list[SplitData], used: str, n: int, seed: int, max_seconds: float,
                    progress: bool) -> tuple[list[dict], list[dict]]:
    """Seeded walk over all problems; the first n + spares that speak well, and what was left out."""
    import random

    from tqdm import tqdm

    from data_tools.presets.catalog import origin
    from data_tools.text.speakable import speakable
    from data_tools.text.speaks_well import SpeakFilter, estimate_seconds, reject_reason

    f = SpeakFilter(max_seconds=max_seconds)
    flat = [(k, i) for k, s in enumerate(splits) for i in range(s.size)]
    order = list(range(len(flat)))
    random.Random(seed).shuffle(order)
    want = n + max(10, n // 20)  # spares for rows the TTS job rejects after synthesis
    kept, left = [], []
    bar = tqdm(total=want, desc="select", unit="problem", disable=not progress, dynamic_ncols=True)
    for j in order:
        k, i = flat[j]
        split = splits[k]
        rec = split.get(i)
        problem = rec.get("problem")
        if not isinstance(problem, str) or not problem.strip():
            why, spoken = f"no problem text ({rec.get('_error') or type(problem).__name__})", ""
        else:
            why = reject_reason(problem, f)  # the cheap checks first; speakable() only when they pass
        if why:
            left.append({"split": split.name, "row": i, "reason": why})
            continue
        spoken = speakable(problem)
        row_id = f"{p.subset}-{split.name}-{i:06d}" if len(splits) > 1 else f"{p.subset}-{i:06d}"
        kept.append({"id": row_id, "question": problem.strip(), "numina_source": rec.get("source"),
                     "estimated_seconds": round(estimate_seconds(spoken, f), 1),
                     "origin": origin(p, used, split.name, i)})
        bar.update(1)
        if len(kept) >= want:
            break
    bar.close()
    return kept, left


def _prepare_gsm8k(p, splits: list[SplitData], used: str, n: int | None, seed: int) -> tuple[list[dict], list[dict]]:
    from data_tools.presets.catalog import origin, select

    kept, left = [], []
    for k, i in select(splits, n, seed):
        split = splits[k]
        rec = split.get(i)
        answer = gsm8k_answer(rec.get("answer"))
        question = rec.get("question")
        if not isinstance(question, str) or not question.strip() or answer is None:
            left.append({"split": split.name, "row": i,
                         "reason": rec.get("_error") or "no question text, or no '#### N' line in the answer"})
            continue
        row_id = f"{p.subset}-{split.name}-{i:04d}" if len(splits) > 1 else f"{p.subset}-{i:04d}"
        kept.append({"id": row_id, "question": question.strip(), "answer": answer, "extraction": p.extraction,
                     "origin": origin(p, used, split.name, i)})
    return kept, left


def run_voiced(p, s, splits: list[SplitData], used: str, n: int | None, out: Path,
               log: Callable[[str], None]) -> dict:
    from cordlite.files import write_jsonl_atomic
    from data_tools.job.build import build
    from data_tools.job.config import job_from_dict
    from data_tools.presets.folder import claim_folder
    from data_tools.text.speaks_well import reason_kind

    backend, tts_model, why = choose_backend(s.backend, s.tts_model)
    log(why)
    fingerprint = {"preset": p.name, "dataset": used, "splits": [x.name for x in splits], "n": n, "seed": s.seed,
                   "max_seconds": s.max_seconds, "audio_format": s.audio_format, "backend": backend,
                   "tts_model": tts_model}
    claim_folder(out, fingerprint)
    if p.name == "numina":
        kept, left = _prepare_numina(p, splits, used, n, s.seed, s.max_seconds, s.progress)
        limit = min(n, len(kept))
    else:
        kept, left = _prepare_gsm8k(p, splits, used, n, s.seed)
        limit = len(kept)
    if not kept:
        raise PresetError(f"{p.name}: no usable record in {used} ({len(left)} left out; see {out / 'filtered.jsonl'})")
    write_jsonl_atomic(out / "prepared.jsonl", kept)
    write_jsonl_atomic(out / "filtered.jsonl", left)
    target = n if p.name == "numina" else len(kept)

    def job(limit: int):
        return job_from_dict({
            "source": {"path": str(out / "prepared.jsonl"), "name": p.subset, "limit": limit,
                       "fields": {"question": "question", "answer": "answer" if p.extraction else None,
                                  "choices": [], "id": "id"}},
            "tts": {"backend": backend, "model": tts_model},
            "audio": {"max_seconds": s.max_seconds},
            "output": {"dir": str(out), "audio_format": s.audio_format}, "seed": s.seed, "workers": s.workers,
        }, source=f"preset {p.name}")

    while True:
        result = build(job(limit), progress=s.progress, log=log)
        if result.interrupted or result.rows >= target or limit >= len(kept):
            break
        log(f"{p.name}: {target - result.rows} row(s) short after synthesis; voicing spares")
        limit = min(len(kept), limit + target - result.rows)

    # Every row records where it came from and how it is scored; the estimate is checked against the clip.
    by_id = {r["id"]: r for r in kept}
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    ratios = []
    for r in rows:
        extra = {k: v for k, v in by_id.get(r["id"], {}).items() if k not in ("id", "question", "answer")}
        r.update(extra)
        if r.get("estimated_seconds"):
            ratios.append(r["duration"] / r["estimated_seconds"])
    write_jsonl_atomic(out / "manifest.jsonl", rows)
    info = {"fingerprint": fingerprint, "rows": len(rows), "rejected": result.rejected, "candidates": len(kept),
            "voiced_from": limit, "left_out": len(left),
            "left_out_by_kind": dict(Counter(reason_kind(x["reason"]) if p.name == "numina" else "malformed"
                                             for x in left).most_common()),
            "tts": {"backend": backend, "model": tts_model or None, "why": why}, "interrupted": result.interrupted,
            "audio_hours": result.summary.get("audio_hours")}
    if ratios:
        info["estimate"] = {"clip_over_estimate_max": round(max(ratios), 3),
                            "clips_longer_than_estimate": sum(x > 1 for x in ratios), "rows": len(ratios)}
    return info
