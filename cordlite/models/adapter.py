"""Saved LoRA adapters: write them atomically with cordlite's metadata, read them back, find
them from a run directory, tell what they were trained with, and refuse an adapter recorded for
another base model.

    save_adapter(model, "RUN/adapter", {"base_model": ...})
    model = load_adapter(base, "RUN/adapter")          # PeftModel; AdapterBaseMismatch on another base
    adapter_dir, run_dir = locate_adapter("RUN")       # a run, a checkpoint's adapter or an adapter dir
    prompt = trained_prompt(training_recipe(adapter_dir, run_dir), "RUN/adapter")  # instruction, max_new_tokens
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cordlite.files import io_error_of, replace_dir, sha256_file

ADAPTER_META = "cordlite_adapter.json"
EXPORT_META = "cordlite_export.json"  # written by cordlite merge next to a merged checkpoint


class AdapterError(RuntimeError):
    """No adapter where one was named; the message says what to pass instead."""


def save_adapter(model, out_dir: str | Path, meta: dict) -> Path:
    """Save the adapter in peft format plus cordlite metadata (with the sha256 of each file),
    atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        base = meta.get("base_model")
        if isinstance(base, str) and Path(base).expanduser().exists():
            # A relative path means nothing once the cwd changes: keep the absolute one for load_adapter's check.
            meta = {**meta, "base_model_resolved": str(Path(base).expanduser().resolve())}
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / ADAPTER_META).write_text(json.dumps({**meta, "files": files}, indent=2, default=str))
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = io_error_of(e, out_dir)
        if err is not None:
            raise err from None
        raise
    replace_dir(tmp, out_dir)
    return out_dir


def _recorded_digests(adapter_dir: Path) -> dict[str, str]:
    """The sha256 per file cordlite recorded for an adapter: its cordlite_adapter.json (a final
    adapter), else its checkpoint's state.json; {} when none was recorded."""
    for meta_path, prefix in ((adapter_dir / ADAPTER_META, ""), (adapter_dir.parent / "state.json", "adapter/")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        files = meta.get("files") if isinstance(meta, dict) else None
        if isinstance(files, dict):
            return {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix) and isinstance(v, str)}
    return {}


def check_adapter_files(adapter_dir: str | Path) -> None:
    """An adapter directory fit to load, or AdapterError naming the file and the fix: a readable
    adapter_config.json (a JSON object of a LoRA adapter), weights whose safetensors header reads and
    that hold LoRA tensors, and every file matching the digest cordlite recorded when it was saved."""
    from safetensors import SafetensorError, safe_open

    adapter_dir = Path(adapter_dir)
    seen = _stamp(adapter_dir)
    if seen in _CHECKED:  # eval and resume check before they load, and loading checks again: read once
        return
    fix = "re-save it, or pass the run's adapter/ or an intact checkpoints/step_N/adapter"
    config_path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{config_path}: not found; pass a run directory's adapter/ or a "
                           "checkpoints/step_N/adapter directory") from None
    except (OSError, ValueError) as e:
        raise AdapterError(f"{config_path}: not a readable JSON file ({type(e).__name__}); {fix}") from None
    if not isinstance(config, dict) or not config.get("target_modules") and not config.get("modules_to_save"):
        raise AdapterError(f"{config_path}: not a peft LoRA adapter config (no target_modules); {fix}")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        found = [p.name for p in adapter_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        why = f" (it holds {found[0]}: cordlite reads safetensors only)" if found else ""
        raise AdapterError(f"{weights}: adapter weights not found{why}; {fix}")
    for name, digest in _recorded_digests(adapter_dir).items():
        f = adapter_dir / name
        if not f.is_file() or sha256_file(f) != digest:
            raise AdapterError(f"{f}: {'missing' if not f.is_file() else 'does not match the digest recorded when it was saved'}"
                               f" (damaged or replaced since); {fix}")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            names = list(fh.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{weights}: not a readable safetensors file ({str(e)[:120]}); {fix}") from None
    if not names:
        raise AdapterError(f"{weights}: holds no tensors; {fix}")
    _CHECKED.add(seen)


# Adapters this process has checked, each by its files' (name, size, modification time) and those of
# the metadata recording their digests: a file changed since is checked again.
_CHECKED: set[tuple] = set()


def _stamp(adapter_dir: Path) -> tuple:
    files = [*(sorted(adapter_dir.iterdir()) if adapter_dir.is_dir() else []), adapter_dir.parent / "state.json"]
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return (str(adapter_dir.resolve()), tuple(stats))


def _short(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def load_adapter_weights(model, adapter_dir: str | Path) -> None:
    """Load saved LoRA weights into the attached adapter (resume); the base is untouched."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_adapter_files(adapter_dir)
    path = Path(adapter_dir) / "adapter_model.safetensors"
    try:
        result = set_peft_model_state_dict(model, load_file(str(path)))
    except (RuntimeError, ValueError, KeyError) as e:  # a tensor of another shape, a cut-short file
        raise AdapterError(f"{path}: does not fit this model ({_short(e)})") from None
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterError(f"{path}: adapter does not fit this model (unexpected keys such as {unexpected[:3]})")


class AdapterBaseMismatch(RuntimeError):
    """An adapter was trained on another base model than the one it is being loaded onto."""


def adapter_metadata(adapter_dir: str | Path) -> dict:
    """What cordlite recorded with an adapter: cordlite_adapter.json (final adapter), else the
    state.json of the checkpoint it sits in; {} for a foreign peft adapter."""
    adapter_dir = Path(adapter_dir)
    for path in (adapter_dir / ADAPTER_META, adapter_dir.parent / "state.json"):
        if path.is_file():
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise RuntimeError(f"{path}: unreadable adapter metadata ({e}); re-save the adapter") from None
            if isinstance(meta, dict) and meta.get("base_model"):
                return meta
    return {}


def recorded_base_models(adapter_dir: str | Path) -> list[str]:
    """The base model ids an adapter records: cordlite's metadata first, then peft's adapter_config.json."""
    adapter_dir = Path(adapter_dir)
    meta = adapter_metadata(adapter_dir)
    ids = [meta[k] for k in ("base_model", "base_model_resolved") if isinstance(meta.get(k), str)]
    config = adapter_dir / "adapter_config.json"
    if config.is_file():
        try:
            peft_base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            peft_base = None
        if isinstance(peft_base, str) and peft_base and not ids:
            ids.append(peft_base)
    return ids


def normalise_model_id(name: str) -> str:
    """A local checkpoint as its absolute resolved path (symlinks, `..` and `~` removed); a hub id as is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name.rstrip("/")


def check_adapter_base(adapter_dir: str | Path, base_id: str) -> None:
    """Raise AdapterBaseMismatch when the adapter records a base other than `base_id`."""
    recorded = recorded_base_models(adapter_dir)
    if not recorded:
        return  # a foreign adapter without any record: nothing to compare against
    if normalise_model_id(base_id) in {normalise_model_id(r) for r in recorded}:
        return
    raise AdapterBaseMismatch(
        f"adapter {adapter_dir} was trained on base model {recorded[0]!r}, not on {base_id!r}: LoRA deltas only "
        f"make sense on the weights they were trained on. Load the base {recorded[0]!r}; if {base_id!r} is the "
        "same checkpoint in another place, pass --allow-base-mismatch (allow_base_mismatch=True)")


def load_adapter(model, adapter_dir: str | Path, allow_base_mismatch: bool = False, is_trainable: bool = False):
    """Wrap `model` with a saved peft adapter, refusing one recorded for another base (see check_adapter_base)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    check_adapter_files(adapter_dir)
    if not allow_base_mismatch:
        check_adapter_base(adapter_dir, model.name_or_path)
    from cordlite.models.lora import peft_wrapping

    try:
        with peft_wrapping():
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:  # modules the base lacks, other shapes
        raise AdapterError(f"{adapter_dir}: does not fit the base {model.name_or_path} ({_short(e)}); apply it to "
                           "the base it was trained on") from None


def locate_adapter(path: str | Path) -> tuple[Path, Path | None]:
    """(adapter directory, run directory or None) for a run directory, a checkpoint's adapter or a
    bare adapter directory. AdapterError names the path and what to pass when none is there."""
    p = Path(path).expanduser()
    if (p / "adapter_config.json").is_file():
        adapter_dir = p
    elif (p / "adapter" / "adapter_config.json").is_file():
        adapter_dir = p / "adapter"
    elif not p.exists():
        raise AdapterError(f"{p}: not found; pass a run directory (holding adapter/) or an adapter directory")
    else:
        steps = sorted((p / "checkpoints").glob("step_*/adapter/adapter_config.json"))
        hint = (f"; the run has no final adapter yet: finish it with `cordlite train ... --resume`, or pass a "
                f"checkpoint such as {steps[-1].parent}") if steps else ""
        raise AdapterError(f"{p}: neither a run directory with adapter/ nor an adapter directory "
                           f"(no adapter_config.json){hint}")
    adapter_dir = adapter_dir.resolve()
    # RUN/adapter, or RUN/checkpoints/step_N/adapter: the run is where config.yaml is.
    for cand in (adapter_dir.parent, adapter_dir.parents[2] if len(adapter_dir.parents) > 2 else None):
        if cand is not None and (cand / "config.yaml").is_file():
            return adapter_dir, cand
    return adapter_dir, None


def training_recipe(adapter_dir: str | Path, run_dir: str | Path | None = None) -> dict | None:
    """The resolved recipe an adapter was trained with: its metadata's, else its run's config.yaml."""
    import yaml

    recipe = adapter_metadata(adapter_dir).get("recipe")
    if recipe is None and run_dir is not None:
        try:
            recipe = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            recipe = None
    return recipe if isinstance(recipe, dict) else None


@dataclass(frozen=True)
class TrainedPrompt:
    """How a model was prompted and decoded in training, as cordlite recorded it."""

    instruction: str
    system_prompt: str | None
    max_new_tokens: int | None  # the rollouts' limit (rollout.max_new_tokens)
    source: str  # the file or recipe it was read from


def trained_prompt(recipe: dict | None, source: str) -> TrainedPrompt | None:
    """The prompt and rollout length of a resolved recipe (a dict as in config.yaml), or None."""
    if not isinstance(recipe, dict):
        return None
    data = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    rollout = recipe.get("rollout") if isinstance(recipe.get("rollout"), dict) else {}
    limit = rollout.get("max_new_tokens")
    return TrainedPrompt(data.get("instruction") or "", data.get("system_prompt"),
                         limit if isinstance(limit, int) and limit > 0 else None, source)


def exported_prompt(model_path: str | Path) -> TrainedPrompt | None:
    """The training prompt cordlite merge recorded next to a merged checkpoint (EXPORT_META), or None."""
    meta_path = Path(model_path) / EXPORT_META
    if not meta_path.is_file():
        return None
    try:
        export = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(export, dict):
        return None
    found = trained_prompt(export.get("recipe"), str(meta_path))
    prompt = export.get("prompt") if isinstance(export.get("prompt"), dict) else None
    if found is None and prompt is not None:  # an export without its recipe: the prompt alone
        found = TrainedPrompt(prompt.get("instruction") or "", prompt.get("system_prompt"), None, str(meta_path))
    return found
