"""The audio view as input embeddings: the audio tower run once, its frames merged into the prompt.

    hidden, lengths = encode_audio(model, input_features, feature_attention_mask)   # [B, T, D], [B]
    embeds = merge_audio(model, input_ids, project(model, hidden), lengths)         # [B, P, H]
    model(inputs_embeds=embeds, attention_mask=...)   # the same logits as model(input_ids, input_features, ...)

Every family's class merges audio inside its forward: every call with `input_features` runs the
encoder again, for each row. Split into these three steps, the encoder can run once per distinct clip
and its frames be reused (rollout rows of the same prompt, the gradient pass, the alignment's
cached clips), with the same numbers as the model's own forward: the same encoder mask, the
same frames cut to each clip's length, the same placement at the audio placeholder tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cordlite.models.lora import base_of


def _parts(model):
    """(audio tower, projector, token embeddings, config, family) of a loaded model."""
    from cordlite.models.families import family_of

    base = base_of(model)
    family = family_of(base)
    return family.audio_tower(base), family.audio_projector(base), base.get_input_embeddings(), base.config, family


def encode_audio(model, input_features: torch.Tensor,
                 feature_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio tower output [B, T, D] and each clip's frame count [B]: on every clip's first
    count frames, the numbers the model's own forward computes (its family's encode)."""
    tower, _, _, _, family = _parts(model)
    return family.encode(tower, input_features, feature_attention_mask)


def encode_each(model, input_features: torch.Tensor,
                feature_attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_audio clip by clip, stacked as encode_audio returns them: each clip's frames depend on
    that clip alone, not on which clips share its batch (so a step's frames are the same numbers
    whichever ranks and micro-batches its prompts fall in), and each clip runs on its own length."""
    rows = [encode_audio(model, input_features[b : b + 1], feature_attention_mask[b : b + 1])
            for b in range(input_features.shape[0])]
    frames = [hidden[0, : int(n[0])] for hidden, n in rows]
    hidden, lengths = stack_frames(frames, frames[0].dtype)
    return hidden, lengths.to(hidden.device)


def project(model, hidden: torch.Tensor) -> torch.Tensor:
    """Encoder frames [B, T, D] -> the language model's input space [B, T, H] (the projector, after
    whatever the family's forward does to the frames before it)."""
    _, projector, _, _, family = _parts(model)
    if family.pre_projector is not None:
        hidden = family.pre_projector(base_of(model), hidden)
    return projector(hidden)


def merge_audio(model, input_ids: torch.Tensor, projected: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings [B, P, H]: token embeddings, with row b's first lengths[b] projected audio
    frames [B, T, H] written over its audio placeholder tokens, in order."""
    _, _, embed, config, family = _parts(model)
    embeds = embed(input_ids)
    audio = input_ids == family.audio_token_id(config)  # [B, P]
    keep = torch.arange(projected.shape[1], device=projected.device)[None, :] < lengths.to(projected.device)[:, None]
    frames = projected[keep]  # [sum of lengths, H], row by row
    if int(audio.sum()) != frames.shape[0]:
        raise ValueError(f"{int(audio.sum())} audio placeholder tokens in the prompt but {frames.shape[0]} audio "
                         "frames: the prompt was not made by this model's processor for these clips")
    return embeds.masked_scatter(audio.unsqueeze(-1), frames.to(embeds.dtype))


def prompt_embeds(model, prompt: dict[str, torch.Tensor],
                  frames: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """An audio-view prompt (input_ids, attention_mask, input_features, feature_attention_mask) as
    {"inputs_embeds", "attention_mask", "input_ids"}: the encoder run once for its B rows, or not
    at all when its output `frames` (hidden, lengths from encode_audio) is given. `input_ids` stays
    for lengths and logging; models are called with the embeddings."""
    hidden, lengths = frames if frames is not None else encode_audio(model, prompt["input_features"],
                                                                     prompt["feature_attention_mask"])
    embeds = merge_audio(model, prompt["input_ids"], project(model, hidden), lengths)
    return {"inputs_embeds": embeds, "attention_mask": prompt["attention_mask"], "input_ids": prompt["input_ids"]}


def merged_audio_prompt(model, audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An audio-view prompt for answering (eval, infer, diagnose) as merged embeddings: the encoder
    once per clip, on the part of its window that holds the clip (encode_each), its frames written
    over the audio placeholders. The sampler then reads every prompt once with cordlite's prefill
    and keeps its keys and values once; handed to generate() as features instead, the encoder runs on
    every clip's full window and the prompt's logits are computed over the whole vocabulary. The
    same answers (tests/test_families.py)."""
    return prompt_embeds(model, audio, frames=encode_each(model, audio["input_features"],
                                                          audio["feature_attention_mask"]))


def _encoder_only(model, items):
    """(name, value) pairs of the audio tower's `items`, without the projector where the family's
    projector sits inside the tower (Qwen2.5-Omni's audio_tower.proj): what encode_audio computes."""
    tower, projector, _, _, _ = _parts(model)
    inner = [name for name, module in tower.named_modules() if module is projector]
    prefixes = tuple(f"{name}." for name in inner)
    return [(name, value) for name, value in items(tower) if not name.startswith(prefixes)]


def encoder_is_frozen(model) -> bool:
    """True when nothing can change the audio tower's output between calls: no adapter layers in
    it and no parameter of it that trains (the projector, run on every call, aside)."""
    return not any("lora_" in name or p.requires_grad
                   for name, p in _encoder_only(model, lambda t: t.named_parameters()))


class FrameStoreError(ValueError):
    """A frame store that does not belong to this model's encoder or these clips, naming the file."""


def encoder_digest(model) -> str:
    """sha256 of the audio tower's weights (names, shapes, dtypes, bytes): the frames a store holds
    are this encoder's only when the digests agree."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(_encoder_only(model, lambda tower: tower.state_dict().items())):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FrameCache:
    """Encoder frames per clip id, computed once and reused by later prompts of the same clips:
    valid while the encoder is frozen (encoder_is_frozen), as for every evaluation of adapters
    that leave it alone. The projector and the merge run on every call, so adapters on the
    projector or the language model are always applied.

    save()/load() keep the frames in a safetensors file (a frame store) with the encoder's digest
    and a digest of the clips (the split's manifest), so runs that share a frozen encoder and a
    split compute each clip's frames once between them (cordlite.testbed.frames)."""

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.frames: dict[str, torch.Tensor] = {}
        self.dtype = dtype  # kept in this dtype (float16 halves the memory), used in float32

    def frames_of(self, model, ids: list[str], audio: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [B, T, D], lengths [B]) of the clips `ids`, as encode_audio returns them for the
        audio-view prompt `audio` of the same clips; the encoder runs only on clips not seen yet."""
        missing = [i for i, k in enumerate(ids) if k not in self.frames]
        if missing:
            index = torch.tensor(missing, device=audio["input_features"].device)  # on the features' device (CUDA too)
            hidden, lengths = encode_audio(model, audio["input_features"].index_select(0, index),
                                           audio["feature_attention_mask"].index_select(0, index))
            for i, h, n in zip(missing, hidden, lengths.tolist()):
                self.frames[ids[i]] = h[:n].detach().to(self.dtype or h.dtype).clone()
        tower, _, _, _, _ = _parts(model)  # as encode_audio returns them: the encoder's dtype and device
        weight = next(tower.parameters())
        hidden, lengths = stack_frames([self.frames[k] for k in ids], weight.dtype)
        return hidden.to(weight.device), lengths.to(weight.device)

    def counts(self) -> dict[str, int]:
        """Frames per clip id (cordlite.data.encode_views builds prompts from them without audio)."""
        return {k: len(v) for k, v in self.frames.items()}

    def prompt(self, model, ids: list[str], audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`audio` (an audio-view prompt of the clips `ids`) as merged input embeddings."""
        hidden, lengths = self.frames_of(model, ids, audio)
        embeds = merge_audio(model, audio["input_ids"], project(model, hidden), lengths)
        return {"inputs_embeds": embeds, "attention_mask": audio["attention_mask"], "input_ids": audio["input_ids"]}

    def save(self, path, encoder: str, clips: str) -> None:
        """Write every frame to `path` (atomically), with the encoder digest and the clips digest."""
        from safetensors.torch import save_file

        from cordlite.files import ordinary_modes, temp_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            save_file({k: v.contiguous() for k, v in self.frames.items()}, str(tmp),
                      metadata={"format": "cordlite-frames-1", "encoder": encoder, "clips": clips})
            ordinary_modes(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path, encoder: str, clips: str | None = None, dtype: torch.dtype | None = None) -> "FrameCache":
        """The frames of a store written by save(); refused when it was made by another encoder or
        (with `clips`) from other clips."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "cordlite-frames-1":
                    raise FrameStoreError(f"{path}: not a cordlite frame store (format {meta.get('format')!r})")
                if meta.get("encoder") != encoder:
                    raise FrameStoreError(f"{path}: made by another audio encoder (digest {meta.get('encoder', '?')[:12]}, "
                                          f"this model's {encoder[:12]}); delete it to compute the frames again")
                if clips is not None and meta.get("clips") != clips:
                    raise FrameStoreError(f"{path}: made from other clips (the manifest changed); delete it to "
                                          "compute the frames again")
                cache = cls(dtype)
                cache.frames = {k: f.get_tensor(k) for k in f.keys()}
                if dtype is not None:
                    cache.frames = {k: v.to(dtype) for k, v in cache.frames.items()}
        except FrameStoreError:
            raise
        except Exception as e:  # noqa: BLE001 - a cut or foreign file: one message naming it
            raise FrameStoreError(f"{path}: unreadable frame store ({type(e).__name__}: {e}); delete it to compute "
                                  "the frames again") from None
        return cache


def stack_frames(rows: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip frames [n_i, D] -> (hidden [B, max n_i, D] in `dtype`, zero after each clip, lengths [B])."""
    lengths = torch.tensor([len(r) for r in rows])
    hidden = torch.zeros((len(rows), int(lengths.max()), rows[0].shape[1]), dtype=dtype, device=rows[0].device)
    for b, r in enumerate(rows):
        hidden[b, : len(r)] = r
    return hidden, lengths
