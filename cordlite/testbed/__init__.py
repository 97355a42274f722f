"""The laptop testbed: a miniature Qwen2-Audio, trained here, with a real audio-text gap.

    cordlite testbed build cache/testbed        # data, text model, audio alignment, base eval
    cordlite train recipes/testbed_cord.yaml    # CORD on it
    cordlite testbed eval cache/testbed --adapter runs/testbed_cord/adapter

See docs/testbed.md for the design and the measured figures. hearing.py is the hearing probe
(how many of a question's numbers a transcript holds).

May import: train/, objective/, models/, data_tools/ and the shared ground.
Must not be imported by: any other package of cordlite (only cli.py and benchmarks/).
"""
