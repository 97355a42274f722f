"""Presets: the CORD paper's training set and benchmarks, one command each (`cordlite data preset`).

    splits    open a preset's source: a hub dataset or a local copy, split by split (PresetError)
    catalog   the presets themselves, and the seeded selection of rows
    folder    a preset's output folder: claimed with its settings, JSON written atomically
    clips     benchmarks that ship their own audio: import and check the clips
    voiced    presets voiced with TTS (numina, gsm8k) through the TTS job
    run       run a preset end to end and check its manifest; combine manifests

May import: data_tools/job/, tts/, text/, check.py, sources.py and cordlite's shared ground.
Must not be imported by: any other part of data_tools but cli.py.
"""
