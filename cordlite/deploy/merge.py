"""Merge a trained LoRA adapter into its base model and export one plain transformers checkpoint.

    cordlite merge runs/tiny_cpu --out exports/tiny-merged [--dtype bfloat16|float32] [--quantize nf4]

1. Resolve RUN (its adapter/), RUN/checkpoints/step_N/adapter or any adapter directory, and the
   base model id recorded with it (cordlite_adapter.json, else the checkpoint's state.json, else
   peft's adapter_config.json). An adapter recorded for another base is refused.
2. Reload the base UNQUANTISED in bfloat16 or float32: training ran on an NF4 base, but merging
   into 4-bit weights would round the LoRA delta away, so the delta is added to full weights.
3. Base + adapter (unmerged) answers a few check items greedily: the reference.
4. merge_and_unload, then save safetensors shards, the processor (tokenizer, feature extractor,
   chat template) and the generation config into a hidden temporary directory next to DIR.
5. Reload the saved checkpoint from disk and compare it with the reference (cordlite.deploy.merge_check).
6. Optionally re-quantise to NF4 (bitsandbytes config saved in config.json), for small-memory serving.
7. Write README.md (model card), merge_check.json and cordlite_export.json, then rename the
   temporary directory to DIR. A crash or kill at any point leaves DIR as it was; the hidden
   temporary directory of a killed merge is removed by the next merge into the same DIR.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from cordlite.deploy.loading import AdapterSource, MergeError, resolve_adapter
from cordlite.deploy.merge_check import CheckResult
from cordlite.files import io_error_of, remove_dead_temps
from cordlite.lock import writer_lock

TMP_TAG = ".merge-tmp-"
CHECK_FILE = "merge_check.json"


@dataclass(frozen=True)
class MergeResult:
    out: Path
    check: CheckResult | None
    nf4_check: CheckResult | None


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete hidden temporary directories left next to `out` by merges that were killed."""
    return remove_dead_temps(out.parent, f".{out.name}{TMP_TAG}*")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_dir(out: Path, overwrite: bool, keep: list[Path]) -> None:
    """Refuse a non-empty DIR without --overwrite, and a DIR that holds the adapter or the base."""
    if out.exists() and not out.is_dir():
        raise MergeError(f"--out: {out} exists and is not a directory; choose another path")
    for k in keep:
        if _inside(k.resolve(), out.resolve()):
            raise MergeError(f"--out: {out} contains {k}, which the merge reads; choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MergeError(f"--out: {out} is not empty; pass --overwrite to replace it, or choose a new directory")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("cordlite", "transformers", "peft", "torch"):
        try:
            out[f"{pkg}_version"] = version(pkg)
        except PackageNotFoundError:
            out[f"{pkg}_version"] = "?"
    return out


def eval_summaries(run_dir: Path | None, extra: list[str] | tuple[str, ...] = ()) -> dict[str, dict]:
    """`cordlite eval` summaries for the card: RUN/eval*/summary.json plus the paths given."""
    paths = [Path(p) for p in extra]
    if run_dir is not None:
        paths += sorted([*run_dir.glob("eval*/summary.json"), *run_dir.glob("eval*/*/summary.json")])
    found = {}
    for path in paths:
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            if str(path) in map(str, extra):
                raise MergeError(f"--eval-summary: cannot read {path} ({e}); pass a summary.json written by "
                                 "cordlite eval") from None
            continue
        if isinstance(summary, dict):
            found[str(path)] = summary
    return found


def _free() -> None:
    """Release what the caller just deleted: a 7B model must leave before the next one loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def export_record(src: AdapterSource, base_id: str, dtype: str, quantize: str, family=None) -> dict:
    """cordlite_export.json: where the weights came from, the family (AudioFamily) and class that
    load them, and the prompt they were trained with."""
    data = (src.recipe or {}).get("data", {})
    return {
        "format": 1,
        "base_model": base_id,
        "family": family.name if family is not None else None,
        "model_class": family.model_class if family is not None else None,
        "adapter": str(src.adapter_dir),
        "run_dir": str(src.run_dir) if src.run_dir else None,
        "steps": src.steps,
        "dtype": dtype,
        "quantization": quantize,
        "prompt": {"instruction": data.get("instruction", "") or "", "system_prompt": data.get("system_prompt")},
        "recipe": src.recipe,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **_versions(),
    }


def _write_records(final: Path, name: str, export: dict, check: CheckResult | None, nf4_check: CheckResult | None,
                   evals: dict[str, dict]) -> None:
    from cordlite.models.adapter import EXPORT_META
    from cordlite.deploy.model_card import model_card

    (final / EXPORT_META).write_text(json.dumps(export, indent=2, default=str) + "\n", encoding="utf-8")
    checks = {"merged": check.to_dict() if check else None, "nf4": nf4_check.to_dict() if nf4_check else None}
    (final / CHECK_FILE).write_text(json.dumps(checks, indent=2) + "\n", encoding="utf-8")
    (final / "README.md").write_text(model_card(name, export, checks["merged"], checks["nf4"], evals), encoding="utf-8")


def _stderr(stage: str, message: str) -> None:
    print(f"[merge:{stage}] {message}", file=sys.stderr, flush=True)


def merge(source: str | Path | AdapterSource, out: str | Path, *, dtype: str = "bfloat16", quantize: str = "none",
          overwrite: bool = False, device: str = "auto", base: str | None = None, allow_base_mismatch: bool = False,
          check_items: int = 4, check_manifest: str | None = None, check_tokens: int = 16,
          max_shard_size: str | int = "5GB", allow_check_failure: bool = False,
          eval_summary: list[str] | tuple[str, ...] = (),
          progress: Callable[[str, str], None] = _stderr) -> MergeResult:
    """Merge the adapter of `source` into its base and export to `out` (see the module docstring).

    `progress(stage, message)` is called at each stage: load, reference, merge, saved, check,
    quantize, done.
    """
    with writer_lock(out, "cordlite merge", fix="pass another --out"):
        from cordlite.config import ModelConfig, QuantizationConfig
        from cordlite.deploy.loading import load_model, pick_device
        from cordlite.deploy.merge_check import check_items as make_items
        from cordlite.deploy.merge_check import compare, reference
        from cordlite.files import replace_dir
        from cordlite.models.adapter import check_adapter_base, load_adapter
        from cordlite.models.families import family_of
        from cordlite.models.load import load_base
        from cordlite.models.runtime import DTYPES, Runtime

        if dtype not in ("bfloat16", "float32"):
            raise MergeError(f"--dtype: {dtype!r}; use bfloat16 or float32 (merging into 4-bit weights loses the delta)")
        if quantize not in ("none", "nf4"):
            raise MergeError(f"--quantize: {quantize!r}; use none or nf4")
        src = source if isinstance(source, AdapterSource) else resolve_adapter(source)
        evals = eval_summaries(src.run_dir, eval_summary)  # a bad --eval-summary fails before the work
        base_id = base or src.base_model
        if not base_id:
            raise MergeError(f"{src.adapter_dir}: the adapter records no base model; pass --base MODEL")
        if not allow_base_mismatch:
            check_adapter_base(src.adapter_dir, base_id)  # before minutes of loading
        out = Path(out).expanduser().absolute()
        keep = [src.adapter_dir] + ([Path(base_id)] if Path(base_id).expanduser().exists() else [])
        check_out_dir(out, overwrite, keep)
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temps(out):
            progress("load", f"removed {stale.name}, left by a merge that was killed")

        dev = pick_device(device)
        rt = Runtime(dev, DTYPES[dtype], DTYPES[dtype], autocast=False, gradient_checkpointing=False)
        recipe_model = (src.recipe or {}).get("model", {})
        revision = recipe_model.get("revision") if base_id == src.base_model else None
        tmp = out.with_name(f".{out.name}{TMP_TAG}{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            progress("load", f"base {base_id} ({dtype}, unquantised) on {dev}, adapter {src.adapter_dir}")
            model, processor = load_base(ModelConfig(name_or_path=base_id, revision=revision), QuantizationConfig(mode="none"), rt)
            model = load_adapter(model, src.adapter_dir, allow_base_mismatch=allow_base_mismatch).eval()
            family = family_of(model)
            items = ref = None
            if check_items > 0:
                items = make_items(check_items, src.recipe, check_manifest)
                progress("reference", f"base + adapter answers {len(items.clips)} items ({items.source})")
                ref = reference(model, processor, items, check_tokens)
            progress("merge", "adding the LoRA deltas to the base weights")
            merged = model.merge_and_unload(safe_merge=True)
            full = tmp / "full"
            merged.save_pretrained(full, max_shard_size=max_shard_size)
            # The base's own processor files, untouched (load_base switched padding to the left for training).
            export_processor = family.load_processor(base_id, revision)
            export_processor.save_pretrained(full)
            del merged, model
            _free()
            progress("saved", f"weights and processor written to {full}")

            check = nf4_check = None
            if ref is not None:
                reloaded = family.transformers_class().from_pretrained(full, dtype=DTYPES[dtype]).to(dev).eval()
                check = compare(reloaded, processor, items, ref, dtype, check_tokens)
                del reloaded
                _free()
                progress("check", check.summary())
            final = full
            if quantize == "nf4":
                final = tmp / "nf4"
                progress("quantize", "re-quantising the language model to NF4")
                qmodel, _ = load_model(str(full), device=dev.type, dtype=dtype, quantize="nf4")
                qmodel.save_pretrained(final, max_shard_size=max_shard_size)  # before any forward pass
                del qmodel
                _free()
                export_processor.save_pretrained(final)
                shutil.rmtree(full)
                if ref is not None:
                    qmodel, _ = load_model(str(final), device=dev.type, dtype=dtype)
                    nf4_check = compare(qmodel, processor, items, ref, dtype, check_tokens, checked=False)
                    del qmodel
                    _free()
                    progress("check", "NF4: " + nf4_check.summary())

            _write_records(final, out.name, export_record(src, base_id, dtype, quantize, family), check, nf4_check, evals)
            if check is not None and not check.passed and not allow_check_failure:
                raise MergeError(f"merge check failed: {check.summary()}. Nothing was written to {out}. Merge with "
                                 "--dtype float32 to tell rounding from a real mismatch, or pass --allow-check-failure "
                                 "to export anyway (the card records the failure)")
            check_out_dir(out, overwrite, keep)  # something may have appeared there while we worked
            replace_dir(final, out)
        except Exception as e:  # safetensors hides a full disk in its own error: say it as the OS error it is
            err = io_error_of(e, tmp)
            if err is None or isinstance(e, OSError):
                raise
            raise err from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        progress("done", f"merged checkpoint in {out}")
        return MergeResult(out, check, nf4_check)
