"""A preset's output folder: claimed with its settings (a rerun resumes, other settings are
refused), and its preset.json written atomically (JSONL through cordlite.files)."""

from __future__ import annotations

import json
from pathlib import Path

from cordlite.files import write_text_atomic
from data_tools.presets.splits import PresetError


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def claim_folder(out: Path, fingerprint: dict) -> None:
    """Refuse a folder made by another preset or with other settings; record ours."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "preset.json"
    if path.is_file():
        try:
            have = json.loads(path.read_text(encoding="utf-8")).get("settings")
        except (json.JSONDecodeError, AttributeError):
            have = None
        if have is not None and have != fingerprint:
            diffs = [f"{k}: {have.get(k)!r} -> {fingerprint.get(k)!r}" for k in sorted(set(have) | set(fingerprint))
                     if have.get(k) != fingerprint.get(k)]
            raise PresetError(f"{out} was made with other settings ({'; '.join(diffs)}); rerun with the same ones to "
                              "resume, or choose another --out")
        return
    write_json_atomic(path, {"settings": fingerprint, "status": "running"})
