"""Frame stores of a pretrained-encoder testbed: the frozen Whisper encoder's frames of every clip
of a split, computed once and shared by every run that reads the split.

    frames = split_frames("cache/testbed", "test", model, processor)   # a FrameCache
    frames.prompt(model, ids, audio)                                    # merged audio-view embeddings

The encoder is the most expensive part of the testbed's model (8M of its 8.2M parameters), and it
never trains: the build's evaluation, the hearing probe, each ablation run's evaluations and each
CORD step would otherwise run it again on the same clips. OUT/frames/<split>.safetensors holds the
frames with the encoder's digest and the split manifest's digest; a store that does not match
both is made again, never used (cordlite.models.audio_view.FrameCache.load). The train split's
store keeps float16 frames (as the alignment always used them, half the disk); the others float32,
the numbers the model's own forward gives.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from cordlite.files import sha256_file
from cordlite.models.audio_view import FrameCache, FrameStoreError, encoder_digest

SPLITS = ("train", "cord", "val", "test")
STORE_DTYPE = {"train": torch.float16}  # others: float32


def store_path(testbed_dir: str | Path, split: str) -> Path:
    return Path(testbed_dir) / "frames" / f"{split}.safetensors"


def split_frames(testbed_dir: str | Path, split: str, model, processor, progress: bool = True,
                 encoder: str | None = None) -> FrameCache:
    """The frame store of `split`, loaded, or made now (every clip, shortest first) and saved.
    `encoder`: the model's encoder_digest when the caller has it already."""
    from cordlite.data import read_manifest

    manifest = Path(testbed_dir) / "data" / f"{split}.jsonl"
    path = store_path(testbed_dir, split)
    encoder = encoder or encoder_digest(model)
    clips = sha256_file(manifest)  # the clips' ids, paths and texts
    dtype = STORE_DTYPE.get(split, torch.float32)
    if path.is_file():
        try:
            return FrameCache.load(path, encoder, clips, dtype)
        except FrameStoreError as e:
            if progress:
                print(f"  [frames] {e}: making it again", file=sys.stderr, flush=True)
    examples = read_manifest(manifest)
    store = FrameCache(dtype)
    t0 = time.perf_counter()
    fill_frames(store, model, processor, examples, progress=progress, label=f"frames {split}")
    store.save(path, encoder, clips)
    if progress:
        print(f"  [frames] {split}: {len(examples)} clips in {time.perf_counter() - t0:.0f} s -> {path}",
              file=sys.stderr, flush=True)
    return store


@torch.no_grad()
def fill_frames(store: FrameCache, model, processor, examples, batch_size: int = 16, progress: bool = True,
                label: str = "frames") -> None:
    """Add to `store` the frames of the clips it does not hold: the encoder on batches of clips,
    shortest first, so that each batch pads little (the encoder runs on the longest clip's part
    of the window, cordlite.models.audio_view.encode_audio)."""
    from cordlite.data import AudioCache, encode_views

    todo = sorted((ex for ex in {ex.id: ex for ex in examples}.values() if ex.id not in store.frames),
                  key=lambda ex: float(ex.meta.get("seconds") or 0.0))
    cache, t0 = AudioCache(), time.perf_counter()
    for s in range(0, len(todo), batch_size):
        chunk = todo[s : s + batch_size]
        store.frames_of(model, [ex.id for ex in chunk], encode_views(processor, chunk, cache, "").audio)
        done = min(s + batch_size, len(todo))
        if progress and (done % 500 < batch_size or done == len(todo)):
            print(f"  [{label}] encoder frames of {done}/{len(todo)} clips, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    cache._cache.clear()


def pretrained_build(testbed_dir: str | Path) -> bool:
    """Whether the build at `testbed_dir` has a pretrained (frozen) encoder, from its model's testbed.json."""
    import json

    meta = Path(testbed_dir) / "model" / "testbed.json"
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("encoder", "scratch") != "scratch"
    except (OSError, ValueError):
        return False


def eval_frames(testbed_dir: str | Path, split: str, model, processor, progress: bool = True) -> FrameCache:
    """The frames an evaluation of `split` reuses: the split's frame store on a pretrained build (its
    encoder never trains), else an empty FrameCache (the scratch build's encoder is its own)."""
    if pretrained_build(testbed_dir):
        return split_frames(testbed_dir, split, model, processor, progress)
    return FrameCache()
