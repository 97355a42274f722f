"""cordlite: CORD (weighted on-policy cross-modal distillation) for audio language models on one GPU.

The package by job, bottom layer first (tests/test_layers.py keeps it so):

    shared ground   config (the recipe's fields), recipe (read and check), schema, data, prompts,
                    audio, files, lock (one writer per folder), tracking (TensorBoard, W&B, MLflow,
                    trackio), cli_common: the modules at this level
    models/         load the base, quantise, LoRA, adapters_off, sampling, tiny checkpoints
    judge/          rule verifiers, benchmark conventions, the LLM judge, rewards, judge-check
    objective/      the CORD maths (pure weights, advantages, losses), log-probs, one step
    train/ eval/ deploy/    the loop; measuring the gap; merge and infer
    testbed/        the laptop testbed
    cli.py          the `cordlite` command

May import: the shared-ground modules here import only each other and third-party packages.
Must not be imported by: nothing; every package may use the shared ground. A module added at this
level must be shared ground, or it belongs in a package.
"""
