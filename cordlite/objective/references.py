"""The teacher's text-view reference answers (the GRPO judge compares rollouts with them), and the
sampling keys that make every draw of a run a pure function of (seed, step, prompt).

With the frozen-base teacher a reference never changes, so each is generated once and appended to
RUN/reference_answers.jsonl, which survives resume.
"""

from __future__ import annotations

import hashlib
import json
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
    """Text-view reference answers. With the frozen-base teacher they never change, so they are
    generated once and appended to a JSONL file that survives resume.

    An answer is filed under a key of everything it depends on: `context` (the base's digest, the
    instruction and system prompt, the reference decoding; trainer.reference_context) and the
    example's id and question. A resumed run on another base or another manifest, or a manifest
    whose question changed under the same id, finds no answer of the old one and makes its own.
    Lines without a key (cordlite before this rule) are never used."""

    def __init__(self, path: Path | None, write: bool = True, context: str = ""):
        self.path = path
        self.write = write  # under data parallelism only rank 0 appends; the others read
        self.context = context
        self.answers: dict[str, str] = {}
        if path is not None:  # a line cut short by a kill is skipped (read_jsonl): that answer is made again
            self.answers.update((r["key"], r["reference"]) for r in read_jsonl(path)
                                if isinstance(r.get("key"), str) and isinstance(r.get("reference"), str))

    def key(self, ex: Example) -> str:
        """The key of `ex`'s answer under this store's context."""
        text = json.dumps([self.context, ex.id, ex.question], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, ex: Example) -> str | None:
        return self.answers.get(self.key(ex))

    def add(self, pairs: list[tuple[Example, str]]) -> None:
        """Record (example, answer) pairs (one append to the file)."""
        rows = [{"key": self.key(ex), "id": ex.id, "reference": text} for ex, text in pairs]
        self.answers.update((r["key"], r["reference"]) for r in rows)
        if self.path is not None and self.write:
            append_jsonl(self.path, rows)

    def missing(self, examples: list[Example]) -> list[Example]:
        """The examples (each once) without an answer yet."""
        return [ex for ex in {self.key(ex): ex for ex in examples}.values() if self.get(ex) is None]
