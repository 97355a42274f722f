"""`cordlite merge` and `cordlite infer`: export a trained adapter, and answer spoken questions.

    cordlite merge runs/qwen2audio_cord --out models/qwen2audio-cord
    cordlite infer --model models/qwen2audio-cord --audio question.flac

Each parses its options and calls one function; only click is imported at module level.
"""

from __future__ import annotations

import click

from cordlite.cli_common import fail


def _deploy_errors() -> tuple[type[BaseException], ...]:
    from cordlite.audio import AudioError
    from cordlite.data import ManifestError
    from cordlite.deploy.merge import MergeError
    from cordlite.models.adapter import AdapterBaseMismatch, AdapterError
    from cordlite.models.runtime import ModelLoadError

    return (MergeError, AdapterBaseMismatch, AdapterError, ModelLoadError, AudioError, ManifestError, FileNotFoundError)


@click.command()
@click.argument("source", metavar="RUN_OR_ADAPTER")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Directory to export to.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float32"]), default="bfloat16", show_default=True,
              help="Precision the base is reloaded, merged and saved in (never 4-bit).")
@click.option("--quantize", type=click.Choice(["none", "nf4"]), default="none", show_default=True,
              help="nf4: save the merged model re-quantised to 4 bit (bitsandbytes) for small-memory serving.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out directory.")
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
    from cordlite.deploy.merge import merge as run

    try:
        result = run(source, out_dir, dtype=dtype, quantize=quantize, overwrite=overwrite, device=device, base=base,
                     allow_base_mismatch=allow_base_mismatch, check_items=check_items, check_manifest=check_manifest,
                     check_tokens=check_tokens, max_shard_size=max_shard_size, allow_check_failure=allow_check_failure,
                     eval_summary=eval_summary)
    except _deploy_errors() as e:
        fail(str(e), 1)
    if result.check is not None:
        click.echo(f"merge check: {result.check.summary()}")
    if result.nf4_check is not None:
        click.echo(f"NF4 export: {result.nf4_check.summary()}")
    click.echo(f"done: {result.out}")


@click.command()
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
        fail("pass exactly one of --audio FILE or --manifest FILE (with --out answers.jsonl)")
    if manifest is not None and out_path is None:
        fail("--manifest needs --out answers.jsonl")
    if batch_size < 1 or max_new_tokens < 1:
        fail("--batch-size and --max-new-tokens must be >= 1")
    from contextlib import nullcontext

    from cordlite.deploy import infer as inf
    from cordlite.lock import writer_lock

    # --out is this command's for its whole life, from before the model loads
    lock = writer_lock(out_path, "cordlite infer", fix="pass another --out") if out_path else nullcontext()
    try:
        with lock:
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
        fail(str(e), 1)
    click.echo(f"done: {new} answered now, {before} before, in {out_path}")
