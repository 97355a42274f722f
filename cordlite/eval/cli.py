"""`cordlite eval`, `cordlite diagnose` and `cordlite judge-check`: the commands that measure.

    cordlite eval data/eval/manifest.jsonl --recipe recipes/qwen2audio_lora.yaml --out runs/eval_base
    cordlite eval data/eval/manifest.jsonl --adapter runs/qwen2audio_cord --out runs/eval_cord \
        --baseline runs/eval_base/summary.json
    cordlite diagnose data/eval/manifest.jsonl --recipe recipes/qwen2audio_lora.yaml --out runs/diagnose
    cordlite judge-check pairs.jsonl --model self --out runs/judge_check

Each parses its options and calls one function; only click is imported at module level, so
`cordlite --help` stays instant.
"""

from __future__ import annotations

import click

from cordlite.cli_common import fail


def _eval_errors() -> tuple[type[BaseException], ...]:
    from cordlite.audio import AudioError
    from cordlite.data import ManifestError
    from cordlite.eval.io import EvalError
    from cordlite.judge.llm import JudgeError
    from cordlite.models.adapter import AdapterBaseMismatch, AdapterError
    from cordlite.models.runtime import ModelLoadError

    return (EvalError, ManifestError, AudioError, ModelLoadError, JudgeError, AdapterError, AdapterBaseMismatch)


_model_options = [
    click.option("--model", "model_path", default="", help="Base or merged checkpoint of a supported family (directory "
                 "or hub id; docs/models.md); default: the base recorded with --adapter, else --recipe's model."),
    click.option("--adapter", default=None, type=click.Path(file_okay=False),
                 help="A run directory or its adapter (RUN, RUN/adapter, RUN/checkpoints/step_N/adapter): evaluated "
                      "with the prompt and answer length it was trained with."),
    click.option("--recipe", default=None, type=click.Path(dir_okay=False),
                 help="A training recipe: its model, instruction, system prompt and rollout.max_new_tokens (for "
                      "the base's eval, so it is prompted as training prompts)."),
    click.option("--quantization", type=click.Choice(["none", "nf4", "int8"]), default="none", show_default=True,
                 help="Weights of the language model (nf4 = like a QLoRA training base)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--instruction", default=None, help="Text after the question/audio in the user turn [default: the "
                 "one the model was trained with, from --adapter, --recipe or a merged model; else none]."),
    click.option("--system-prompt", default=None, help="System message [default: as trained, else the chat "
                 "template's]."),
    click.option("--seed", default=0, show_default=True, help="Seed of every batch (resumable)."),
    click.option("--overwrite", is_flag=True, help="Start afresh in --out instead of continuing a run there."),
]


def _with_model_options(f):
    for opt in reversed(_model_options):
        f = opt(f)
    return f


@click.command("eval")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@_with_model_options
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Answer length limit [default: the trained rollout.max_new_tokens; else 200].")
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy (default).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling when --temperature > 0.")
@click.option("--batch-size", default=32, show_default=True, help="Questions per batch (each generate call is "
              "sized by the memory it may hold; see docs/evaluation.md).")
@click.option("--judge", "judge_mode", type=click.Choice(["rules", "llm", "rules_then_llm"]), default="rules",
              show_default=True, help="How answers are scored against the manifest's `answer`.")
@click.option("--judge-model", default="self", show_default=True,
              help="LLM judge: self (the base in text mode) or a chat model's path / hub id.")
@click.option("--judge-quantization", type=click.Choice(["none", "nf4", "int8"]), default="none", show_default=True)
@click.option("--subset-field", default="source", show_default=True, help="Manifest field that names an item's subset.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N items.")
@click.option("--baseline", default=None, type=click.Path(dir_okay=False),
              help="summary.json of the base model's eval: adds the gap reduction (refused when made with "
                   "another prompt, decoding or answer length).")
@click.option("--allow-baseline-mismatch", is_flag=True,
              help="Compare with a --baseline made with other settings anyway (the differences are listed).")
def eval_cmd(manifest: str, out: str, model_path: str, adapter: str | None, recipe: str | None, quantization: str,
             device: str, instruction: str | None, system_prompt: str | None, seed: int, overwrite: bool,
             max_new_tokens: int | None, temperature: float, top_p: float, batch_size: int, judge_mode: str,
             judge_model: str, judge_quantization: str, subset_field: str, limit: int | None, baseline: str | None,
             allow_baseline_mismatch: bool) -> None:
    """Answer every item of MANIFEST from audio and from text; write accuracies, gap and gap reduction."""
    from cordlite.eval.evaluate import EvalSettings, run_eval

    s = EvalSettings(manifest=manifest, out=out, model=model_path, adapter=adapter, quantization=quantization,
                     device=device, instruction=instruction, system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size, judge=judge_mode,
                     judge_model=judge_model, judge_quantization=judge_quantization, subset_field=subset_field,
                     limit=limit, baseline=baseline, overwrite=overwrite, recipe=recipe,
                     allow_baseline_mismatch=allow_baseline_mismatch)
    try:
        summary = run_eval(s)
    except _eval_errors() as e:
        fail(str(e), 1)
    def num(x: float | None, unit: str = "") -> str:
        return "-" if x is None else f"{x:.2f}{unit}"  # None: no text view (audio-only items)

    line = (f"text {num(summary['text_acc'], '%')}  audio {num(summary['audio_acc'], '%')}  "
            f"gap (text - audio) {num(summary['gap'])} points")
    b = summary.get("baseline")
    if b and b["gap_reduction"] is not None:
        line += (f"  gap reduction {100 * b['gap_reduction']:.1f}% (average gap against the base text view: "
                 f"base {b['avg_gap_base']:.2f} -> this run {b['avg_gap_method']:.2f})")
    elif b:
        line += f"  gap reduction undefined (base average gap {b['avg_gap_base']:.2f} is not positive)"
    for w in (b or {}).get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    prompt = summary["prompt"]["instruction"]
    click.echo(f"{line}\nprompt: instruction {prompt!r} ({summary['settings_from'].get('instruction')}), "
               f"max_new_tokens {summary['decoding']['max_new_tokens']} ({summary['settings_from'].get('max_new_tokens')})"
               f"\nwritten: {out}/summary.json, summary.md, responses.jsonl, accuracy.png")


@click.command("judge-check")
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["rules", "llm", "rules_then_llm"]), default="llm", show_default=True)
@click.option("--model", "model_path", default="", help="Judge model: a chat LM, or an audio chat model (a supported family) in text mode.")
@click.option("--quantization", type=click.Choice(["none", "nf4", "int8"]), default="none", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--max-new-tokens", default=16, show_default=True)
@click.option("--cache", default=None, help="Verdict cache JSONL (default: OUT/judge_cache.jsonl with --out).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Write judge_check.json/.md, verdicts.jsonl.")
def judge_check(pairs: str, mode: str, model_path: str, quantization: str, device: str, batch_size: int,
                max_new_tokens: int, cache: str | None, out: str | None) -> None:
    """Agreement of the judge with the labelled pairs in PAIRS (JSONL): accuracy and confusion counts."""
    from cordlite.judge.check import JudgeCheckSettings, run_judge_check

    if batch_size < 1 or max_new_tokens < 1:
        fail("--batch-size and --max-new-tokens must be >= 1")
    s = JudgeCheckSettings(pairs=pairs, mode=mode, model=model_path, quantization=quantization, device=device,
                           batch_size=batch_size, max_new_tokens=max_new_tokens, cache=cache, out=out)
    from contextlib import nullcontext

    from cordlite.lock import writer_lock

    try:
        with writer_lock(out, "cordlite judge-check", fix="pass another --out") if out else nullcontext():
            r = run_judge_check(s)
    except _eval_errors() as e:
        fail(str(e), 1)
    acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
    click.echo(f"{r['n']} pairs: accuracy {acc}  tp {r['tp']}  fp {r['fp']}  fn {r['fn']}  tn {r['tn']}  "
               f"unparseable {r['unparseable']}" + (f"\nwritten: {out}/judge_check.json, judge_check.md" if out else ""))


@click.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@_with_model_options
@click.option("--limit", type=click.IntRange(min=1), default=32, show_default=True, help="Items to roll out.")
@click.option("--rollouts", default=1, show_default=True, help="Audio rollouts per item.")
@click.option("--temperature", default=1.0, show_default=True, help="Sampling temperature of the rollouts (CORD: 1.0).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Rollout length limit [default: the trained rollout.max_new_tokens; else 200].")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--chunk-size", default=64, show_default=True, help="Positions per full-vocabulary log-softmax chunk.")
@click.option("--top", default=20, show_default=True, help="Rows of the top-divergence tables.")
@click.option("--strip", default=None, help="Item id drawn as the heat strip (default: the first item).")
def diagnose(manifest: str, out: str, model_path: str, adapter: str | None, recipe: str | None, quantization: str,
             device: str, instruction: str | None, system_prompt: str | None, seed: int, overwrite: bool, limit: int,
             rollouts: int, temperature: float, max_new_tokens: int | None, batch_size: int, chunk_size: int, top: int,
             strip: str | None) -> None:
    """Per-token reverse KL (audio view vs text view) along audio rollouts: where the gap lives."""
    from cordlite.eval.diagnose import DiagnoseSettings, run_diagnose

    s = DiagnoseSettings(manifest=manifest, out=out, model=model_path, adapter=adapter, quantization=quantization,
                         device=device, instruction=instruction, system_prompt=system_prompt, limit=limit,
                         rollouts=rollouts, temperature=temperature, max_new_tokens=max_new_tokens,
                         batch_size=batch_size, seed=seed, chunk_size=chunk_size, top=top, strip=strip,
                         overwrite=overwrite, recipe=recipe)
    try:
        r = run_diagnose(s)
    except _eval_errors() as e:
        fail(str(e), 1)
    corr = r["pearson_relative_position"]
    click.echo(f"{r['n_tokens']} tokens in {r['n_rollouts']} rollouts: mean D_t {r['mean']:.4f}, p80 {r['p80']:.4f}, "
               f"corr(position) {'-' if corr is None else f'{corr:.3f}'}\nwritten: {out}/diagnose.json, diagnose.md, "
               "kl_histogram.png, heat_strip.png, rollouts.jsonl")
