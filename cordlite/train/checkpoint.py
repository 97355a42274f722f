"""Resumable checkpoints that hold no pickle: the adapter, optimizer, scheduler, RNG and step.

Layout: RUN/checkpoints/step_000010/
    adapter/                 the LoRA weights, peft format (adapter_model.safetensors)
    optimizer.safetensors    every tensor of the optimizer's state (AdamW: step, exp_avg, exp_avg_sq)
    rng.safetensors          torch's (and CUDA's) generator states, numpy's key array
    trainer_state.json       step, scheduler, optimizer param groups and scalars, python/numpy RNG
    state.json               the step, the run's identity (cordlite.train.identity) and the sha256
                             of every other file; written last: its presence marks a complete
                             checkpoint

Every file is checked against its digest before a resume uses it: a checkpoint whose bytes were
flipped, cut short or emptied after it was written is named and passed over for the previous
intact one. Parameters or optimizer state that are not finite are never saved.

Nothing here is unpickled: JSON and safetensors only, so a checkpoint copied from someone else
cannot run code on `--resume`. A checkpoint holding a pickle file (the `trainer_state.pt` of
cordlite before this format, or any planted `.pt`, `.pth`, `.bin`, `.pkl`, `.pickle`) is refused
with a message, never opened.

Each checkpoint is written into a hidden `.step_N.tmp-PID` directory and renamed into place, and an
old one is renamed to `.step_N.del-PID` before it is deleted, so a kill leaves either the whole
checkpoint or none of it. `clean_checkpoints` removes what killed processes left behind; a step
folder without its state.json was not written by cordlite (it never leaves one) and is only reported.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from cordlite.files import io_error_of, remove_dead_temps, replace_dir, sha256_file, write_text_atomic
from cordlite.models.adapter import AdapterError, load_adapter_weights

FORMAT = 2
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
MARKER = "state.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (incomplete, another format, or holding a pickle)."""


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def _step_of(path: Path) -> int:
    return int(path.name.split("_")[1])


def _is_step_dir(path: Path) -> bool:
    return path.is_dir() and path.name.startswith("step_") and path.name[5:].isdigit()


def complete_checkpoints(root: Path) -> list[Path]:
    """The step folders holding their completion marker, highest step first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _is_step_dir(p) and (p / MARKER).is_file()), key=_step_of,
                  reverse=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    done = complete_checkpoints(root)
    return done[0] if done else None


def unmarked_steps(root: Path) -> list[Path]:
    """Step folders without state.json: not written by cordlite (its checkpoints appear whole, by a
    rename), so never used and never deleted."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _is_step_dir(p) and not (p / MARKER).is_file())


def clean_checkpoints(root: Path) -> list[Path]:
    """Remove what killed processes left in `root`: their temporary and half-deleted directories
    (`.step_N.tmp-PID`, `.step_N.old-PID`, `.step_N.del-PID` of processes that no longer exist).
    Returns what was removed."""
    removed = []
    for tag in ("tmp", "old", "del"):
        removed += remove_dead_temps(root, f".step_*.{tag}-*")
    return removed


# --- integrity ------------------------------------------------------------------------------------


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (the marker excluded)."""
    return {str(f.relative_to(folder)): sha256_file(f) for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != MARKER}


def damaged_files(path: Path) -> list[str]:
    """The files of checkpoint `path` that are missing or differ from the digests its marker records,
    each with what is wrong; [] for an intact checkpoint (or one from before digests were recorded)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"{MARKER} unreadable ({type(e).__name__})"]
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict):
        return [] if isinstance(marker, dict) else [f"{MARKER} is not a JSON object"]
    bad = []
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            bad.append(f"{name} is missing")
        elif sha256_file(f) != digest:
            bad.append(f"{name} does not match the digest recorded when it was written ({f.stat().st_size} bytes)")
    return bad


def intact_checkpoint(root: Path, note=None) -> Path | None:
    """The newest complete checkpoint whose files match their digests. Each newer one passed over is
    told to `note` (a callable taking one line); CheckpointError when checkpoints exist but none is
    intact, naming the damaged file of the newest."""
    found = complete_checkpoints(root)
    first_problem = None
    for path in found:
        bad = damaged_files(path)
        if not bad:
            if first_problem is not None and note is not None:
                note(f"{first_problem}; resuming from {path.name}, the previous intact checkpoint")
            return path
        problem = f"{path}/{bad[0]}" + (f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else "")
        first_problem = first_problem or problem
        if note is not None and first_problem != problem:
            note(f"{problem}: passed over too")
    if first_problem is not None:
        raise CheckpointError(f"{first_problem}, and no earlier intact checkpoint is kept: the run cannot resume; "
                              "start it again (--overwrite) or in a new output.dir")
    return None


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


# --- RNG --------------------------------------------------------------------------------------


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """The generators' states as (JSON-able dict, tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    np_meta = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((np_meta["kind"], keys, np_meta["pos"], np_meta["has_gauss"], np_meta["cached_gaussian"]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# --- optimizer ----------------------------------------------------------------------------------


def _split_optimizer(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """An optimizer state_dict as (JSON-able dict, flat tensors named state.<param>.<name>)."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def _join_optimizer(meta: dict, tensors: dict[str, torch.Tensor], like: dict) -> dict:
    """Back to a state_dict; tuples come back as tuples where the live optimizer holds tuples."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for saved, live in zip(meta["param_groups"], like["param_groups"]):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) and isinstance(v, list) else v
                       for k, v in saved.items()})
    return {"state": state, "param_groups": groups}


# --- save and load ---------------------------------------------------------------------------------


class NonFiniteError(CheckpointError):
    """The parameters or optimizer state after a step hold NaN or infinity: never saved."""

    def __init__(self, step: int, names: list[str]):
        self.step, self.names = step, names
        super().__init__(f"step {step} left {len(names)} tensor(s) of the adapter or its optimizer state non-finite "
                         f"(e.g. {names[0]}); they are not saved")


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, meta: dict, keep_last: int,
                    scaler=None) -> Path:
    final = checkpoint_dir(root, step)
    opt_meta, opt_tensors = _split_optimizer(optimizer.state_dict())
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    bad = non_finite(params) + non_finite(opt_tensors)
    if bad:
        raise NonFiniteError(step, bad)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write_files(tmp, model, opt_meta, opt_tensors, scheduler, scaler, step, final)
        (tmp / MARKER).write_text(json.dumps({"step": step, **meta, "files": file_digests(tmp)}, indent=2, default=str))
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk gets its space back
        err = io_error_of(e, final)
        if err is not None:
            raise err from None
        raise
    replace_dir(tmp, final)
    older = sorted((p for p in root.iterdir() if _is_step_dir(p) and p != final and (p / MARKER).is_file()),
                   key=_step_of)
    for p in older[: max(0, len(older) - (keep_last - 1))]:
        gone = root / f".{p.name}.del-{os.getpid()}"
        os.replace(p, gone)  # one rename: the checkpoint is whole or not there
        shutil.rmtree(gone, ignore_errors=True)
    return final


def _write_files(tmp: Path, model, opt_meta: dict, opt_tensors: dict, scheduler, scaler, step: int, final: Path) -> None:
    from safetensors.torch import save_file

    model.save_pretrained(tmp / "adapter", safe_serialization=True)
    rng_meta, rng_tensors = rng_state()
    save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
    save_file(rng_tensors, str(tmp / RNG_FILE))
    try:
        text = json.dumps({"format": FORMAT, "step": step, "scheduler": scheduler.state_dict(),
                           "optimizer": opt_meta, "rng": rng_meta,
                           "scaler": scaler.state_dict() if scaler is not None else None}, indent=1)
    except TypeError as e:  # a scheduler or optimizer holding something JSON cannot say
        raise CheckpointError(f"{final}: the training state is not plain data ({e}); "
                              "cordlite checkpoints hold JSON and tensors only") from None
    write_text_atomic(tmp / STATE_FILE, text)


def _refuse_pickles(path: Path) -> None:
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix.lower() in PICKLE_SUFFIXES:
            old = f.name == "trainer_state.pt"
            why = ("it is a checkpoint of an older cordlite, which kept its training state as a pickle"
                   if old else "pickle files can run code when loaded")
            raise CheckpointError(
                f"{path}: holds {f.relative_to(path)}; cordlite never loads pickle files from a checkpoint "
                f"({why}). Start the run again in a new output.dir, or remove {path} to resume from an "
                "earlier checkpoint")


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler=None) -> int:
    """Restore adapter weights, optimizer, scheduler, RNG and (fp16 runs) the loss scaler; return the
    number of steps done.
    Reads JSON and safetensors only; refuses a checkpoint that holds a pickle file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _refuse_pickles(path)
    missing = [n for n in (STATE_FILE, OPTIMIZER_FILE, RNG_FILE, "adapter/adapter_model.safetensors")
               if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {', '.join(missing)}); remove it to resume "
                              "from an earlier one, or start the run again")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        opt_tensors = load_file(str(path / OPTIMIZER_FILE))
        rng_tensors = load_file(str(path / RNG_FILE))
    except (ValueError, UnicodeDecodeError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint ({type(e).__name__}: {e}); remove it to resume from "
                              "an earlier one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}/{STATE_FILE}: format {state.get('format') if isinstance(state, dict) else '?'}"
                              f", expected {FORMAT}; start the run again in a new output.dir")
    step = state.get("step")
    if type(step) is not int or step != _step_of(path):
        raise CheckpointError(f"{path}/{STATE_FILE}: step {step!r} is not the folder's step {_step_of(path)}; the "
                              f"file was edited or comes from another checkpoint: remove {path} to resume from an "
                              "earlier one")
    try:
        load_adapter_weights(model, path / "adapter")
    except (AdapterError, SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}/adapter: {e}; remove {path} to resume from an earlier checkpoint") from None
    try:
        optimizer.load_state_dict(_join_optimizer(state["optimizer"], opt_tensors, optimizer.state_dict()))
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], rng_tensors)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the training state does not fit this run ({type(e).__name__}: {e}); "
                              "was the recipe changed since? Start again in a new output.dir") from None
    return step
