"""`cordlite data ...`: make spoken QA sets from text data and check them. Parses, then calls one function.

    cordlite data tts --input data/gsm8k.jsonl --out data/gsm8k_spoken --workers 2
    cordlite data tts job.yaml --set tts.speed=[0.8,1.2] --limit 100
    cordlite data check data/gsm8k_spoken/manifest.jsonl
    cordlite data speak 'Solve $x^2 - 5x + 6 = 0$.'
    cordlite data preset gsm8k --out data/gsm8k          # the CORD paper's sets (data_tools.presets)
    cordlite data combine --out data/eval/manifest.jsonl data/mmsu/manifest.jsonl data/gsm8k/manifest.jsonl

Also runs without the trainer: ``python -m data_tools.cli tts ...``. Only click is imported
here; everything else is imported inside the commands so `cordlite --help` stays instant.
"""

from __future__ import annotations

import sys

import click

from cordlite.cli_common import fail, key_value_pairs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    """Make spoken question sets from text QA data (TTS) and validate manifests."""


@data.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", help="Input .jsonl/.csv/.tsv/.parquet file or save_to_disk folder.")
@click.option("-o", "--out", help="Output folder (manifest.jsonl, audio/, rejects.jsonl, summary).")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv", "tsv", "parquet", "disk"]))
@click.option("--split", help="Split of a saved DatasetDict.")
@click.option("--name", help="Source label for the manifest and generated ids (default: input file stem).")
@click.option("--question-field", help="Field holding the question [question].")
@click.option("--answer-field", help="Field holding the answer [answer].")
@click.option("--choices-field", multiple=True, help="A list field of options, or repeat once per option column.")
@click.option("--id-field", help="Field holding a unique id [id]; missing ids become <name>-<line>.")
@click.option("--backend", type=click.Choice(["espeak", "flite", "kokoro", "transformers"]), help="TTS engine [espeak].")
@click.option("--model", help="Local model folder (kokoro, transformers).")
@click.option("--voice", "voices", multiple=True,
              help="Voice to draw from (repeatable); default: the engine's English set.")
@click.option("--workers", type=int,
              help="Synthesis threads [auto: per CPU core, 1 for the espeak library, 2 for its program].")
@click.option("--limit", type=int, help="Only the first N records.")
@click.option("--seed", type=int, help="Seed of the per-row voice draw [0].")
@click.option("--max-seconds", type=float, help="Reject clips longer than this [30].")
@click.option("--verbalize/--no-verbalize", default=None, help="Rewrite numbers, maths and symbols into words [on].")
@click.option("--retry-rejects", is_flag=True, default=None, help="Try rows rejected by an earlier run again.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", callback=key_value_pairs,
              help="Override any job field, e.g. --set tts.speed=[0.8,1.2] (repeatable).")
def tts(config, input_path, out, fmt, split, name, question_field, answer_field, choices_field, id_field,
        backend, model, voices, workers, limit, seed, max_seconds, verbalize, retry_rejects, no_progress,
        overrides) -> None:
    """Voice the questions of a text QA file into OUT with a local TTS (resumable: rerun to continue).

    CONFIG is an optional YAML job file (sections source, text, tts, audio, output); flags and
    --set override it.
    """
    from cordlite.schema import ConfigError
    from data_tools.job.outdir import JobError
    from data_tools.job.build import build
    from data_tools.job.config import load_job
    from data_tools.sources import SourceError
    from data_tools.tts.base import BackendError

    flags = {
        "source.path": input_path, "output.dir": out, "source.format": fmt, "source.split": split,
        "source.name": name, "source.fields.question": question_field, "source.fields.answer": answer_field,
        "source.fields.choices": list(choices_field) or None, "source.fields.id": id_field,
        "tts.backend": backend, "tts.model": model, "tts.voices": list(voices) or None,
        "workers": workers, "source.limit": limit, "seed": seed, "audio.max_seconds": max_seconds,
        "text.verbalize": verbalize, "retry_rejects": retry_rejects,
    }
    try:
        cfg = load_job(config, flags, overrides)
        result = build(cfg, progress=not no_progress, log=lambda m: click.echo(m, err=True))
    except (ConfigError, SourceError, BackendError, JobError) as e:
        fail(str(e))
    except OSError as e:  # the output folder, not a row: full disk, permissions
        fail(f"{e}; free some space or pick another --out, then rerun the same command to resume", 1)
    s = result.summary
    click.echo(f"{result.manifest}: {result.rows} rows ({result.new_rows} new, {result.skipped} already done), "
               f"{result.rejected} rejected, {s.get('audio_hours', 0):.3f} h of audio in {result.seconds:.1f} s")
    if result.rejected:
        click.echo(f"rejects with line numbers and reasons: {result.out_dir / 'rejects.jsonl'}")
    if result.interrupted:
        click.echo("interrupted: rerun the same command to continue where it stopped", err=True)
        sys.exit(130)


@data.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--report", type=click.Path(dir_okay=False),
              help="Where to write the JSON report [MANIFEST dir/check.json].")
@click.option("--max-seconds", default=30.0, show_default=True, help="Longest clip allowed.")
@click.option("--min-seconds", default=0.3, show_default=True, help="Shortest clip allowed.")
@click.option("--silence-dbfs", default=-50.0, show_default=True, help="Clips quieter than this (RMS) are silent.")
@click.option("--workers", default=0, help="Threads reading audio [one per CPU core].")
@click.option("--show", default=20, show_default=True, help="How many problems to print.")
def check(manifest, report, max_seconds, min_seconds, silence_dbfs, workers, show) -> None:
    """Validate MANIFEST: files, 16 kHz mono, silence, duration limits, duplicate ids. Exit 1 on problems."""
    import json
    from pathlib import Path

    from cordlite.files import write_text_atomic
    from data_tools.check import CheckLimits, check_manifest

    limits = CheckLimits(max_seconds=max_seconds, min_seconds=min_seconds, silence_dbfs=silence_dbfs)
    result = check_manifest(manifest, limits, workers)
    report_path = Path(report) if report else Path(manifest).parent / "check.json"
    written = report_path.parent.is_dir()  # a missing manifest's folder gets no report
    if written:
        write_text_atomic(report_path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    d = result["duration_seconds"]
    hours = f", {d['total_hours']:.3f} h, {d['min']}-{d['max']} s" if d.get("count") else ""
    status = "ok" if result["ok"] else f"{len(result['problems'])} problem(s) {result['counts']}"
    where = f"report: {report_path}" if written else f"no report written ({report_path.parent} does not exist)"
    click.echo(f"{manifest}: {result['rows']} rows{hours}; {status}; {len(result['warnings'])} warning(s); {where}")
    for p in result["problems"][:show]:
        click.echo(f"  line {p['line']} id={p['id']}: {p['kind']}: {p['detail']}")
    if len(result["problems"]) > show:
        click.echo(f"  ... and {len(result['problems']) - show} more in the report")
    if not result["ok"]:
        sys.exit(1)


@data.command()
@click.argument("text", nargs=-1, required=True)
def speak(text: tuple[str, ...]) -> None:
    """Print what the TTS would read for TEXT (numbers, maths and symbols in words)."""
    from data_tools.text.speakable import speakable

    click.echo(speakable(" ".join(text)))


PRESET_NAMES = ["numina", "mmsu", "openbookqa", "obqa", "gsm8k", "mmau"]  # data_tools.presets.catalog.PRESETS + aliases


@data.command()
@click.argument("name", type=click.Choice(PRESET_NAMES, case_sensitive=False))
@click.option("-o", "--out", required=True, help="Output folder (manifest.jsonl, audio/, preset.json, ...).")
@click.option("--source", help="A local copy (file, folder of files, save_to_disk folder) or another hub id "
                               "[default: the preset's hub id].")
@click.option("--n", "n", type=int, help="Rows to make: a seeded selection [numina: 80000; benchmarks: all].")
@click.option("--seed", default=0, show_default=True, help="Seed of the selection and of the voices.")
@click.option("--split", "splits", multiple=True, help="Only these splits (repeatable) [the preset's].")
@click.option("--backend", type=click.Choice(["auto", "espeak", "kokoro", "transformers"]), default="auto",
              show_default=True, help="TTS of the voiced presets (numina, gsm8k): auto = Kokoro when available.")
@click.option("--tts-model", default="", help="Kokoro / VITS weights folder [auto: models/kokoro-82m if present].")
@click.option("--workers", default=0, help="Synthesis threads [auto].")
@click.option("--max-seconds", default=30.0, show_default=True,
              help="Longest clip: voiced rows above it are rejected, imported clips are cut to it.")
@click.option("--audio-format", type=click.Choice(["wav", "flac"]), default="wav", show_default=True,
              help="16 kHz mono 16-bit clips as WAV or FLAC (about half the size).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def preset(name, out, source, n, seed, splits, backend, tts_model, workers, max_seconds, audio_format,
           no_progress) -> None:
    """Make the CORD paper's training set (numina) or one of its benchmarks as a cordlite manifest.

    \b
    numina      NuminaMath-CoT problems (AI-MO/NuminaMath-CoT), filtered to what speaks well, voiced
    mmsu        VoiceBench MMSU (hlt-lab/voicebench, mmsu), the benchmark's own audio
    openbookqa  VoiceBench OpenBookQA (hlt-lab/voicebench, openbookqa), its own audio
    gsm8k       GSM8K test (openai/gsm8k, main), voiced; answer = the number after ####
    mmau        MMAU test-mini (lmms-lab/mmau), audio clips with written questions: audio-only
    Rerun the same command to resume.
    """
    from cordlite.schema import ConfigError
    from data_tools.job.outdir import JobError
    from data_tools.presets.splits import PresetError
    from data_tools.presets.catalog import PresetSettings
    from data_tools.presets.run import run_preset
    from data_tools.tts.base import BackendError

    s = PresetSettings(preset=name, out=out, source=source, n=n, seed=seed, splits=tuple(splits),
                       max_seconds=max_seconds, audio_format=audio_format, backend=backend, tts_model=tts_model,
                       workers=workers,
                       progress=not no_progress)
    try:
        r = run_preset(s, log=lambda m: click.echo(m, err=True))
    except (PresetError, ConfigError, BackendError, JobError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e}; free some space or pick another --out, then rerun the same command to resume", 1)
    if r["status"] == "interrupted":
        click.echo("interrupted: rerun the same command to continue where it stopped", err=True)
        sys.exit(130)
    c = r["check"]
    status = "ok" if c["ok"] else f"found problems {c['problems']}"
    click.echo(f"{out}/manifest.jsonl: {r['rows']} rows of {r['preset']} ({r['dataset']}), {r['rejected']} rejected; "
               f"check {status}; licence: {r['licence']}; details in {out}/preset.json")
    if not c["ok"]:
        sys.exit(1)


@data.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="The combined manifest.jsonl.")
def combine(manifests, out) -> None:
    """Join MANIFESTS into one (audio paths rewritten, ids unique): one eval run over all benchmarks."""
    from data_tools.presets.splits import PresetError
    from data_tools.presets.run import combine_manifests

    try:
        n = combine_manifests(out, list(manifests))
    except PresetError as e:
        fail(str(e))
    click.echo(f"{out}: {n} rows from {len(manifests)} manifest(s)")


if __name__ == "__main__":
    data()
