"""Offline tools that build cordlite's training and evaluation data (speech synthesis, spoken sets).

Usable without the trainer. Inside, bottom first:

    text/        speakable text: numbers, LaTeX and symbols as words; what speaks well
    sources.py   text QA files in (JSONL, CSV, Parquet, save_to_disk) -> rows
    tts/         the TTS engines behind one interface (espeak-ng, Kokoro, VITS)
    job/         the resumable TTS job: its config, output folder, build and summary
    tiny_spoken  the small spoken question set of the tiny smoke run
    check.py     `cordlite data check`: a manifest's files, rate, silence, lengths, ids
    presets/     the CORD paper's training set and benchmarks, one command each
    cli.py       `cordlite data ...`

May import: cordlite's shared ground only (cordlite.audio, files, schema, recipe, data).
Must not be imported by: cordlite's models/, judge/ or objective/; train/, testbed/ and the cli
may use it.
"""
