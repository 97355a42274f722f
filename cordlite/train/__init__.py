"""Training: the loop that runs CORD steps, its checkpoints, and data-parallel launch.

    trainer      `cordlite train`: optimizer, accumulation, logging, checkpoints, resume, SIGTERM
    checkpoint   save and load resumable checkpoints (adapter, optimizer, scheduler, RNG state)
    distributed  data-parallel through accelerate: launch, all-reduce of gradients and stats

May import: objective/, judge/, models/, data_tools/ and the shared ground.
Must not be imported by: anything below it; eval/ and deploy/ are its peers and do not import it
either (only testbed/, cli.py and benchmarks/ do).
"""
