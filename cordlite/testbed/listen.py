"""The pretrained-encoder testbed's alignment: the audio view learns to hear, not to reason.

    clips = EncodedClips.of(model, processor, examples, {"asr": ASR_INSTRUCTION, "chain": instruction})
    result = align_listen(model, processor, clips, val_clips, text_problems, instruction, FitConfig(...), AlignMix())

A real LALM (Qwen2-Audio and kin) starts from a Whisper encoder pretrained on a large amount of
speech and a text LLM, and is aligned mostly on transcription-like tasks; spoken reasoning gets
little supervision. Its audio view hears the question and reasons worse over it: the gap CORD is
argued for. This stage builds that on the testbed, with the Whisper encoder FROZEN (pretrained
weights, cordlite.models.whisper_weights) and each optimizer step a mix of (AlignMix):

  asr          audio + "Repeat the question." -> the question, word for word (hearing)
  audio_chain  audio + the task instruction -> the chain of thought (a little spoken reasoning)
  text_chain   text view -> the chain (replay, so the text view stays the teacher it was)

The projector and the whole language model train (as in a real LALM's alignment, where the LLM is
not frozen); the encoder does not, so its frames are computed once per clip (EncodedClips, with
cordlite.models.audio_view, the same numbers as the model's own forward) and every step costs the
language model alone. The stopping metric is teacher-forced exact match of the audio view's chain
on val (as in cordlite.testbed.stages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cordlite.data import Example, batch_indices, expand_audio_placeholder
from cordlite.models.audio_view import FrameCache, merge_audio, project, stack_frames
from cordlite.testbed.frames import fill_frames
from cordlite.testbed.fit import FitConfig, FitResult, answer_loss, completion_tensors, fit
from cordlite.testbed.stages import EVAL_BATCH, TextPrompts, end_and_pad, text_prompts
from cordlite.testbed.task import Problem

ASR_INSTRUCTION = "Repeat the question."


@dataclass(frozen=True)
class AlignMix:
    """Rows of each kind per optimizer step, and the weight of each kind's token-mean loss."""

    asr: int = 8
    audio_chain: int = 2
    text_chain: int = 6
    chain_clips: int = 0
    """Spoken reasoning comes from this many clips only (the first N of the train split; 0 = all):
    a real LALM has far more transcribed speech than spoken reasoning data."""
    text_targets: str = "reference"
    """Text replay targets: "reference" chains, or the text model's "own" greedy answers (taken
    once before the alignment), which keep the text view the teacher it was, errors included."""
    hearing_steps: int = 0
    """Hearing first: for the first N steps every clip of a step is a transcription row (no spoken
    reasoning yet); the audio_chain rows join after them. A real LALM's alignment, too, starts
    from transcription before any spoken instruction data."""
    asr_weight: float = 1.0
    audio_chain_weight: float = 1.0
    text_chain_weight: float = 1.0

    def __post_init__(self):
        if self.text_targets not in ("reference", "own"):
            raise ValueError(f"AlignMix.text_targets {self.text_targets!r}: choose reference or own")
        if self.hearing_steps < 0:
            raise ValueError(f"AlignMix.hearing_steps {self.hearing_steps}: must be >= 0")


class EncodedClips:
    """Per clip: the frozen encoder's frames (float16, cut to the clip) and its audio-view prompt ids
    for each named instruction (unpadded). `batch(indices, name)` -> a prompt for the model."""

    def __init__(self, examples: list[Example], frames: list[torch.Tensor], ids: dict[str, list[torch.Tensor]],
                 pad_id: int):
        self.examples, self.frames, self.ids, self.pad_id = examples, frames, ids, pad_id

    @classmethod
    @torch.no_grad()
    def of(cls, model, processor, examples: list[Example], instructions: dict[str, str], batch_size: int = 16,
           progress: bool = True, label: str = "encode", store: FrameCache | None = None) -> "EncodedClips":
        """The encoder runs on the clips `store` (a FrameCache: a split's frame store) does not hold
        (cordlite.testbed.frames.fill_frames); their frames are added to it."""
        store = store if store is not None else FrameCache(torch.float16)
        fill_frames(store, model, processor, examples, batch_size, progress, label)
        frames = [store.frames[ex.id].half() for ex in examples]
        # The prompt ids need only each clip's frame count: no mel features.
        ids = {name: [prompt_ids(processor, ex, text, len(f)) for ex, f in zip(examples, frames)]
               for name, text in instructions.items()}
        return cls(examples, frames, ids, processor.tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.examples)

    def prompt(self, model, indices: list[int], name: str) -> dict[str, torch.Tensor]:
        """{"inputs_embeds", "attention_mask"} of these clips' audio-view prompts (left-padded), the
        frames passed through the model's projector now (so it trains)."""
        rows = [self.ids[name][i] for i in indices]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, width - len(r):] = r
            attention[b, width - len(r):] = 1
        hidden, lengths = stack_frames([self.frames[i] for i in indices])
        embeds = merge_audio(model, input_ids, project(model, hidden), lengths)
        return {"inputs_embeds": embeds, "attention_mask": attention, "input_ids": input_ids}


def prompt_ids(processor, example: Example, instruction: str, n_audio: int) -> torch.Tensor:
    """The audio-view prompt ids of `example` with `instruction`, its audio placeholder expanded to
    the clip's n_audio frames as Qwen2AudioProcessor expands it, without computing mel features."""
    from cordlite.prompts import audio_view_messages

    text = processor.apply_chat_template(audio_view_messages(str(example.audio_path), instruction),
                                         add_generation_prompt=True, tokenize=False)
    text = expand_audio_placeholder(processor, text, n_audio)
    return torch.tensor(processor.tokenizer(text, add_special_tokens=False)["input_ids"])


def _trainable(model, on: bool) -> list[torch.nn.Parameter]:
    """The projector and the language model (embeddings, decoder, head); the encoder stays frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    if not on:
        return []
    params = [p for m in (model.model.multi_modal_projector, model.model.language_model, model.lm_head)
              for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


@dataclass(frozen=True)
class Replay:
    """A text replay row: a question and the answer to train on."""

    question: str
    answer: str


@torch.no_grad()
def own_answers(model, processor, problems: list, instruction: str, max_new_tokens: int = 64,
                batch_size: int = 128) -> list[Replay]:
    """The model's own greedy text-view answers to `problems` (anything with .question)."""
    from cordlite.models.sampling import sample
    from cordlite.objective.step import Tokens

    tokens = Tokens.of(model, processor.tokenizer)
    model.eval()
    out: list[Replay] = []
    for s in range(0, len(problems), batch_size):
        chunk = problems[s : s + batch_size]
        r = sample(model, text_prompts(processor, [p.question for p in chunk], instruction), 1, temperature=1.0,
                   max_new_tokens=max_new_tokens, end_ids=tokens.end_ids, pad_id=tokens.pad_id,
                   blocked_ids=tokens.blocked_ids, greedy=True)
        texts = processor.tokenizer.batch_decode(r.completion_ids, skip_special_tokens=True)
        out += [Replay(p.question, t.strip()) for p, t in zip(chunk, texts)]
    return out


def audio_chain_exact_match(model, processor, clips: EncodedClips, name: str = "chain") -> float:
    """Teacher-forced exact match of the reference chains after the clips' audio-view prompts."""
    end_id, pad_id = end_and_pad(processor)
    model.eval()
    hits = 0
    with torch.no_grad():
        for s in range(0, len(clips), EVAL_BATCH):
            idx = list(range(s, min(s + EVAL_BATCH, len(clips))))
            ids, mask = completion_tensors(processor.tokenizer, [clips.examples[i].answer for i in idx], end_id, pad_id)
            _, _, exact = answer_loss(model, clips.prompt(model, idx, name), ids, mask)
            hits += int(exact.sum())
    return hits / max(1, len(clips))


def align_listen(model, processor, train: EncodedClips, val: EncodedClips | None, text_train: list[Problem],
                 instruction: str, cfg: FitConfig, mix: AlignMix = AlignMix(), progress: bool = True,
                 evaluate: Callable[[], float] | None = None) -> FitResult:
    """Train projector + language model on the mix until val audio-chain exact match >= cfg.target.
    `text_train` holds anything with .question and .answer (problems or examples). `evaluate`
    replaces the stopping metric when given (the ablation control scores the test split with it)."""
    end_id, pad_id = end_and_pad(processor)
    if mix.text_chain and mix.text_targets == "own":
        text_train = own_answers(model, processor, text_train, instruction)
    params = _trainable(model, True)
    tok = processor.tokenizer
    if cfg.batch_size != mix.asr + mix.audio_chain:
        raise ValueError(f"align batch_size {cfg.batch_size} must be mix.asr + mix.audio_chain "
                         f"({mix.asr + mix.audio_chain}): the clips of one step")

    prompts = TextPrompts(processor, instruction)

    def step_loss(indices: list[int], step: int):
        model.train()
        audio_rows = indices  # cfg.batch_size = mix.asr + mix.audio_chain clips
        n_asr = mix.asr
        if step < mix.hearing_steps:  # hearing first: every clip of the step is transcribed
            n_asr = len(indices)
        elif mix.chain_clips:
            chain = batch_indices(min(mix.chain_clips, len(train)), mix.audio_chain, step, cfg.seed + 2)
            audio_rows = indices[: mix.asr] + chain
        text_rows = batch_indices(len(text_train), mix.text_chain, step, cfg.seed + 1) if mix.text_chain else []
        total, stats = 0.0, {}
        parts = (("asr", audio_rows[:n_asr], mix.asr_weight), ("audio_chain", audio_rows[n_asr:],
                                                                mix.audio_chain_weight))
        for kind, rows, weight in parts:
            if not rows or weight == 0:
                continue
            name = "asr" if kind == "asr" else "chain"
            targets = [train.examples[i].question if kind == "asr" else train.examples[i].answer for i in rows]
            ids, mask = completion_tensors(tok, targets, end_id, pad_id)
            loss, s, _ = answer_loss(model, train.prompt(model, rows, name), ids, mask)
            total = total + weight * loss
            stats[kind] = s["loss"]
        if text_rows and mix.text_chain_weight:
            chunk = [text_train[i] for i in text_rows]
            ids, mask = completion_tensors(tok, [p.answer for p in chunk], end_id, pad_id)
            prompt = prompts([p.question for p in chunk])
            loss, s, _ = answer_loss(model, prompt, ids, mask)
            total = total + mix.text_chain_weight * loss
            stats["text_chain"] = s["loss"]
        stats["loss"] = total.item()
        return total, stats

    try:
        metric = evaluate if evaluate is not None else (lambda: audio_chain_exact_match(model, processor, val))
        result = fit(params, step_loss, metric, len(train), cfg, "align", progress)
    finally:
        _trainable(model, False)
    model.eval()
    return result
