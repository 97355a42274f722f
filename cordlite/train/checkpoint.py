"""Resumable checkpoints: the adapter (peft format) plus optimizer, scheduler, RNG and step.

Layout: RUN/checkpoints/step_000010/{adapter/, trainer_state.pt, state.json}. Each checkpoint is
written into a hidden temp directory and renamed into place, so a kill mid-save leaves the
previous checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from cordlite.files import replace_dir
from cordlite.models.adapter import load_adapter_weights

STATE_FILE = "trainer_state.pt"


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, meta: dict, keep_last: int) -> Path:
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), "step": step}, tmp / STATE_FILE)
    (tmp / "state.json").write_text(json.dumps({"step": step, **meta}, indent=2, default=str))
    replace_dir(tmp, final)
    older = sorted((p for p in root.glob("step_*") if p != final), key=lambda p: int(p.name.split("_")[1]))
    for p in older[: max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler) -> int:
    """Restore adapter weights, optimizer, scheduler and RNG; return the number of steps done."""
    load_adapter_weights(model, path / "adapter")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])
