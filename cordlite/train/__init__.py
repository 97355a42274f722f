"""Training: the loop that runs CORD steps, its checkpoints, and data-parallel launch.

    trainer         `cordlite train`: setup (model, data, optimizer), logging, checkpoints, resume, SIGTERM
    optimizer_step  one optimizer step (run_step): prefetch, rollouts, per micro-batch teacher + loss +
                    backward, gradient sum, clip, step; its metrics row (the step benchmark runs it too)
    meter           the step's peak memory and model FLOPs (the stated formula), MFU
    checkpoint      save and load resumable checkpoints (adapter, optimizer, scheduler, scaler, RNG state)
    distributed     data-parallel through accelerate: launch, all-reduce of gradients and stats

May import: objective/, judge/, models/, data_tools/ and the shared ground.
Must not be imported by: anything below it; eval/ and deploy/ are its peers and do not import it
either (only testbed/, cli.py and benchmarks/ do).
"""
