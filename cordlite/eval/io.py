"""What `cordlite eval`, `diagnose` and `judge-check` share: the model under evaluation (base or
merged checkpoint, optionally with a LoRA adapter) and resumable output files.

Outputs are JSONL appended batch by batch with fsync (cordlite.files.append_jsonl); `run.json` records the settings, and a
rerun continues only when the settings that shape the results are the same (else --overwrite).
"""

from __future__ import annotations

import json
from pathlib import Path

from cordlite.files import write_text_atomic


class EvalError(RuntimeError):
    """A problem with the inputs or the output directory; the message says what to do."""


def resolve_model(model: str, adapter: str | None) -> str:
    """--model, or the base model cordlite recorded next to --adapter."""
    if model:
        return model
    if adapter:
        from cordlite.models.adapter import ADAPTER_META

        meta_path = Path(adapter) / ADAPTER_META
        if meta_path.is_file():
            try:
                base = json.loads(meta_path.read_text(encoding="utf-8")).get("base_model")
            except (OSError, ValueError, AttributeError):
                base = None
            if isinstance(base, str) and base:
                return base
        raise EvalError(f"--adapter {adapter}: no base model recorded in {ADAPTER_META}; pass --model BASE")
    raise EvalError("--model: required (a Qwen2-Audio checkpoint directory or hub id, or a merged model)")


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
