"""What `cordlite eval`, `diagnose` and `judge-check` share: the model under evaluation (base or
merged checkpoint, optionally with a LoRA adapter) and resumable output files.

Outputs are JSONL appended batch by batch with fsync (cordlite.files.append_jsonl); `run.json` records the settings, and a
rerun continues only when the settings that shape the results are the same (else --overwrite).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cordlite.files import write_text_atomic


class EvalError(RuntimeError):
    """A problem with the inputs or the output directory; the message says what to do."""


DEFAULT_MAX_NEW_TOKENS = 200  # the paper's limit, when nothing records the trained one


def resolve_prompt(s):
    """Eval or diagnose settings (a dataclass with model, adapter, recipe, instruction, system_prompt,
    max_new_tokens) with the prompt and answer length the model was trained with filled in where the
    user gave none, and where each came from ({"instruction": source, "max_new_tokens": source}).
    Precedence: the option, then the adapter's training recipe, then --recipe, then the prompt cordlite
    merge recorded with a merged checkpoint; else no instruction and DEFAULT_MAX_NEW_TOKENS."""
    from cordlite.models.adapter import (AdapterError, exported_prompt, locate_adapter, trained_prompt,
                                         training_recipe)

    found, adapter = None, s.adapter
    if s.adapter:
        try:
            adapter_dir, run_dir = locate_adapter(s.adapter)
        except AdapterError as e:
            raise EvalError(f"--adapter {e}") from None
        adapter = str(adapter_dir)
        found = trained_prompt(training_recipe(adapter_dir, run_dir), f"the adapter's training recipe ({adapter_dir})")
    model = s.model
    if getattr(s, "recipe", None):
        from cordlite.recipe import load_recipe, recipe_to_dict
        from cordlite.schema import ConfigError

        try:
            recipe = load_recipe(s.recipe, (), check_paths=False)
        except ConfigError as e:
            raise EvalError(f"--recipe {e}") from None
        model = model or ("" if s.adapter else recipe.model.name_or_path)
        found = found or trained_prompt(recipe_to_dict(recipe), f"--recipe {s.recipe}")
    if found is None and model:
        found = exported_prompt(model)
        if found is not None:
            found = dataclasses.replace(found, source=f"the merged model's {Path(found.source).name}")
    origin = {}
    instruction, system_prompt, max_new_tokens = s.instruction, s.system_prompt, s.max_new_tokens
    if instruction is None:
        instruction = found.instruction if found else ""
        origin["instruction"] = found.source if found else "none recorded"
    else:
        origin["instruction"] = "--instruction"
    if system_prompt is None and found is not None:
        system_prompt = found.system_prompt
    if max_new_tokens is None:
        known = found is not None and found.max_new_tokens is not None
        max_new_tokens = found.max_new_tokens if known else DEFAULT_MAX_NEW_TOKENS
        origin["max_new_tokens"] = found.source if known else f"the default ({DEFAULT_MAX_NEW_TOKENS})"
    else:
        origin["max_new_tokens"] = "--max-new-tokens"
    return dataclasses.replace(s, model=model, adapter=adapter, instruction=instruction, system_prompt=system_prompt,
                               max_new_tokens=max_new_tokens), origin


def resolve_model(model: str, adapter: str | None) -> str:
    """--model, or the base model cordlite recorded next to --adapter; an adapter that is damaged or was
    trained on another base is refused here, before anything is written."""
    if adapter:
        from cordlite.models.adapter import AdapterError, check_adapter_base, check_adapter_files

        try:
            check_adapter_files(adapter)
        except AdapterError as e:
            raise EvalError(f"--adapter {e}") from None
        if model:
            check_adapter_base(adapter, model)
    if model:
        return model
    if adapter:
        from cordlite.models.adapter import recorded_base_models

        try:
            recorded = recorded_base_models(adapter)
        except RuntimeError as e:  # unreadable metadata
            raise EvalError(f"--adapter {e}") from None
        if recorded:
            return recorded[0]
        raise EvalError(f"--adapter {adapter}: no base model recorded with it; pass --model BASE")
    raise EvalError("--model: required (a checkpoint directory or hub id of a supported family, docs/models.md, or a merged model)")


def load_eval_model(model: str, adapter: str | None, quantization: str, device: str):
    """(model, processor, runtime): the base (or merged) model, with the adapter on when given."""
    from cordlite.config import ModelConfig, QuantizationConfig, TrainConfig
    from cordlite.models.load import load_base
    from cordlite.models.runtime import resolve_runtime

    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise EvalError(f"--adapter {adapter}: no adapter_config.json there; pass RUN/adapter or "
                        "RUN/checkpoints/step_N/adapter")
    if device == "cpu" and quantization == "int8":
        raise EvalError("--quantization int8 needs CUDA in bitsandbytes; use nf4 or none on CPU")
    mc, qc = ModelConfig(name_or_path=model, device=device), QuantizationConfig(mode=quantization)
    try:
        rt = resolve_runtime(mc, qc, TrainConfig())
        net, processor = load_base(mc, qc, rt)
    except RuntimeError as e:  # ModelLoadError included: name the option, not the recipe field
        raise EvalError(str(e).replace("model.name_or_path", "--model").replace("model.device", "--device")) from None
    if adapter:
        from cordlite.models.adapter import load_adapter

        try:
            net = load_adapter(net, adapter)  # refuses an adapter trained on another base
        except (ValueError, RuntimeError, KeyError, OSError) as e:
            raise EvalError(f"--adapter {adapter}: does not fit the model {model!r} ({e}); pass the --model it was "
                            "trained on") from None
    net.eval()
    return net, processor, rt


def check_run_file(out: Path, settings: dict, keys: tuple[str, ...], data_file: str, overwrite: bool) -> None:
    """Resume only a run made with the same settings; --overwrite starts afresh."""
    run_file = out / "run.json"
    if overwrite:
        for name in (data_file, "run.json"):
            (out / name).unlink(missing_ok=True)
    elif run_file.is_file() and (out / data_file).is_file():
        old = json.loads(run_file.read_text(encoding="utf-8"))
        diff = [k for k in keys if old.get(k) != settings.get(k)]
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
            raise EvalError(f"{out} holds a run with other settings ({shown}); pass --overwrite to start "
                            "again there, or choose another --out")
    write_text_atomic(run_file, json.dumps(settings, indent=2) + "\n")
