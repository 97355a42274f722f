"""The resumable TTS job: a text QA file in, a spoken manifest out.

    config    the job file: typed fields, checks, overrides, fingerprint (JobConfig)
    outdir    the output folder: manifest and rejects logs, resume state, the job record
    build     plan the rows, voice them in parallel, write atomically, stop cleanly on a signal
    report    summary.json, summary.md and durations.png (given the run's facts; never imports build)

May import: data_tools/tts/, data_tools/text/, data_tools/sources.py and cordlite's shared ground.
Must not be imported by: data_tools/tts/, data_tools/text/ or sources.py.
"""
