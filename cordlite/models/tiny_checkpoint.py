"""The tiny checkpoint directory: build a tiny random-init Qwen2-Audio offline, or reuse one.

The result is a directory laid out exactly like a real Hub checkpoint, so code
under test can load it with the same calls it uses for Qwen2-Audio-7B-Instruct::

    Qwen2AudioForConditionalGeneration.from_pretrained(path)
    AutoProcessor.from_pretrained(path)   # -> Qwen2AudioProcessor

Nothing is downloaded: the tokenizer, processor and chat template come from
cordlite.models.tiny_processor (a byte-level BPE trained on a small built-in corpus),
and the weights are cordlite.models.tiny's, drawn from ``torch.manual_seed``. A build takes a
few seconds on CPU.

Run it directly to build (or reuse) a checkpoint::

    python -m cordlite.models.tiny_checkpoint OUT_DIR [--overwrite]

From code, prefer ``ensure_tiny_qwen2audio(out_dir)``: it reuses a complete
build with the same spec and rebuilds otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cordlite.files import ordinary_modes
from cordlite.models.tiny import TinySpec, build_model
from cordlite.models.tiny_processor import build_processor, corpus_digest, default_corpus, special_ids, train_tokenizer

__all__ = ["MARKER_FILE", "TinySpec", "build_tiny_qwen2audio", "ensure_tiny_qwen2audio", "read_marker"]

# Written last, and only inside a finished build: its presence is what makes a
# directory count as a complete tiny checkpoint.
MARKER_FILE = "cordlite_tiny.json"
_MARKER_FORMAT = 1


# --------------------------------------------------------------------------- directories


def read_marker(out_dir: str | Path) -> dict | None:
    """Return the build marker of ``out_dir`` as a dict, or None if it has no readable marker."""
    marker = Path(out_dir) / MARKER_FILE
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_matches(marker: dict | None, spec: TinySpec, corpus_digest: str) -> bool:
    return (
        marker is not None
        and marker.get("format") == _MARKER_FORMAT
        and marker.get("spec") == dataclasses.asdict(spec)
        and marker.get("corpus_sha256") == corpus_digest
    )


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise FileExistsError(
            f"{out_dir} exists and is not a directory; remove it or choose another output path"
        )
    if _is_empty_dir(out_dir):
        return
    if read_marker(out_dir) is None:
        raise FileExistsError(
            f"{out_dir} is a non-empty directory without {MARKER_FILE}, so it is not a tiny checkpoint "
            f"built here; refusing to replace it. Choose an empty or new output path, or delete it yourself"
        )
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a tiny checkpoint; pass overwrite=True to rebuild it, or call "
            f"ensure_tiny_qwen2audio() to reuse it"
        )


def _install(tmp_dir: Path, out_dir: Path) -> None:
    """Move a finished build into place so out_dir is never seen half-written."""
    if _is_empty_dir(out_dir):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(tmp_dir, out_dir)
        return
    # Swap: park the old checkpoint beside it, move the new one in, then delete
    # the old one; on failure put the old one back so nothing is lost.
    old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old_dir.rmdir()
    os.replace(out_dir, old_dir)
    try:
        os.replace(tmp_dir, out_dir)
    except BaseException:
        os.replace(old_dir, out_dir)
        raise
    shutil.rmtree(old_dir, ignore_errors=True)


def build_tiny_qwen2audio(
    out_dir: str | Path,
    spec: TinySpec = TinySpec(),
    corpus: Iterable[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a tiny Qwen2-Audio checkpoint, processor and generation config into ``out_dir``.

    ``corpus`` replaces the built-in tokenizer training text. The build happens
    in a sibling temporary directory that is renamed into place only once
    complete, with ``cordlite_tiny.json`` written last. Raises FileExistsError
    if ``out_dir`` holds anything but an empty directory or (with
    ``overwrite=True``) a previous tiny build. Returns the resolved path.
    """
    spec.validate()
    out_dir = Path(out_dir).expanduser().resolve()
    _check_replaceable(out_dir, overwrite)
    lines = default_corpus() if corpus is None else [str(line) for line in corpus]
    if not any(line.strip() for line in lines):
        raise ValueError("corpus is empty; pass some text lines or None for the built-in corpus")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tokenizer = train_tokenizer(spec.vocab_size, lines)
        processor = build_processor(tokenizer, num_mel_bins=spec.num_mel_bins, chunk_length_s=spec.chunk_length_s,
                                    max_source_positions=spec.max_source_positions)
        model = build_model(spec, tokenizer)
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
        marker = {
            "format": _MARKER_FORMAT,
            "spec": dataclasses.asdict(spec),
            "corpus_sha256": corpus_digest(lines),
            "vocab_size": len(tokenizer),
            "special_token_ids": special_ids(tokenizer),
        }
        (tmp_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        ordinary_modes(tmp_dir)  # mkdtemp makes 0700 and safetensors 0600: the checkpoint is an ordinary folder
        _install(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def ensure_tiny_qwen2audio(out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Return ``out_dir`` holding a tiny checkpoint for ``spec`` with the built-in corpus, building it if needed.

    A directory counts as complete only if its marker records the same spec and
    corpus; a tiny build with a different spec is rebuilt in place, and a
    non-empty directory without a marker is refused (FileExistsError).
    """
    out_dir = Path(out_dir).expanduser().resolve()
    digest = corpus_digest(default_corpus())
    marker = read_marker(out_dir)
    if _marker_matches(marker, spec, digest):
        return out_dir
    try:
        return build_tiny_qwen2audio(out_dir, spec, overwrite=marker is not None)
    except OSError:
        # A concurrent builder may have installed the same checkpoint first.
        if _marker_matches(read_marker(out_dir), spec, digest):
            return out_dir
        raise


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random-init Qwen2-Audio checkpoint offline.")
    parser.add_argument("out_dir", type=Path, help="directory to create (must be new, empty, or a tiny build)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if a tiny build is already there")
    parser.add_argument("--seed", type=int, default=TinySpec.seed, help="weight initialisation seed")
    args = parser.parse_args(argv)
    spec = TinySpec(seed=args.seed)
    if args.overwrite:
        path = build_tiny_qwen2audio(args.out_dir, spec, overwrite=True)
    else:
        path = ensure_tiny_qwen2audio(args.out_dir, spec)
    print(json.dumps({"path": str(path), **(read_marker(path) or {})}, indent=2))


if __name__ == "__main__":
    _main()
