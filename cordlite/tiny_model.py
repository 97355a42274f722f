"""Build a tiny, randomly initialised Qwen2-Audio checkpoint and processor offline.

The result is a directory laid out exactly like a real Hub checkpoint, so code
under test can load it with the same calls it uses for Qwen2-Audio-7B-Instruct::

    Qwen2AudioForConditionalGeneration.from_pretrained(path)
    AutoProcessor.from_pretrained(path)   # -> Qwen2AudioProcessor

Nothing is downloaded: the tokenizer, processor and chat template come from
cordlite.tiny_processor (a byte-level BPE trained on a small built-in corpus),
and the model weights are drawn from ``torch.manual_seed``. A build takes a
few seconds on CPU.

Run it directly to build (or reuse) a checkpoint::

    python -m cordlite.tiny_model OUT_DIR [--overwrite]

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
from dataclasses import dataclass
from pathlib import Path

from cordlite.tiny_processor import (HOP_LENGTH, SAMPLING_RATE, SPECIAL_TOKENS, build_processor, corpus_digest,
                                     default_corpus, special_ids, train_tokenizer)

__all__ = ["MARKER_FILE", "TinySpec", "build_tiny_qwen2audio", "ensure_tiny_qwen2audio", "read_marker"]

# Written last, and only inside a finished build: its presence is what makes a
# directory count as a complete tiny checkpoint.
MARKER_FILE = "cordlite_tiny.json"
_MARKER_FORMAT = 1

# bitsandbytes quantizes weights in blocks of 64 values; keeping every LM
# linear dimension a multiple of 64 means 4-bit loading behaves like on the
# real model instead of exercising padding edge cases.
_BNB_BLOCK = 64


@dataclass(frozen=True)
class TinySpec:
    """Shape and seed of a tiny Qwen2-Audio checkpoint."""

    vocab_size: int = 1024
    """BPE vocabulary target, special tokens included (a small corpus may yield fewer)."""
    hidden_size: int = 64
    """Width of the Qwen2 language model."""
    intermediate_size: int = 128
    """Width of the language model's SwiGLU MLP."""
    num_hidden_layers: int = 2
    """Decoder layers in the language model."""
    num_attention_heads: int = 4
    """Query heads in the language model."""
    num_key_value_heads: int = 4
    """Key/value heads. Equal to the query heads like Qwen2-Audio-7B (no GQA); this
    also keeps k_proj/v_proj outputs at 64, a whole bitsandbytes block."""
    audio_d_model: int = 64
    """Width of the Whisper-style audio encoder."""
    audio_layers: int = 2
    """Encoder layers in the audio tower."""
    audio_heads: int = 4
    """Attention heads in the audio tower."""
    audio_ffn_dim: int = 128
    """Feed-forward width in the audio tower."""
    num_mel_bins: int = 128
    """Mel bins produced by the feature extractor and consumed by the encoder."""
    chunk_length_s: int = 10
    """Feature-extractor window in seconds; audio is padded/cut to this length and
    the encoder's max_source_positions is chunk_length_s * 100 // 2."""
    seed: int = 0
    """Seed for the weight initialisation (the tokenizer training is deterministic)."""

    @property
    def max_source_positions(self) -> int:
        # 100 mel frames per second at hop 160 / 16 kHz, halved by the encoder's stride-2 conv.
        return self.chunk_length_s * (SAMPLING_RATE // HOP_LENGTH) // 2

    def validate(self) -> None:
        """Raise ValueError naming the offending field if the spec cannot build a usable model."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"TinySpec.{field.name}={value!r} must be an int")
            if field.name != "seed" and value <= 0:
                raise ValueError(f"TinySpec.{field.name}={value} must be positive")
        minimum_vocab = 256 + len(SPECIAL_TOKENS)
        if self.vocab_size < minimum_vocab:
            raise ValueError(
                f"TinySpec.vocab_size={self.vocab_size} is below the {minimum_vocab} needed for the "
                f"256 byte tokens plus {len(SPECIAL_TOKENS)} special tokens; raise it to at least {minimum_vocab}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"TinySpec.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; pick a divisor of hidden_size"
            )
        head_dim = self.hidden_size // self.num_attention_heads
        if head_dim % 2:
            raise ValueError(f"TinySpec head dim {head_dim} must be even for rotary embeddings; change hidden_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"TinySpec.num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; pick a divisor"
            )
        if self.audio_d_model % self.audio_heads:
            raise ValueError(
                f"TinySpec.audio_d_model={self.audio_d_model} is not divisible by audio_heads={self.audio_heads}"
            )
        lm_dims = {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_key_value_heads * head_dim": self.num_key_value_heads * head_dim,
        }
        for name, dim in lm_dims.items():
            if dim % _BNB_BLOCK:
                raise ValueError(
                    f"TinySpec {name}={dim} is not a multiple of {_BNB_BLOCK}; the LM's linear layers must "
                    f"split into whole 4-bit blocks, so choose a multiple of {_BNB_BLOCK}"
                )


# --------------------------------------------------------------------------- builders



def _build_model(spec: TinySpec, tokenizer):
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2Config,
    )

    ids = special_ids(tokenizer)
    endoftext, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    audio_config = Qwen2AudioEncoderConfig(
        num_mel_bins=spec.num_mel_bins,
        encoder_layers=spec.audio_layers,
        encoder_attention_heads=spec.audio_heads,
        encoder_ffn_dim=spec.audio_ffn_dim,
        d_model=spec.audio_d_model,
        max_source_positions=spec.max_source_positions,
        activation_function="gelu",
        scale_embedding=False,
    )
    text_config = Qwen2Config(
        # Exactly the tokenizer length: the embedding must cover every special token id.
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        # Same context length and norm epsilon as Qwen2-Audio-7B; rope left at defaults.
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    config = Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_index=ids["<|AUDIO|>"],
    )
    config.dtype = "float32"

    # Seed right before construction so the weights depend only on the spec.
    torch.manual_seed(spec.seed)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext,
        # Like the real instruct checkpoint: stop on the end of the assistant turn or of the text.
        eos_token_id=[im_end, endoftext],
        pad_token_id=endoftext,
        do_sample=False,
        max_new_tokens=64,
    )
    return model


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
        processor = build_processor(spec, tokenizer)
        model = _build_model(spec, tokenizer)
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
