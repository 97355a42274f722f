"""The LLM judge: a local instruct model reads a question and two answers and says whether they
reach the same final answer (method doc, "Sequence level", step 3; cordlite.judge's `llm` modes).

    llm = LLMJudge(model, tokenizer, model_id, cache=VerdictCache(PATH))
    replies = llm.ask([(question, answer_a, answer_b), ...])   # LLMReply(same, reply, cached)

Decided greedily, parsed strictly (`parse_verdict`: an unparseable reply is None), and cached in
JSONL keyed by a hash of (judge model id, prompt template version, question, answer A, answer B),
so a resumed run or a second eval never asks twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from cordlite.files import append_jsonl, read_jsonl
from cordlite.judge.verify import LETTERS

TEMPLATE_VERSION = "same-final-answer-v1"
MAX_ANSWER_CHARS = 2000  # the final answer sits at the end: longer answers keep their tail

JUDGE_PROMPT = (
    "Two answers to the same question follow. Decide whether they reach the same final answer.\n"
    "Ignore wording, formatting, explanations and the working; compare only the final answers. "
    "An option letter and the text of that option are the same answer; the same number written "
    "differently (for example 0.5 and 1/2) is the same answer.\n\n"
    "Question:\n{question}\n\n"
    "Answer A:\n{answer_a}\n\n"
    "Answer B:\n{answer_b}\n\n"
    "Do Answer A and Answer B reach the same final answer? Reply with one word: yes or no."
)


class JudgeError(ValueError):
    """The judge cannot be built as configured, or judge-check cannot read its pairs; the message
    names the setting or the file."""


_MARKUP = re.compile(r"[*_`#>\"'\u201c\u201d]")
_TRAILING_VERDICT = re.compile(r"[:\-\u2013]\s*(yes|no)\b[\s.!]*$")


def parse_verdict(reply: str) -> bool | None:
    """'yes' -> True, 'no' -> False, anything else -> None. Strict on purpose: the verdict must be
    the reply's first word ("Yes.", "**no**, because ...") or follow a colon at its very end
    ("The answers match: yes"); hedges such as "maybe" or "yes or no" are unparseable."""
    text = _MARKUP.sub(" ", reply).strip().lower()
    words = re.findall(r"[a-z]+", text)
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return words[0] == "yes"
    m = _TRAILING_VERDICT.search(text)
    return (m.group(1) == "yes") if m else None


def with_options(question: str, choices: list[str] | None) -> str:
    """The question as the judge sees it: the options listed when the item has them."""
    if not choices:
        return question
    return question + "\nOptions: " + "  ".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def cache_key(model_id: str, question: str, answer_a: str, answer_b: str) -> str:
    blob = json.dumps([model_id, TEMPLATE_VERSION, question, answer_a, answer_b], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class VerdictCache:
    """Judge replies by content hash, in memory and (with a path) appended to a JSONL file."""

    def __init__(self, path: Path | None, write: bool = True):
        self.path = path
        self.write = write  # under data parallelism only rank 0 appends; the others read
        self.rows: dict[str, dict] = {}
        if path is not None:  # a line cut short by a kill is skipped (read_jsonl): that pair is asked again
            self.rows.update((row["key"], row) for row in read_jsonl(path) if "key" in row)

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put_many(self, rows: list[dict]) -> None:
        for row in rows:
            self.rows[row["key"]] = row
        if self.path is not None and self.write and rows:
            append_jsonl(self.path, rows)


@dataclass(frozen=True)
class LLMReply:
    same: bool | None  # None = unparseable
    reply: str
    cached: bool


def _clip(answer: str) -> str:
    answer = answer.strip()
    return answer if len(answer) <= MAX_ANSWER_CHARS else "..." + answer[-MAX_ANSWER_CHARS:]


class LLMJudge:
    """Asks a causal LM, in batches and greedily, whether answer A and answer B agree."""

    def __init__(self, model, tokenizer, model_id: str, *, max_new_tokens: int = 16, batch_size: int = 16,
                 cache: VerdictCache | None = None,
                 context: Callable[[], ContextManager] = contextlib.nullcontext):
        from cordlite.models.tokens import audio_special_token_ids, end_token_ids

        if not getattr(tokenizer, "chat_template", None):
            raise JudgeError(f"judge.model: {model_id!r} has no chat template; use an instruct (chat) model")
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.cache = cache if cache is not None else VerdictCache(None)
        self.context = context
        self.end_ids = end_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_ids[-1]
        self.blocked_ids = audio_special_token_ids(tokenizer)
        self.generate_calls = 0

    def render(self, question: str, answer_a: str, answer_b: str) -> str:
        user = JUDGE_PROMPT.format(question=question.strip(), answer_a=_clip(answer_a), answer_b=_clip(answer_b))
        return self.tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                  add_generation_prompt=True, tokenize=False)

    def _generate(self, prompts: list[str]) -> list[str]:
        from cordlite.models.lora import base_of
        from cordlite.models.sampling import sample

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = base_of(self.model).device
        inputs = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
        was_training = self.model.training
        self.model.eval()
        try:
            with self.context():
                r = sample(self.model, inputs, 1, temperature=1.0, max_new_tokens=self.max_new_tokens,
                           end_ids=self.end_ids, pad_id=self.pad_id, blocked_ids=self.blocked_ids, greedy=True)
        finally:
            self.model.train(was_training)
        self.generate_calls += 1
        # Padding after the end token is pad_id (special, skipped); multiplying by the mask would turn it
        # into token id 0, which is a printable token ("!") in Qwen vocabularies.
        return self.tokenizer.batch_decode(r.completion_ids, skip_special_tokens=True)

    def ask(self, triples: list[tuple[str, str, str]]) -> list[LLMReply]:
        """One reply per (question, answer A, answer B); cached pairs never reach the model."""
        keys = [cache_key(self.model_id, *t) for t in triples]
        todo: dict[str, tuple[str, str, str]] = {}  # unique uncached pairs, in order
        for key, t in zip(keys, triples):
            if self.cache.get(key) is None and key not in todo:
                todo[key] = t
        fresh: set[str] = set(todo)
        pending = list(todo.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            replies = self._generate([self.render(*t) for _, t in chunk])
            self.cache.put_many([
                {"key": key, "model": self.model_id, "template": TEMPLATE_VERSION, "same": parse_verdict(reply),
                 "reply": reply}
                for (key, _), reply in zip(chunk, replies)
            ])
        out = []
        for key in keys:
            row = self.cache.get(key)
            out.append(LLMReply(row["same"], row["reply"], key not in fresh))
        return out
