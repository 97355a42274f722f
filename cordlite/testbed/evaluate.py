"""Greedy text-view and audio-view accuracy of a testbed model on one split.

    cordlite testbed eval OUT_DIR [--adapter RUN/adapter] [--split test] [--out FILE.json]

Each question is answered twice by the same weights, greedily: from its text (text view) and from
its audio (audio view), with the prompts cordlite trains with (cordlite.data.encode_views) and the
rollout sampler cordlite trains with (cordlite.models.sampling.sample, greedy, audio tokens blocked).
An answer is right when it ends in "The answer is N." with the problem's N (the task's own
checker, cordlite.testbed.task.check_answer); the judge's rule verifier reads the same number.
Accuracies are percentages, gap = text - audio, as in the paper's Table 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from cordlite.data import AudioCache, Example, encode_views
from cordlite.models.audio_view import FrameCache, encoder_is_frozen
from cordlite.testbed.errors import error_counts, heard_problem
from cordlite.testbed.task import check_answer, final_answer


def _answer(model, processor, inputs: dict, max_new_tokens: int, tokens) -> tuple[list[str], list[int], list[bool]]:
    from cordlite.models.sampling import sample

    r = sample(model, inputs, 1, temperature=1.0, max_new_tokens=max_new_tokens, end_ids=tokens.end_ids,
               pad_id=tokens.pad_id, blocked_ids=tokens.blocked_ids, greedy=True)
    texts = processor.tokenizer.batch_decode(r.completion_ids, skip_special_tokens=True)
    return [t.strip() for t in texts], r.completion_mask.sum(dim=1).tolist(), [not bool(f) for f in r.finished]


def evaluate_examples(model, processor, examples: list[Example], instruction: str, batch_size: int = 64,
                      max_new_tokens: int = 64, progress: bool = True, label: str = "eval",
                      frames: FrameCache | None = None,
                      views: tuple[str, ...] = ("text", "audio")) -> tuple[list[dict], dict]:
    """(rows, summary): one row per example and view; summary with accuracies, gap, lengths and
    error kinds (a view left out of `views` has accuracy None). `frames` reuses the encoder's frames of clips it has seen, when the encoder is
    frozen (cordlite.models.audio_view.FrameCache: the same numbers, one encoder pass per clip
    over several evaluations)."""
    from cordlite.objective.step import Tokens

    tokens = Tokens.of(model, processor.tokenizer)
    model.eval()
    cache = AudioCache()
    rows: list[dict] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for chunk in _chunks(examples, batch_size, progress, label, "questions", t0):
            batch = encode_views(processor, chunk, cache, instruction, frame_counts=_counts(model, frames))
            audio = _audio_inputs(model, chunk, batch.audio, frames)
            for view, inputs in (("text", batch.text), ("audio", audio)):
                if view not in views:
                    continue
                texts, lengths, truncated = _answer(model, processor, inputs, max_new_tokens, tokens)
                for ex, text, n, tr in zip(chunk, texts, lengths, truncated):
                    final = int(ex.meta["final"])
                    rows.append({"id": ex.id, "view": view, "response": text, "predicted": final_answer(text),
                                 "final": final, "correct": check_answer(text, final), "n_tokens": int(n),
                                 "truncated": tr, "template": ex.meta.get("template"), "voice": ex.meta.get("voice")})
    cache._cache.clear()
    summary = summarize(rows, time.perf_counter() - t0)
    references = {ex.id: ex.answer for ex in examples}
    for view in ("text", "audio"):
        summary[f"{view}_errors"] = error_counts(rows, references, view)
    return rows, summary


def _chunks(examples: list[Example], batch_size: int, progress: bool, label: str, unit: str, t0: float):
    """The examples in batches; after each, a progress line when `progress`."""
    for start in range(0, len(examples), batch_size):
        yield examples[start : start + batch_size]
        if progress:
            print(f"  [{label}] {min(start + batch_size, len(examples))}/{len(examples)} {unit}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)


def _counts(model, frames: FrameCache | None) -> dict[str, int] | None:
    """The frame counts of the clips `frames` holds, when they may be used (a frozen encoder)."""
    return frames.counts() if frames is not None and encoder_is_frozen(model) else None


def _audio_inputs(model, chunk: list[Example], audio: dict, frames: FrameCache | None) -> dict:
    if frames is None or not encoder_is_frozen(model):
        return audio
    return frames.prompt(model, [ex.id for ex in chunk], audio)


def hearing_probe(model, processor, examples: list[Example], asr_instruction: str, batch_size: int = 64,
                  max_new_tokens: int = 64, progress: bool = True, label: str = "hearing",
                  frames: FrameCache | None = None) -> tuple[list[dict], dict]:
    """What the audio view hears: each clip transcribed by the model itself (audio view + the
    alignment's ASR instruction, greedy), and whether every number the question says is in it
    (cordlite.testbed.hearing), and whether it states the question's problem (errors.heard_problem:
    the same numbers and operations). Returns (rows, summary: `problem`, `numbers` and `exact`
    transcripts in percent)."""
    from cordlite.objective.step import Tokens
    from cordlite.testbed.hearing import heard_numbers, written_numbers

    tokens = Tokens.of(model, processor.tokenizer)
    model.eval()
    cache = AudioCache()
    rows: list[dict] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for chunk in _chunks(examples, batch_size, progress, label, "clips", t0):
            views = encode_views(processor, chunk, cache, asr_instruction, frame_counts=_counts(model, frames))
            inputs = _audio_inputs(model, chunk, views.audio, frames)
            texts, _, _ = _answer(model, processor, inputs, max_new_tokens, tokens)
            for ex, text in zip(chunk, texts):
                rows.append({"id": ex.id, "question": ex.question, "heard": text,
                             "problem": heard_problem(text, ex.question),
                             "numbers": heard_numbers(text, written_numbers(ex.question)),
                             "exact": text.strip() == ex.question.strip(), "voice": ex.meta.get("voice")})
    n = len(rows)

    def pct(key: str) -> float | None:
        return 100.0 * sum(r[key] for r in rows) / n if n else None

    return rows, {"n": n, "problem": pct("problem"), "numbers": pct("numbers"), "exact": pct("exact"),
                  "seconds": round(time.perf_counter() - t0, 1)}


def summarize(rows: list[dict], seconds: float | None = None) -> dict:
    out: dict = {}
    for view in ("text", "audio"):
        mine = [r for r in rows if r["view"] == view]
        n = len(mine)
        out[f"{view}_acc"] = 100.0 * sum(r["correct"] for r in mine) / n if n else None
        out[f"{view}_tokens_mean"] = sum(r["n_tokens"] for r in mine) / n if n else None
        out[f"{view}_truncated"] = sum(r["truncated"] for r in mine)
    out["n"] = len({r["id"] for r in rows})
    both_views = out["n"] and out["text_acc"] is not None and out["audio_acc"] is not None
    out["gap"] = out["text_acc"] - out["audio_acc"] if both_views else None
    both = {}
    for r in rows:
        both.setdefault(r["id"], {})[r["view"]] = r["correct"]
    out["audio_right_text_wrong"] = sum(1 for v in both.values() if v.get("audio") and not v.get("text"))
    if seconds is not None:
        out["seconds"] = round(seconds, 1)
    return out


def load_for_eval(model_dir: str | Path, adapter: str | Path | None = None):
    """(model, processor) of a built testbed, with a trained LoRA adapter on when given."""
    from cordlite.testbed.stages import load_checkpoint

    model, processor = load_checkpoint(model_dir)
    model.requires_grad_(False)  # nothing trains here: a frozen encoder's frames can be reused (FrameCache)
    if adapter is not None:
        from peft import PeftModel

        from cordlite.models.lora import peft_wrapping

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--adapter {adapter}: no adapter_config.json there; pass RUN/adapter or "
                                    "RUN/checkpoints/step_N/adapter")
        with peft_wrapping():
            model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return model, processor


def write_eval(path: Path, rows: list[dict], summary: dict, meta: dict) -> None:
    """summary JSON at `path`, the per-answer rows next to it as <stem>_responses.jsonl (both atomic)."""
    from cordlite.files import write_jsonl_atomic, write_text_atomic

    write_jsonl_atomic(path.with_name(f"{path.stem}_responses.jsonl"), rows)
    write_text_atomic(path, json.dumps({**meta, **summary}, indent=2) + "\n")


def testbed_instruction(testbed_dir: str | Path) -> str:
    """The instruction the testbed was built with (every prompt must use it)."""
    meta_path = Path(testbed_dir) / "model" / "testbed.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{testbed_dir}: no built testbed there ({meta_path} missing); run "
                                f"`cordlite testbed build {testbed_dir}` first")
    return json.loads(meta_path.read_text(encoding="utf-8"))["instruction"]


def run_eval(testbed_dir: str | Path, adapter: str | None = None, split: str = "test", out: str | None = None,
             batch_size: int = 64, max_new_tokens: int = 64, progress: bool = True) -> tuple[Path, dict]:
    """Evaluate the built testbed (optionally with a trained adapter: a run directory or its adapter)
    on one split; returns the summary path and the summary. Default path: the base's in the build
    (TESTBED_DIR/eval/base_<split>.json), an adapter's in its run (RUN/eval_<split>.json; a
    checkpoint's RUN/eval_<split>_step_N.json), never the build's folder."""
    from cordlite.data import read_manifest
    from cordlite.models.adapter import AdapterError, locate_adapter, trained_prompt, training_recipe
    from cordlite.testbed.frames import eval_frames

    root = Path(testbed_dir)
    instruction = testbed_instruction(root)
    default_path = root / "eval" / f"base_{split}.json"
    if adapter is not None:
        try:
            adapter_dir, run_dir = locate_adapter(adapter)
        except AdapterError as e:
            raise ValueError(f"--adapter {e}") from None
        adapter = str(adapter_dir)
        step = adapter_dir.parent.name if adapter_dir.parent.name.startswith("step_") else None
        default_path = (run_dir or adapter_dir.parent) / (f"eval_{split}_{step}.json" if step else f"eval_{split}.json")
        trained = trained_prompt(training_recipe(adapter_dir, run_dir), str(run_dir or adapter_dir))
        if trained is not None and trained.instruction != instruction:
            raise ValueError(f"{trained.source}: data.instruction {trained.instruction!r} differs from the testbed's "
                             f"{instruction!r}; train with the testbed's instruction")
    manifest = root / "data" / f"{split}.jsonl"
    examples = read_manifest(manifest)
    model, processor = load_for_eval(root / "model", adapter)
    frames = eval_frames(root, split, model, processor, progress)
    rows, summary = evaluate_examples(model, processor, examples, instruction, batch_size, max_new_tokens,
                                      progress, label=f"eval {split}", frames=frames)
    path = Path(out) if out else default_path
    write_eval(path, rows, summary, {"model": str(root / "model"), "adapter": adapter, "split": split,
                                     "manifest": str(manifest)})
    return path, summary
