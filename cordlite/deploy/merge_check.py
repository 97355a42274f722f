"""The end-of-merge check: does the exported checkpoint answer like base + adapter?

On a few items (spoken questions from the run's manifest, else seeded synthetic audio) the
reference model (base with the adapter attached, unmerged) answers greedily. The exported
checkpoint, reloaded from disk, then
  - scores the reference answers (prompt + answer in one forward pass, the same code path for
    both models): the largest absolute logit difference over all answer positions and the whole
    vocabulary must stay within  tolerance = rel_tol * max(1, max |reference logit|);
  - answers greedily too: the token ids must be identical, item by item, except after a near-tie:
    where the answers part, the reference's own logits for the two tokens are within
    2 * tolerance (a difference of at most `tolerance` per logit can flip such a choice and no other).
rel_tol is 1e-4 in float32 (merging only reorders the sums: W x + s B (A x) against (W + s B A) x)
and 5e-2 in bfloat16, where the merged weight W + s B A is rounded to 8 mantissa bits once more
than the unmerged path rounds it, on top of bf16 activations in both. The float32 check is the
tight one; the bfloat16 one catches gross errors (a missing or wrongly scaled delta). For scale,
the result also reports the adapter's own effect: the largest logit difference between base +
adapter and the base alone along the same answers. An NF4 export is lossy by design; its
figures are reported, never checked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

REL_TOL = {"float32": 1e-4, "bfloat16": 5e-2}


@dataclass(frozen=True)
class CheckItems:
    """What the check asks: clips (16 kHz mono) and the prompt around them."""

    clips: list[np.ndarray]
    labels: list[str]  # manifest ids, or synthetic-N
    source: str  # the manifest path, or "synthetic audio"
    instruction: str = ""
    system_prompt: str | None = None


@dataclass(frozen=True)
class Reference:
    """Greedy answers of one model and its logits along the reference answers."""

    completion_ids: torch.Tensor  # [n, L] pad after the end token
    completion_mask: torch.Tensor  # [n, L] 1 = answer token (end token included)
    logits: torch.Tensor  # [n, L, V] float32 on CPU, the logits that predict each answer token
    answers: list[str]
    adapter_effect: float | None = None  # max |logit(base + adapter) - logit(base)| along the answers


@dataclass
class CheckResult:
    items: int
    source: str
    dtype: str
    max_abs_logit_diff: float
    logit_scale: float  # max |reference logit| over the answer positions
    tolerance: float | None  # None: figures only (NF4)
    identical_answers: int
    near_tie_flips: int  # answers that part where the reference's top two were within 2 * tolerance
    answer_tokens: int  # answer positions compared
    adapter_effect: float | None = None  # max |logit difference| base + adapter vs base alone
    reference_answers: list[str] = field(default_factory=list)
    exported_answers: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.tolerance is None or (self.max_abs_logit_diff <= self.tolerance
                                          and self.identical_answers + self.near_tie_flips == self.items)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        verdict = ("figures only (lossy export)" if self.tolerance is None else
                   f"tolerance {self.tolerance:.3g} -> {'PASS' if self.passed else 'FAIL'}")
        ties = f" (+{self.near_tie_flips} parted at a near-tie)" if self.near_tie_flips else ""
        effect = f", adapter effect {self.adapter_effect:.3g}" if self.adapter_effect is not None else ""
        return (f"{self.items} items ({self.source}), {self.dtype}: greedy answers identical "
                f"{self.identical_answers}/{self.items}{ties}; max |logit diff| {self.max_abs_logit_diff:.3g} over "
                f"{self.answer_tokens} answer tokens (logit scale {self.logit_scale:.3g}{effect}); {verdict}")


def synthetic_clips(n: int, seed: int = 0) -> list[np.ndarray]:
    """n seeded clips of 1-2 s: a few tones with vibrato plus a little noise, loudness about -20 dBFS."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        t = np.arange(int(16000 * rng.uniform(1.0, 2.0))) / 16000
        tones = sum(np.sin(2 * np.pi * f * t + 3 * np.sin(2 * np.pi * 5 * t)) for f in rng.uniform(150, 2500, 3))
        clip = 0.03 * tones + 0.005 * rng.standard_normal(t.size)
        clips.append(clip.astype(np.float32))
    return clips


def check_items(n: int, recipe: dict | None, manifest: str | Path | None = None) -> CheckItems:
    """The first n rows of `manifest` (default: the run's data.train_manifest) whose audio exists,
    else n synthetic clips; the prompt is the run's instruction and system prompt."""
    from cordlite.audio import load_audio
    from cordlite.data import ManifestError, read_manifest

    data = (recipe or {}).get("data", {})
    instruction, system_prompt = data.get("instruction", "") or "", data.get("system_prompt")
    path = manifest or data.get("train_manifest")
    if path and Path(path).is_file():
        try:
            rows = [ex for ex in read_manifest(path, check_audio_exists=False) if ex.audio_path.is_file()][:n]
        except ManifestError:
            if manifest:  # asked for explicitly: say what is wrong with it
                raise
            rows = []
        if rows:
            return CheckItems([load_audio(ex.audio_path) for ex in rows], [ex.id for ex in rows], str(path),
                              instruction, system_prompt)
    elif manifest:
        raise FileNotFoundError(f"--check-manifest: {manifest} not found; pass a manifest JSONL or leave it out")
    return CheckItems(synthetic_clips(n), [f"synthetic-{i}" for i in range(n)], "synthetic audio",
                      instruction, system_prompt)


@torch.no_grad()
def answer_logits(model, inputs: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[n, L, V] float32 CPU logits that predict each token of `ids` after the prompt (teacher forcing)."""
    from cordlite.objective.logprobs import completion_hidden, model_logits

    hidden = completion_hidden(model, inputs, ids, mask)  # [n, L, H]
    return model_logits(model, hidden).float().cpu()


@torch.no_grad()
def reference(model, processor, items: CheckItems, max_new_tokens: int) -> Reference:
    """Greedy answers of `model` on the items and its logits along them (plus the adapter's effect
    when `model` is a PeftModel)."""
    from cordlite.deploy.infer import audio_prompt_inputs, decoding_tokens
    from cordlite.models.lora import adapters_off
    from cordlite.models.sampling import sample

    device = next(model.parameters()).device
    inputs = audio_prompt_inputs(processor, items.clips, items.instruction, items.system_prompt)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    end, pad, blocked = decoding_tokens(model, processor.tokenizer)
    out = sample(model, inputs, 1, temperature=1.0, max_new_tokens=max_new_tokens, end_ids=end, pad_id=pad,
                 blocked_ids=blocked, greedy=True)
    logits = answer_logits(model, inputs, out.completion_ids, out.completion_mask)
    answers = processor.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    effect = None
    if hasattr(model, "disable_adapter"):
        with adapters_off(model):
            base_logits = answer_logits(model, inputs, out.completion_ids, out.completion_mask)
        valid = out.completion_mask.bool().cpu()
        effect = float((logits - base_logits).abs().amax(dim=-1)[valid].max()) if valid.any() else 0.0
    return Reference(out.completion_ids.cpu(), out.completion_mask.cpu(), logits, answers, effect)


@torch.no_grad()
def compare(model, processor, items: CheckItems, ref: Reference, dtype: str, max_new_tokens: int,
            checked: bool = True) -> CheckResult:
    """Run `model` (the exported checkpoint) on the items and compare it with the reference."""
    from cordlite.deploy.infer import audio_prompt_inputs

    device = next(model.parameters()).device
    inputs = audio_prompt_inputs(processor, items.clips, items.instruction, items.system_prompt)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    logits = answer_logits(model, inputs, ref.completion_ids.to(device), ref.completion_mask.to(device))
    valid = ref.completion_mask.bool()  # [n, L]
    diff = (logits - ref.logits).abs().amax(dim=-1)[valid]  # [answer tokens]
    scale = float(ref.logits.abs().amax(dim=-1)[valid].max()) if valid.any() else 0.0
    mine = reference(model, processor, items, max_new_tokens)
    tolerance = REL_TOL[dtype] * max(1.0, scale)
    margins = [_parting_margin(ref, mine, i) for i in range(len(items.clips))]  # None = identical
    return CheckResult(
        items=len(items.clips), source=items.source, dtype=dtype,
        max_abs_logit_diff=float(diff.max()) if diff.numel() else 0.0, logit_scale=scale,
        tolerance=tolerance if checked else None,
        identical_answers=sum(m is None for m in margins),
        near_tie_flips=sum(m is not None and m <= 2 * tolerance for m in margins) if checked else 0,
        answer_tokens=int(valid.sum()), adapter_effect=ref.adapter_effect,
        reference_answers=list(ref.answers), exported_answers=list(mine.answers))


def _parting_margin(ref: Reference, other: Reference, i: int) -> float | None:
    """None when answer i is identical; else, at the first token where they part, how far the
    reference preferred its own token over the other's (its logit minus the other token's)."""
    a = ref.completion_ids[i][ref.completion_mask[i].bool()].tolist()
    b = other.completion_ids[i][other.completion_mask[i].bool()].tolist()
    if a == b:
        return None
    t = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if t >= min(len(a), len(b)):
        return float("inf")  # one stopped (or was cut) where the other went on without a differing token
    return float(ref.logits[i, t, a[t]] - ref.logits[i, t, b[t]])
