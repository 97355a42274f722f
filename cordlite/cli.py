"""The `cordlite` command: parses arguments, loads the config, calls one function. No logic here.

Heavy imports (torch, transformers) happen inside commands, so `cordlite --help` is instant.
"""

from __future__ import annotations

import os
import sys

import click

from cordlite.config import ConfigError


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _recipe(path: str, overrides: tuple[str, ...], check_paths: bool = True):
    from cordlite.config import load_recipe

    try:
        return load_recipe(path, overrides, check_paths=check_paths)
    except ConfigError as e:
        _fail(str(e))


overrides_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                                help="Override a recipe field, e.g. --set train.max_steps=10 (repeatable).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cordlite")
def main() -> None:
    """cordlite: close the audio-text gap of audio language models with CORD."""


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in output.dir.")
@click.option("--num-processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine, started through accelerate launch.")
def train(recipe: str, overrides: tuple[str, ...], resume: bool, num_processes: int) -> None:
    """Train with CORD as RECIPE says; writes config.yaml, metrics.jsonl, checkpoints/ and adapter/."""
    cfg = _recipe(recipe, overrides)
    if num_processes > 1 and "WORLD_SIZE" not in os.environ:
        from cordlite.distributed import launch

        argv = ["train", recipe, *(a for kv in overrides for a in ("--set", kv)), *(["--resume"] if resume else [])]
        sys.exit(launch(num_processes, argv))
    from cordlite.audio import AudioError
    from cordlite.data import ManifestError
    from cordlite.models import ModelLoadError
    from cordlite.trainer import TrainError, train as run

    try:
        run_dir = run(cfg, resume=resume)
    except (TrainError, ManifestError, AudioError, ModelLoadError) as e:
        _fail(str(e), 1)
    click.echo(f"done: adapter in {run_dir / 'adapter'}, metrics in {run_dir / 'metrics.jsonl'}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
@click.option("--no-check-paths", is_flag=True, help="Check fields only, not that the model and data paths exist.")
def validate(recipe: str, overrides: tuple[str, ...], no_check_paths: bool) -> None:
    """Check RECIPE; exit 0 when valid, else list every problem."""
    _recipe(recipe, overrides, check_paths=not no_check_paths)
    click.echo(f"{recipe}: ok")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
def show(recipe: str, overrides: tuple[str, ...]) -> None:
    """Print RECIPE fully resolved (defaults and overrides applied) as YAML."""
    from cordlite.config import dump_recipe

    click.echo(dump_recipe(_recipe(recipe, overrides, check_paths=False)), nl=False)


@main.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing tiny model directory.")
def tiny_model(out_dir: str, overwrite: bool) -> None:
    """Build a tiny random-init Qwen2-Audio with its processor in OUT_DIR (offline, seconds)."""
    from cordlite.tiny_model import build_tiny_qwen2audio, ensure_tiny_qwen2audio

    path = build_tiny_qwen2audio(out_dir, overwrite=True) if overwrite else ensure_tiny_qwen2audio(out_dir)
    click.echo(f"tiny Qwen2-Audio in {path}")


@main.command("tiny-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n", "n_questions", default=48, show_default=True, help="Number of spoken questions.")
@click.option("--seed", default=0, show_default=True)
def tiny_data(out_dir: str, n_questions: int, seed: int) -> None:
    """Voice a small set of arithmetic and multiple-choice questions with espeak-ng into OUT_DIR."""
    from data_tools.tiny_spoken import make_tiny_spoken_set

    click.echo(f"manifest: {make_tiny_spoken_set(out_dir, n_questions=n_questions, seed=seed)}")


def _deploy_errors() -> tuple[type[BaseException], ...]:
    from cordlite.audio import AudioError
    from cordlite.data import ManifestError
    from cordlite.merge import MergeError
    from cordlite.models import AdapterBaseMismatch, ModelLoadError

    return (MergeError, AdapterBaseMismatch, ModelLoadError, AudioError, ManifestError, FileNotFoundError)


@main.command()
@click.argument("source", metavar="RUN_OR_ADAPTER")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to export to.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float32"]), default="bfloat16", show_default=True,
              help="Precision the base is reloaded, merged and saved in (never 4-bit).")
@click.option("--quantize", type=click.Choice(["none", "nf4"]), default="none", show_default=True,
              help="nf4: save the merged model re-quantised to 4 bit (bitsandbytes) for small-memory serving.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty DIR.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--base", default=None, help="Base checkpoint to merge into (default: the one recorded with the adapter).")
@click.option("--allow-base-mismatch", is_flag=True, help="Merge even if --base differs from the recorded base.")
@click.option("--check-items", default=4, show_default=True, help="Items of the merge check (0 skips it).")
@click.option("--check-manifest", default=None, help="Manifest for the check (default: the run's; else synthetic audio).")
@click.option("--check-tokens", default=16, show_default=True, help="Greedy tokens per check item.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard.")
@click.option("--allow-check-failure", is_flag=True, help="Export even when the merge check fails (the card says so).")
@click.option("--eval-summary", multiple=True, help="A `cordlite eval` summary.json for the model card (repeatable; "
              "RUN/eval*/summary.json are found on their own).")
def merge(source: str, out_dir: str, dtype: str, quantize: str, overwrite: bool, device: str, base: str | None,
          allow_base_mismatch: bool, check_items: int, check_manifest: str | None, check_tokens: int,
          max_shard_size: str, allow_check_failure: bool, eval_summary: tuple[str, ...]) -> None:
    """Merge the LoRA adapter of RUN_OR_ADAPTER into its base and export one transformers checkpoint."""
    from cordlite.merge import merge as run

    try:
        result = run(source, out_dir, dtype=dtype, quantize=quantize, overwrite=overwrite, device=device, base=base,
                     allow_base_mismatch=allow_base_mismatch, check_items=check_items, check_manifest=check_manifest,
                     check_tokens=check_tokens, max_shard_size=max_shard_size, allow_check_failure=allow_check_failure,
                     eval_summary=eval_summary)
    except _deploy_errors() as e:
        _fail(str(e), 1)
    if result.check is not None:
        click.echo(f"merge check: {result.check.summary()}")
    if result.nf4_check is not None:
        click.echo(f"NF4 export: {result.nf4_check.summary()}")
    click.echo(f"done: {result.out}")


@main.command()
@click.option("--model", "model_path", required=True, help="Merged checkpoint directory, or a base model with --adapter.")
@click.option("--adapter", default=None, help="Run directory or adapter directory to apply on --model.")
@click.option("--audio", "audio_path", default=None, help="One spoken question (WAV, FLAC, OGG; any rate, any channels).")
@click.option("--question", default=None,
              help="Text after the audio in the user turn (default: the instruction recorded at training, if any).")
@click.option("--manifest", default=None, help="Batch mode: answer every row of this manifest JSONL.")
@click.option("--out", "out_path", default=None, help="Batch mode: JSONL of answers (resumes if it exists).")
@click.option("--overwrite", is_flag=True, help="Batch mode: start --out afresh instead of resuming.")
@click.option("--batch-size", default=1, show_default=True, help="Batch mode: questions per generate call.")
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float32", "float16"]), default="auto", show_default=True)
@click.option("--quantize", type=click.Choice(["none", "nf4"]), default="none", show_default=True,
              help="Load --model's language model in 4 bit.")
@click.option("--allow-base-mismatch", is_flag=True, help="Apply --adapter even if it records another base.")
def infer(model_path: str, adapter: str | None, audio_path: str | None, question: str | None, manifest: str | None,
          out_path: str | None, overwrite: bool, batch_size: int, max_new_tokens: int, device: str, dtype: str,
          quantize: str, allow_base_mismatch: bool) -> None:
    """Answer a spoken question (--audio) or every question of a manifest (--manifest --out)."""
    if (audio_path is None) == (manifest is None):
        _fail("pass exactly one of --audio FILE or --manifest FILE (with --out answers.jsonl)")
    if manifest is not None and out_path is None:
        _fail("--manifest needs --out answers.jsonl")
    if batch_size < 1 or max_new_tokens < 1:
        _fail("--batch-size and --max-new-tokens must be >= 1")
    from cordlite import infer as inf

    try:
        clip = inf.read_clip(audio_path) if audio_path is not None else None  # a bad file fails before the model loads
        if manifest is not None:
            from cordlite.data import read_manifest

            read_manifest(manifest)
        ans = inf.load_answerer(model_path, adapter, allow_base_mismatch=allow_base_mismatch, device=device,
                                dtype=dtype, quantize=quantize, max_new_tokens=max_new_tokens, question=question)
        if clip is not None:
            click.echo(inf.answer_file(ans, audio_path))
            return
        new, before = inf.answer_manifest(ans, manifest, out_path, batch_size=batch_size, overwrite=overwrite)
    except _deploy_errors() as e:
        _fail(str(e), 1)
    click.echo(f"done: {new} answered now, {before} before, in {out_path}")


def _eval_errors() -> tuple[type[BaseException], ...]:
    from cordlite.audio import AudioError
    from cordlite.data import ManifestError
    from cordlite.eval_io import EvalError
    from cordlite.judge import JudgeError
    from cordlite.models import ModelLoadError

    return (EvalError, ManifestError, AudioError, ModelLoadError, JudgeError)


_model_options = [
    click.option("--model", "model_path", default="", help="Base or merged Qwen2-Audio checkpoint (directory or hub "
                 "id); default: the base recorded with --adapter."),
    click.option("--adapter", default=None, type=click.Path(file_okay=False), help="LoRA adapter directory (RUN/adapter)."),
    click.option("--quantization", type=click.Choice(["none", "nf4", "int8"]), default="none", show_default=True,
                 help="Weights of the language model (nf4 = like a QLoRA training base)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--instruction", default="", help="Text after the question/audio in the user turn (as in training)."),
    click.option("--system-prompt", default=None, help="System message (default: the chat template's)."),
    click.option("--seed", default=0, show_default=True, help="Seed of every batch (resumable)."),
    click.option("--overwrite", is_flag=True, help="Start afresh in --out instead of continuing a run there."),
]


def _with_model_options(f):
    for opt in reversed(_model_options):
        f = opt(f)
    return f


@main.command("eval")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@_with_model_options
@click.option("--max-new-tokens", default=512, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy (default).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling when --temperature > 0.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--judge", "judge_mode", type=click.Choice(["rules", "llm", "rules_then_llm"]), default="rules",
              show_default=True, help="How answers are scored against the manifest's `answer`.")
@click.option("--judge-model", default="self", show_default=True,
              help="LLM judge: self (the base in text mode) or a chat model's path / hub id.")
@click.option("--judge-quantization", type=click.Choice(["none", "nf4", "int8"]), default="none", show_default=True)
@click.option("--subset-field", default="source", show_default=True, help="Manifest field that names an item's subset.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N items.")
@click.option("--baseline", default=None, type=click.Path(dir_okay=False),
              help="summary.json of the base model's eval: adds the gap reduction.")
def eval_cmd(manifest: str, out: str, model_path: str, adapter: str | None, quantization: str, device: str,
             instruction: str, system_prompt: str | None, seed: int, overwrite: bool, max_new_tokens: int,
             temperature: float, top_p: float, batch_size: int, judge_mode: str, judge_model: str,
             judge_quantization: str, subset_field: str, limit: int | None, baseline: str | None) -> None:
    """Answer every item of MANIFEST from audio and from text; write accuracies, gap and gap reduction."""
    from cordlite.evaluate import EvalSettings, run_eval

    s = EvalSettings(manifest=manifest, out=out, model=model_path, adapter=adapter, quantization=quantization,
                     device=device, instruction=instruction, system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size, judge=judge_mode,
                     judge_model=judge_model, judge_quantization=judge_quantization, subset_field=subset_field,
                     limit=limit, baseline=baseline, overwrite=overwrite)
    try:
        summary = run_eval(s)
    except _eval_errors() as e:
        _fail(str(e), 1)
    def num(x: float | None, unit: str = "") -> str:
        return "-" if x is None else f"{x:.2f}{unit}"  # None: no text view (audio-only items)

    line = f"text {num(summary['text_acc'], '%')}  audio {num(summary['audio_acc'], '%')}  gap {num(summary['gap'])}"
    b = summary.get("baseline")
    if b and b["gap_reduction"] is not None:
        line += f"  gap reduction {100 * b['gap_reduction']:.1f}% ({b['avg_gap_base']:.2f} -> {b['avg_gap_method']:.2f})"
    elif b:
        line += f"  gap reduction undefined (base average gap {b['avg_gap_base']:.2f} is not positive)"
    click.echo(f"{line}\nwritten: {out}/summary.json, summary.md, responses.jsonl, accuracy.png")


@main.command("judge-check")
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["rules", "llm", "rules_then_llm"]), default="llm", show_default=True)
@click.option("--model", "model_path", default="", help="Judge model: a chat LM, or a Qwen2-Audio base in text mode.")
@click.option("--quantization", type=click.Choice(["none", "nf4", "int8"]), default="none", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--max-new-tokens", default=16, show_default=True)
@click.option("--cache", default=None, help="Verdict cache JSONL (default: OUT/judge_cache.jsonl with --out).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Write judge_check.json/.md, verdicts.jsonl.")
def judge_check(pairs: str, mode: str, model_path: str, quantization: str, device: str, batch_size: int,
                max_new_tokens: int, cache: str | None, out: str | None) -> None:
    """Agreement of the judge with the labelled pairs in PAIRS (JSONL): accuracy and confusion counts."""
    from cordlite.judge_check import JudgeCheckSettings, run_judge_check

    if batch_size < 1 or max_new_tokens < 1:
        _fail("--batch-size and --max-new-tokens must be >= 1")
    s = JudgeCheckSettings(pairs=pairs, mode=mode, model=model_path, quantization=quantization, device=device,
                           batch_size=batch_size, max_new_tokens=max_new_tokens, cache=cache, out=out)
    try:
        r = run_judge_check(s)
    except _eval_errors() as e:
        _fail(str(e), 1)
    acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
    click.echo(f"{r['n']} pairs: accuracy {acc}  tp {r['tp']}  fp {r['fp']}  fn {r['fn']}  tn {r['tn']}  "
               f"unparseable {r['unparseable']}" + (f"\nwritten: {out}/judge_check.json, judge_check.md" if out else ""))


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@_with_model_options
@click.option("--limit", type=click.IntRange(min=1), default=32, show_default=True, help="Items to roll out.")
@click.option("--rollouts", default=1, show_default=True, help="Audio rollouts per item.")
@click.option("--temperature", default=1.0, show_default=True, help="Sampling temperature of the rollouts (CORD: 1.0).")
@click.option("--max-new-tokens", default=200, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--chunk-size", default=64, show_default=True, help="Positions per full-vocabulary log-softmax chunk.")
@click.option("--top", default=20, show_default=True, help="Rows of the top-divergence tables.")
@click.option("--strip", default=None, help="Item id drawn as the heat strip (default: the first item).")
def diagnose(manifest: str, out: str, model_path: str, adapter: str | None, quantization: str, device: str,
             instruction: str, system_prompt: str | None, seed: int, overwrite: bool, limit: int, rollouts: int,
             temperature: float, max_new_tokens: int, batch_size: int, chunk_size: int, top: int,
             strip: str | None) -> None:
    """Per-token reverse KL (audio view vs text view) along audio rollouts: where the gap lives."""
    from cordlite.diagnose import DiagnoseSettings, run_diagnose

    s = DiagnoseSettings(manifest=manifest, out=out, model=model_path, adapter=adapter, quantization=quantization,
                         device=device, instruction=instruction, system_prompt=system_prompt, limit=limit,
                         rollouts=rollouts, temperature=temperature, max_new_tokens=max_new_tokens,
                         batch_size=batch_size, seed=seed, chunk_size=chunk_size, top=top, strip=strip,
                         overwrite=overwrite)
    try:
        r = run_diagnose(s)
    except _eval_errors() as e:
        _fail(str(e), 1)
    corr = r["pearson_relative_position"]
    click.echo(f"{r['n_tokens']} tokens in {r['n_rollouts']} rollouts: mean D_t {r['mean']:.4f}, p80 {r['p80']:.4f}, "
               f"corr(position) {'-' if corr is None else f'{corr:.3f}'}\nwritten: {out}/diagnose.json, diagnose.md, "
               "kl_histogram.png, heat_strip.png, rollouts.jsonl")


# `cordlite data tts|check|speak`: data_tools.cli imports only click at module level.
from data_tools.cli import data as data_group  # noqa: E402

main.add_command(data_group)

# `cordlite testbed build|eval`: cordlite.testbed.cli imports only click at module level.
from cordlite.testbed.cli import testbed as testbed_group  # noqa: E402

main.add_command(testbed_group)


if __name__ == "__main__":
    main()
