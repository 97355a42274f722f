"""Audio-vs-text accuracy on a manifest: the gap, and how much of it a trained run closed.

    cordlite eval MANIFEST --recipe RECIPE --out runs/eval_base      # the base, prompted as RECIPE trains
    cordlite eval MANIFEST --adapter runs/cord --out runs/eval_cord \\
        --baseline runs/eval_base/summary.json

The prompt and the answer length are those the model was trained with, unless given
(`--instruction`, `--system-prompt`, `--max-new-tokens`): read from the adapter's metadata (or its
run's config.yaml), else from `--recipe`, else from the prompt cordlite merge recorded with a
merged checkpoint. summary.json says which was used and where it came from, and a `--baseline`
made with another prompt, decoding or answer length is refused (`--allow-baseline-mismatch`
compares anyway, with the differences listed as warnings).

Every item is answered twice by the same model: from its audio (audio view) and from its text
(text view: the same chat template with the question text where the audio was). Decoding is
greedy by default and seeded. Each answer is scored against the manifest's `answer` by the
verifiers (`--judge rules`) or the LLM judge (`llm`, `rules_then_llm`; `--judge-model self` is the
base in text mode, adapters off). Writes into OUT:

  responses.jsonl  one line per item and modality, appended batch by batch: a rerun with the same
                   settings continues where it stopped (run.json records them)
  summary.json     text/audio accuracy, gap, per subset and averaged, decoding settings, counts,
                   and with --baseline the gap reduction (cordlite.eval.summary, cordlite.eval.gap)
  summary.md       the same as Markdown tables
  accuracy.png     bars per subset
Subsets are the values of a manifest field (`--subset-field`, default `source`).

Two manifest fields shape scoring (the presets of data_tools.presets write them):
  extraction  a benchmark's own answer rule (cordlite.judge.conventions.convention_score:
              voicebench_mcq, gsm8k, mmau) used instead of the judge, so numbers compare with published ones
  text_view   false for audio-only items (MMAU): only the audio view is answered; the subset reports
              audio accuracy alone and stays out of the gap and the gap reduction
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from cordlite.eval.io import EvalError, check_run_file, load_eval_model, resolve_model, resolve_prompt
from cordlite.eval.summary import baseline_mismatch, baseline_report, load_baseline, summarize, write_outputs
from cordlite.files import append_jsonl, read_jsonl
from cordlite.judge.conventions import EXTRACTION_MODES, convention_score
from cordlite.judge.verify import LETTERS, describe, extract_final_answer, has_final_answer
from cordlite.lock import writer_lock


@dataclass(frozen=True)
class EvalSettings:
    manifest: str
    out: str
    model: str = ""  # base or merged checkpoint; "" = the base recorded with --adapter (or --recipe's model)
    adapter: str | None = None  # an adapter directory or the run directory holding adapter/
    quantization: str = "none"
    device: str = "auto"
    instruction: str | None = None  # None: as trained (resolve_prompt), else "" with a note
    system_prompt: str | None = None  # None: as trained, else the chat template's
    max_new_tokens: int | None = None  # None: the trained rollout.max_new_tokens, else DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 32
    judge: str = "rules"
    judge_model: str = "self"
    judge_quantization: str = "none"
    subset_field: str = "source"
    limit: int | None = None
    baseline: str | None = None
    overwrite: bool = False
    progress: bool = True
    recipe: str | None = None  # a training recipe: its model, instruction, system prompt and max_new_tokens
    allow_baseline_mismatch: bool = False


# Settings a resumed run must share with the lines already in responses.jsonl.
RESUME_KEYS = ("manifest", "model", "adapter", "quantization", "instruction", "system_prompt", "max_new_tokens",
               "temperature", "top_p", "seed", "batch_size", "judge", "judge_model", "judge_quantization")


# --------------------------------------------------------------------------- eval


def reference_for(ex) -> str:
    """Ground truth as the judge sees it: an option letter gets its option text ("B. Rome")."""
    truth = ex.answer.strip()
    if ex.choices and len(truth) == 1 and truth.upper() in LETTERS[: len(ex.choices)]:
        return f"{truth.upper()}. {ex.choices[LETTERS.index(truth.upper())]}"
    return truth


def subset_of(ex, field: str) -> str:
    value = ex.meta.get(field)
    return "all" if value is None or value == "" else str(value)


def extraction_of(ex) -> str:
    """The answer rule of an item: its manifest `extraction`, else the judge ("cordlite")."""
    return ex.meta.get("extraction") or "cordlite"


def modalities_of(ex) -> tuple[str, ...]:
    from cordlite.data import has_text_view

    return ("audio", "text") if has_text_view(ex) else ("audio",)


def _rows_of(inputs: dict, rows: list[int]) -> dict:
    """Rows of a left-padded text batch, without the columns that are padding in all of them."""
    import torch

    index = torch.tensor(rows)
    out = {k: v.index_select(0, index) for k, v in inputs.items()}
    first = int(out["attention_mask"].any(dim=0).long().argmax())
    return {k: v[:, first:] for k, v in out.items()}


def _answer_batch(net, processor, views, s: EvalSettings, tokens,
                  embed_audio: bool = True) -> dict[str, tuple[list[int], list[str], list[int], list[bool]]]:
    """Per view: (batch rows answered, texts, token counts, truncated); audio-only items get no text row.
    `embed_audio`: the audio view as merged embeddings (cordlite.models.audio_view.merged_audio_prompt;
    False: its features to generate(), the slow way to the same answers)."""
    import torch

    from cordlite.data import has_text_view
    from cordlite.models.audio_view import merged_audio_prompt
    from cordlite.models.sampling import sample

    out = {}
    greedy = s.temperature == 0
    everyone = list(range(len(views.examples)))
    with_text = [i for i, ex in enumerate(views.examples) if has_text_view(ex)]
    text_inputs = views.text if len(with_text) == len(everyone) or not with_text else _rows_of(views.text, with_text)
    for modality, inputs, rows in (("audio", views.audio, everyone), ("text", text_inputs, with_text)):
        if not rows:
            continue
        with torch.no_grad():
            if modality == "audio" and embed_audio:
                inputs = merged_audio_prompt(net, inputs)
            r = sample(net, inputs, 1, temperature=s.temperature if not greedy else 1.0,
                       max_new_tokens=s.max_new_tokens, end_ids=tokens[0], pad_id=tokens[1], blocked_ids=tokens[2],
                       top_p=s.top_p, greedy=greedy)
        texts = processor.tokenizer.batch_decode(r.completion_ids, skip_special_tokens=True)
        out[modality] = (rows, [t.strip() for t in texts], r.completion_mask.sum(dim=1).tolist(),
                         [not bool(f) for f in r.finished])
    return out


def _score(judge, exs: list, modality: str, texts: list[str], truncated: list[bool]) -> list[tuple[bool, str, dict]]:
    """(correct, judged_by, extra row fields) per answer: the benchmark's rule where the item names
    one, the judge for the rest."""
    from cordlite.judge.rewards import JudgeItem

    out: list = [None] * len(exs)
    by_judge = [i for i, ex in enumerate(exs) if extraction_of(ex) == "cordlite"]
    verdicts, _ = judge.decide([JudgeItem(exs[i].question, texts[i], reference_for(exs[i]), exs[i].choices,
                                          truncated[i]) for i in by_judge])
    for i, v in zip(by_judge, verdicts):
        ex = exs[i]
        out[i] = (v.same, v.by, {"extracted": describe(extract_final_answer(texts[i], ex.choices)),
                                 "has_final_answer": has_final_answer(texts[i], ex.choices, truncated[i]),
                                 "judge_reply": v.reply, "judge_unparseable": v.unparseable, "judge_cached": v.cached})
    for i, ex in enumerate(exs):
        if out[i] is None:
            c = convention_score(extraction_of(ex), texts[i], ex.answer, ex.choices, guess_key=f"{ex.id}:{modality}")
            out[i] = (c.correct, extraction_of(ex), {"extracted": c.extracted, "guessed": c.guessed,
                                                     "has_final_answer": c.extracted is not None and not c.guessed,
                                                     "judge_reply": None, "judge_unparseable": False,
                                                     "judge_cached": False})
    return out


def _generate_missing(s: EvalSettings, model_path: str, examples: list, done: set[str], responses: Path) -> None:
    import torch

    from cordlite.config import JudgeConfig
    from cordlite.data import AudioCache, encode_views
    from cordlite.judge.rewards import build_judge
    from cordlite.models.tokens import audio_special_token_ids, end_token_ids

    todo = [(i, ex) for i, ex in enumerate(examples) if ex.id not in done]
    if not todo:
        return
    net, processor, rt = load_eval_model(model_path, s.adapter, s.quantization, s.device)
    tok = processor.tokenizer
    end = end_token_ids(net, tok)
    tokens = (end, tok.pad_token_id if tok.pad_token_id is not None else end[-1], audio_special_token_ids(tok))
    judge = build_judge(JudgeConfig(mode=s.judge, model=s.judge_model, quantization=s.judge_quantization), net, tok,
                        rt, base_id=f"{model_path}|{s.quantization}", cache_path=Path(s.out) / "judge_cache.jsonl")
    audio_cache = AudioCache()
    bar = None
    if s.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="eval", unit="item", file=sys.stderr)
    for start in range(0, len(todo), s.batch_size):
        chunk = todo[start : start + s.batch_size]
        exs = [ex for _, ex in chunk]
        torch.manual_seed(s.seed * 1_000_003 + chunk[0][0])  # per batch, by manifest position: resumable
        views = encode_views(processor, exs, audio_cache, s.instruction, s.system_prompt).to(rt.device)
        answers = _answer_batch(net, processor, views, s, tokens)
        rows = []
        for modality, (idx, texts, lengths, truncated) in answers.items():
            answered = [exs[i] for i in idx]
            scores = _score(judge, answered, modality, texts, truncated)
            for ex, t, n, tr, (correct, by, extra) in zip(answered, texts, lengths, truncated, scores):
                rows.append({
                    "id": ex.id, "modality": modality, "subset": subset_of(ex, s.subset_field),
                    "question": ex.question, "answer": ex.answer, "choices": ex.choices, "response": t,
                    "correct": correct, "judged_by": by, **extra, "n_tokens": int(n), "truncated": tr,
                })
        append_jsonl(responses, rows)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()


def run_eval(s: EvalSettings) -> dict:
    """Answer, score and summarise; returns the summary (also written to OUT/summary.json)."""
    with writer_lock(s.out, "cordlite eval", fix="pass another --out"):
        from cordlite.data import AudioCache, check_clips, clip_problems_message, read_manifest

        if s.batch_size < 1 or (s.max_new_tokens is not None and s.max_new_tokens < 1) or s.temperature < 0 \
                or not 0 < s.top_p <= 1:
            raise EvalError("--batch-size and --max-new-tokens must be >= 1, --temperature >= 0 (0 = greedy), "
                            "--top-p in (0, 1]")
        examples = read_manifest(s.manifest)
        unlabelled = [ex.id for ex in examples if ex.answer is None or not ex.answer.strip()]
        if unlabelled:
            raise EvalError(f"{s.manifest}: {len(unlabelled)} row(s) have no `answer` (first: {unlabelled[:3]}); "
                            "eval scores against ground truth, so add answers or drop those rows")
        bad = [(ex.id, extraction_of(ex)) for ex in examples if extraction_of(ex) not in EXTRACTION_MODES]
        if bad:
            raise EvalError(f"{s.manifest}: row {bad[0][0]!r} has extraction {bad[0][1]!r} ({len(bad)} row(s) in all); "
                            f"use one of {', '.join(EXTRACTION_MODES)} or drop the field (the judge decides)")
        s, origin = resolve_prompt(s)
        if origin["instruction"] == "none recorded" and s.progress:
            print(f"note: no training prompt is recorded for {s.model or s.adapter}: answering with no instruction "
                  "after the question; pass --recipe RECIPE or --instruction TEXT as in training", file=sys.stderr)
        if s.limit is not None:
            examples = examples[: s.limit]
        clips = check_clips(examples, AudioCache().max_seconds, limit="the audio window")  # headers only: every bad clip before the model loads
        if clips.problems:
            raise EvalError(clip_problems_message(Path(s.manifest), clips.problems))
        for note in clips.notes():
            print(f"note: {s.manifest}: {note}", file=sys.stderr)
        model_path = resolve_model(s.model, s.adapter)
        settings = {**dataclasses.asdict(s), "model": model_path}
        baseline = load_baseline(s.baseline) if s.baseline else None
        mismatch = baseline_mismatch(baseline, settings) if baseline is not None else []
        if mismatch and not s.allow_baseline_mismatch:  # before any answer: the comparison would mean nothing
            raise EvalError(f"--baseline {s.baseline} was made with other settings ({'; '.join(mismatch)}): its gap "
                            "is not comparable with this run's. Evaluate both with the same prompt and decoding (an "
                            "adapter's eval takes its training prompt; give the base eval --recipe RECIPE), or pass "
                            "--allow-baseline-mismatch to compare anyway")
        out = Path(s.out)
        out.mkdir(parents=True, exist_ok=True)
        check_run_file(out, settings, RESUME_KEYS, "responses.jsonl", s.overwrite)
        responses = out / "responses.jsonl"
        by_key = {(r.get("id"), r.get("modality")): r for r in read_jsonl(responses)}
        done = {ex.id for ex in examples if all((ex.id, m) in by_key for m in modalities_of(ex))}
        _generate_missing(s, model_path, examples, done, responses)
        by_key = {(r.get("id"), r.get("modality")): r for r in read_jsonl(responses)}
        rows = [by_key[(ex.id, m)] for ex in examples for m in modalities_of(ex)]
        subsets = {ex.id: subset_of(ex, s.subset_field) for ex in examples}
        summary = summarize(rows, subsets, settings, origin)
        if baseline is not None:
            summary["baseline"] = baseline_report(baseline, summary, s.baseline)
        write_outputs(out, summary)
        if s.adapter:
            _report_to_run(s.adapter, summary)
        return summary


def _report_to_run(adapter: str, summary: dict) -> None:
    """An adapter's evaluation, sent to the trackers its run reports to (output.report_to), at its step."""
    from cordlite.models.adapter import adapter_metadata, locate_adapter, training_recipe
    from cordlite.tracking import report_eval

    adapter_dir, run_dir = locate_adapter(adapter)
    recipe = training_recipe(adapter_dir, run_dir)
    if run_dir is None or recipe is None:
        return
    meta = adapter_metadata(adapter_dir)
    step = meta.get("steps", meta.get("step"))
    names = report_eval(run_dir, recipe, step if isinstance(step, int) else 0, summary)
    if names:
        print(f"note: the summary also went to {', '.join(names)} (the run's output.report_to)", file=sys.stderr)
