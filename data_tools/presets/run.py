"""Presets: the CORD paper's training set and benchmarks, one command each.

    cordlite data preset numina --out data/numina --n 80000        # training prompts, voiced (Kokoro or espeak)
    cordlite data preset mmsu --out data/mmsu                      # VoiceBench MMSU, its own audio
    cordlite data preset openbookqa --out data/openbookqa          # VoiceBench OpenBookQA, its own audio
    cordlite data preset gsm8k --out data/gsm8k                    # GSM8K test, voiced
    cordlite data preset mmau --out data/mmau                      # MMAU test-mini, audio-only
    cordlite data combine --out data/eval/manifest.jsonl data/{mmsu,openbookqa,gsm8k,mmau}/manifest.jsonl

Each reads its public hub dataset through datasets.load_dataset, or with `--source` a local copy
with the same columns (a file, a folder of files, a save_to_disk folder) or another hub id. Each
writes OUT/manifest.jsonl, OUT/audio/, OUT/preset.json (hub id, split, licence, citation, counts,
the check of `cordlite data check`), and rows that record their `origin` (hub id, config, split,
row, licence, citation). Eval rows name their benchmark in `source` (the subset of `cordlite
eval`) and their answer rule in `extraction` (cordlite.judge.conventions.convention_score); MMAU rows are
`text_view: false`. Reruns resume; a folder made with other settings is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from cordlite.files import write_jsonl_atomic
from data_tools.job.outdir import LineLog, read_jsonl_rows
from data_tools.presets.catalog import IMPORTED, Preset, PresetSettings, get_preset, origin, select
from data_tools.presets.folder import claim_folder, write_json_atomic
from data_tools.presets.splits import PresetError, SplitData, open_splits


def run_preset(s: PresetSettings, log: Callable[[str], None] = lambda m: None) -> dict:
    """Make (or resume) the preset's folder; returns what preset.json holds."""
    p = get_preset(s.preset)
    started = time.perf_counter()
    wanted = s.splits or p.splits
    unknown = [x for x in wanted if x not in p.splits]
    if unknown and not s.source:
        raise PresetError(f"--split {unknown}: {p.hub_id} {p.config or ''} has {list(p.splits)}")
    if s.n is not None and s.n < 1:
        raise PresetError(f"--n {s.n}: must be >= 1")
    if s.audio_format not in ("wav", "flac"):
        raise PresetError(f"--audio-format {s.audio_format!r}: use wav or flac")
    if not 1.0 <= s.max_seconds <= 30.0:
        raise PresetError(f"--max-seconds {s.max_seconds}: must be within 1..30 (Qwen2-Audio hears at most 30 s)")
    out = Path(s.out)
    splits, used = open_splits(hub_id=p.hub_id, config=p.config, splits=tuple(wanted), columns=p.columns,
                               source=s.source)
    n = s.n if s.n is not None else p.default_n
    if p.kind == "voiced":
        from data_tools.presets.voiced import run_voiced

        info = run_voiced(p, s, splits, used, n, out, log)
    else:
        info = run_imported(p, s, splits, used, n, out, log)
    if info.get("interrupted"):
        write_json_atomic(out / "preset.json", {"settings": info["fingerprint"], "status": "interrupted"})
        return {"status": "interrupted", **info}
    from data_tools.check import CheckLimits, check_manifest

    # Verify after: every clip readable, 16 kHz mono, within the limits, and the trainer's reader agrees.
    check = check_manifest(out / "manifest.jsonl", CheckLimits(max_seconds=s.max_seconds))
    report = {
        "settings": info.pop("fingerprint"), "status": "done", "preset": p.name, "dataset": used,
        "hub_id": p.hub_id, "config": p.config, "splits": [x.name for x in splits], "licence": p.licence,
        "citation": p.citation, "bibtex": p.bibtex, "subset": p.subset, "extraction": p.extraction,
        "text_view": p.text_view, **info, "seconds": round(time.perf_counter() - started, 1),
        "check": {"ok": check["ok"], "rows": check["rows"], "problems": check["counts"],
                  "duration_seconds": check["duration_seconds"]},
    }
    write_json_atomic(out / "preset.json", report)
    return report


# --------------------------------------------------------------------------- imported audio


def run_imported(p: Preset, s: PresetSettings, splits: list[SplitData], used: str, n: int | None, out: Path,
                 log: Callable[[str], None]) -> dict:
    """VoiceBench / MMAU: copy prompt, reference and clip of every selected record."""
    from tqdm import tqdm

    from data_tools.presets.clips import RowError, existing_clip, import_clip, mmau_row, safe_id, voicebench_row

    fingerprint = {"preset": p.name, "dataset": used, "splits": [x.name for x in splits], "n": n, "seed": s.seed,
                   "max_seconds": s.max_seconds, "audio_format": s.audio_format}
    claim_folder(out, fingerprint)
    picks = select(splits, n, s.seed)
    # Clips done by an earlier (maybe interrupted) run: their facts, appended one line per clip.
    done = {r["id"]: r["facts"] for r in read_jsonl_rows(out / IMPORTED)[0] if "id" in r and "facts" in r}
    log_file = LineLog(out / IMPORTED)
    rows, rejects, reused = [], [], 0
    seen: set[str] = set()
    try:
        for k, i in tqdm(picks, desc=p.name, unit="row", disable=not s.progress, dynamic_ncols=True):
            split = splits[k]
            rec = split.get(i)
            try:
                if "_error" in rec:
                    raise RowError(rec["_error"])
                if p.name == "mmau":
                    row = mmau_row(rec, split.name, i, p.subset)
                else:
                    row = voicebench_row(rec, split.name, i, p.subset, many_splits=len(p.splits) > 1)
                if row["id"] in seen:
                    raise RowError(f"duplicate id {row['id']!r}")
                rel = f"audio/{safe_id(row['id'])}.{s.audio_format}"
                if row["id"] in done and existing_clip(out / rel) is not None:
                    facts = done[row["id"]]
                    reused += 1
                else:
                    facts = import_clip(rec.get("audio"), out / rel, s.max_seconds)
                    log_file.append({"id": row["id"], "facts": facts})
            except (RowError, OSError) as e:
                kind = "io_error" if isinstance(e, OSError) else "bad_record"
                rejects.append({"split": split.name, "row": i, "kind": kind, "reason": str(e)})
                continue
            seen.add(row["id"])
            rows.append({**row, "audio_path": rel, **facts, "source": p.subset, "extraction": p.extraction,
                         "origin": origin(p, used, split.name, i)})
    except KeyboardInterrupt:
        log(f"{p.name}: interrupted after {len(rows)} rows; the clips are kept, rerun to continue")
        return {"fingerprint": fingerprint, "interrupted": True, "rows": len(rows)}
    finally:
        log_file.close()
    write_jsonl_atomic(out / "manifest.jsonl", rows)
    write_jsonl_atomic(out / "rejects.jsonl", rejects)
    log(f"{p.name}: {len(rows)} rows ({reused} clips from an earlier run), {len(rejects)} rejected")
    return {"fingerprint": fingerprint, "rows": len(rows), "rejected": len(rejects), "selected": len(picks),
            "clips_from_earlier_runs": reused, "cut_to_max_seconds": sum("clip_seconds" in r for r in rows)}


# --------------------------------------------------------------------------- combine


def combine_manifests(out: str | Path, inputs: list[str | Path]) -> int:
    """One manifest from several (e.g. all benchmarks, for one `cordlite eval` with one subset each):
    audio paths are rewritten relative to `out`; ids must be unique across inputs."""
    import os

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, first = [], {}
    for src in map(Path, inputs):
        if not src.is_file():
            raise PresetError(f"{src}: manifest not found")
        for lineno, line in enumerate(src.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio = Path(row["audio_path"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PresetError(f"{src} line {lineno}: not a manifest row (JSON object with audio_path)") from None
            if row.get("id") in first:
                raise PresetError(f"{src} line {lineno}: id {row.get('id')!r} is also in {first[row['id']]}; "
                                  "ids must be unique across the combined manifests")
            first[row.get("id")] = src
            audio = audio if audio.is_absolute() else (src.parent / audio).resolve()
            row["audio_path"] = os.path.relpath(audio, out.parent.resolve())
            rows.append(row)
    write_jsonl_atomic(out, rows)
    return len(rows)
