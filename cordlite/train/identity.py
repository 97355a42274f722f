"""What a run is, so that `cordlite train --resume` continues that run and no other.

A run's identity is every recipe field that changes what is trained, plus the digest of the base
model's weights and of the training manifest. It is written into every checkpoint; `--resume`
compares it with the recipe it is given and refuses any difference, listing them all. Only the
fields in SAFE may change on resume: each says why it cannot change what a step computes. Paths are
not part of the identity, their contents are: a base or a manifest moved elsewhere resumes, another
one with the same name does not.

Digests of local files are cached by (path, size, modification time) in
~/.cache/cordlite/file_digests.json (CORDLITE_CACHE moves it), so a 15 GB base is read once per
machine, not once per start. A hub model is named by the commit its cached snapshot points to.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cordlite.config import Recipe
from cordlite.files import sha256_file, write_text_atomic
from cordlite.recipe import recipe_to_dict
from cordlite.schema import flatten

# Fields that may differ on resume, with the reason.
SAFE = {
    "train.max_steps": "how long the run goes; a decaying schedule is recomputed for the new end",
    "output.dir": "where the run is (it is the folder being resumed)",
    "output.save_every": "how often checkpoints are written",
    "output.keep_last": "how many checkpoints are kept",
    "output.progress": "the progress bar",
    "output.report_to": "where the metrics are also sent",
    "train.micro_batch_size": "memory only: a step's gradient is the sum over its micro-batches",
    "train.gradient_checkpointing": "memory only: the same gradients, recomputed",
    "rollout.kv_budget_gb": "memory only: every row draws from its own key however generate calls are split",
    "data.audio_cache_mb": "memory only",
    "loss.kl_chunk_size": "memory only: the same sums in other chunks",
    "model.attn_implementation": "speed and memory only: the same attention by another kernel",
    "judge.batch_size": "speed only",
    "model.name_or_path": "a path: the base's weights are compared by digest",
    "model.create_tiny_if_missing": "builds the tiny model when it is missing; the weights are compared by digest",
    "data.train_manifest": "a path: the manifest is compared by digest",
    "data.create_tiny_if_missing": "voices the tiny set when it is missing; the manifest is compared by digest",
    "data.frames": "a path: the frame store checks its own digests against the encoder and the manifest",
    "judge.cache": "a path of the judge's verdict cache",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model")


def _cache_file() -> Path:
    root = os.environ.get("CORDLITE_CACHE") or Path.home() / ".cache" / "cordlite"
    return Path(root) / "file_digests.json"


def file_digest(path: Path) -> str:
    """sha256 of a file, from the cache when its size and modification time are unchanged. A hub
    blob is named by its own sha256 (LFS) or git hash: the name is the digest."""
    real = path.resolve()
    if real.parent.name == "blobs" and len(real.name) in (40, 64) and all(c in "0123456789abcdef" for c in real.name):
        return real.name
    st = real.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(str(real)) if isinstance(cache, dict) else None
    if isinstance(hit, list) and hit[:2] == stamp:
        return hit[2]
    digest = sha256_file(real)
    try:
        cache = cache if isinstance(cache, dict) else {}
        cache[str(real)] = [*stamp, digest]
        write_text_atomic(cache_path, json.dumps(cache))
    except OSError:
        pass  # a read-only home: the digest is computed again next time
    return digest


def _hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit a hub model's cached snapshot points to, or None when it is not cached here."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text(encoding="utf-8").strip()
    if revision and len(revision) == 40:
        return revision
    return None


def base_digest(name_or_path: str, revision: str | None = None) -> str | None:
    """The identity of a base model's weights: sha256 over its config.json and weight files (a local
    folder), or the hub commit of its cached snapshot; None for a hub model not cached yet."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        files = sorted(f for f in local.iterdir()
                       if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.name == "config.json"))
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}:{file_digest(f)}\n".encode())
        return "sha256:" + h.hexdigest()
    commit = _hub_commit(name_or_path, revision)
    return f"hub:{name_or_path}@{commit}" if commit else None


def run_identity(recipe: Recipe) -> dict:
    """The fields and digests that make the run what it is (see the module docstring)."""
    fields = {k: v for k, v in flatten(recipe_to_dict(recipe)).items() if k not in SAFE}
    manifest = Path(recipe.data.train_manifest)
    return {"recipe": fields, "base": base_digest(recipe.model.name_or_path, recipe.model.revision),
            "manifest": "sha256:" + sha256_file(manifest) if manifest.is_file() else None}


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(recorded: dict, current: dict) -> list[str]:
    """Each way `current` differs from `recorded`, as "field: old -> new"."""
    out = []
    old, new = recorded.get("recipe") or {}, current.get("recipe") or {}
    for key in sorted(set(old) | set(new)):
        if key in SAFE:
            continue
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a != b:
            out.append(f"{key}: {_short(a)} -> {_short(b)}")
    for what, name in (("base", "the base model's weights"), ("manifest", "the training manifest's contents")):
        a, b = recorded.get(what), current.get(what)
        if a and b and a != b:
            out.append(f"{name}: {a[:19]}... -> {b[:19]}...")
    return out


def safe_changes(recorded: dict, recipe: Recipe) -> list[str]:
    """The SAFE fields the recipe changes against the checkpoint's recorded recipe, as "field: old -> new"."""
    old = flatten(recorded) if isinstance(recorded, dict) else {}
    new = flatten(recipe_to_dict(recipe))
    return [f"{k}: {_short(old[k])} -> {_short(new[k])}" for k in SAFE
            if k in old and k in new and old[k] != new[k] and k not in ("output.dir",)]
