"""The teacher's text-view reference answers (the GRPO judge compares rollouts with them), and the
sampling keys that make every draw of a run a pure function of (seed, step, prompt).

With the frozen-base teacher a reference never changes, so each is generated once and appended to
RUN/reference_answers.jsonl, which survives resume.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from cordlite.data import Example
from cordlite.files import append_jsonl, read_jsonl
from cordlite.models.tokens import audio_special_token_ids, end_token_ids


@dataclass
class Tokens:
    """Token ids the step needs from the tokenizer."""

    end_ids: list[int]
    pad_id: int
    blocked_ids: list[int]

    @classmethod
    def of(cls, model, tokenizer) -> "Tokens":
        end = end_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end[-1]
        return cls(end, pad, audio_special_token_ids(tokenizer))


def sampling_key(*parts) -> int:
    """A 62-bit sampling key, a pure function of `parts` (seed, step, the prompt's place in the step's
    global batch; or seed and an example id): the same prompt of the same step draws the same rows on
    any number of ranks, with any micro-batch size and however its generate calls are split."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def step_keys(seed: int, step: int, positions: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[B] sampling keys of the prompts at `positions` of step `step`'s global batch."""
    return torch.tensor([sampling_key("rollout", seed, step, p) for p in positions], device=device)


class ReferenceStore:
    """Text-view reference answers by example id. With the frozen-base teacher they never change,
    so they are generated once and appended to a JSONL file that survives resume."""

    def __init__(self, path: Path | None, write: bool = True):
        self.path = path
        self.write = write  # under data parallelism only rank 0 appends; the others read
        self.answers: dict[str, str] = {}
        if path is not None:  # a line cut short by a kill is skipped (read_jsonl): that answer is made again
            self.answers.update((r["id"], r["reference"]) for r in read_jsonl(path) if "id" in r and "reference" in r)

    def add(self, pairs: list[tuple[str, str]]) -> None:
        """Record (example id, answer) pairs (one append to the file)."""
        self.answers.update(pairs)
        if self.path is not None and self.write:
            append_jsonl(self.path, [{"id": i, "reference": text} for i, text in pairs])

    def missing(self, examples: list[Example]) -> list[Example]:
        """The examples (each once) without an answer yet."""
        return [ex for ex in {ex.id: ex for ex in examples}.values() if ex.id not in self.answers]
