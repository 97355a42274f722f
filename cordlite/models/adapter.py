"""Saved LoRA adapters: write them atomically with cordlite's metadata, read them back, and
refuse an adapter recorded for another base model.

    save_adapter(model, "RUN/adapter", {"base_model": ...})
    model = load_adapter(base, "RUN/adapter")          # PeftModel; AdapterBaseMismatch on another base
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cordlite.files import replace_dir

ADAPTER_META = "cordlite_adapter.json"


def save_adapter(model, out_dir: str | Path, meta: dict) -> Path:
    """Save the adapter in peft format plus cordlite metadata, atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    base = meta.get("base_model")
    if isinstance(base, str) and Path(base).expanduser().exists():
        # A relative path means nothing once the cwd changes: keep the absolute one for load_adapter's check.
        meta = {**meta, "base_model_resolved": str(Path(base).expanduser().resolve())}
    (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2, default=str))
    replace_dir(tmp, out_dir)
    return out_dir


def load_adapter_weights(model, adapter_dir: str | Path) -> None:
    """Load saved LoRA weights into the attached adapter (resume); the base is untouched."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter weights not found; the checkpoint is incomplete")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"{path}: adapter does not fit this model (unexpected keys such as {unexpected[:3]})")


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
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; pass a run directory's adapter/ or a "
                                "checkpoints/step_N/adapter directory")
    if not allow_base_mismatch:
        check_adapter_base(adapter_dir, model.name_or_path)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
